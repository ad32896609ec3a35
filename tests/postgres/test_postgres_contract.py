"""The store contract suite against PostgresStore on asyncio (async pool) and trio (sync pool in threads)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload, StoreContract


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def store(self, postgres_url: str, schema: str) -> AsyncIterator[PostgresStore[Payload]]:
        async with PostgresStore(postgres_url, Payload, schema=schema) as store:
            yield store


class TestPostgresStoreWithoutWakeUps(StoreContract):
    @pytest.fixture
    async def store(self, postgres_url: str, schema: str) -> AsyncIterator[PostgresStore[Payload]]:
        async with PostgresStore(postgres_url, Payload, schema=schema, wake_ups=False) as store:
            yield store
