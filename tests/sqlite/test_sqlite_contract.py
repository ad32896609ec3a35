"""SQLiteStore passes the store contract, with and without ``UPDATE … RETURNING``."""

# White-box tests: they read the store's private state and use anysched.testing's private helpers.
# pyright: reportPrivateUsage=false

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from anysched.stores.sqlite import SQLiteStore
from anysched.testing import Payload, StoreContract


class TestSQLiteStoreContract(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteStore[Payload]]:
        async with SQLiteStore(tmp_path / "jobs.db", Payload) as store:
            yield store

    @pytest.fixture
    async def other_store(self, tmp_path: Path) -> AsyncIterator[SQLiteStore[Payload]]:
        async with SQLiteStore(tmp_path / "jobs.db", Payload) as store:
            yield store


class TestSQLiteStoreContractWithoutReturning(StoreContract):
    """The claim SQLite < 3.35 gets: select, then update, in one write transaction."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteStore[Payload]]:
        async with SQLiteStore(tmp_path / "jobs.db", Payload) as store:
            store._use_returning = False
            yield store


class TestInMemorySQLiteStoreContract(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[SQLiteStore[Payload]]:
        async with SQLiteStore(":memory:", Payload) as store:
            yield store
