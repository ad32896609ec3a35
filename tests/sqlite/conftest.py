"""Fixtures the SQLite tests share: each test on asyncio and trio (no mock clock: SQLite works in
threads, in real time), a database file of its own, a store on it and a plain connection beside it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from anysched.stores.sqlite import SQLiteStore
from anysched.testing import Payload


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteStore[Payload]]:
    async with SQLiteStore(db, Payload) as store:
        yield store


@pytest.fixture
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A second, plain connection to the same file, for looking under the hood."""
    connection = sqlite3.connect(db, isolation_level=None)
    yield connection
    connection.close()
