"""Fixtures for the PostgresStore tests: a real server (see ``postgres_support``), a fresh schema
per test (dropped after), each test on asyncio and trio without a mock clock (real I/O)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="the PostgreSQL tests need anysched[postgres]: pip install anysched[postgres]")

from postgres_support import HOW_TO_RUN, Server, drop_schema, find_server, new_schema_name

from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = find_server(tmp_path_factory.mktemp("postgres"))
    if server is None:
        if os.environ.get("CI"):
            pytest.fail(HOW_TO_RUN, pytrace=False)
        pytest.skip(HOW_TO_RUN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: Server) -> str:
    return postgres_server.url


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = new_schema_name()
    yield name
    drop_schema(postgres_url, name)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(postgres_url: str, schema: str) -> AsyncIterator[PostgresStore[Payload]]:
    async with PostgresStore(postgres_url, Payload, schema=schema) as opened:
        yield opened


def pytest_report_header(config: pytest.Config, start_path: Path) -> str:
    return "postgres: ANYSCHED_POSTGRES_URL, else 127.0.0.1:5432/test, else a throwaway cluster"
