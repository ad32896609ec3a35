"""The adversarial review of the cross-process wake-ups: listeners whose connection the server
kills, against the real PostgreSQL server (see ``tests/postgres/postgres_support``)."""

from __future__ import annotations

import anyio
import anyio.to_thread
import psycopg
import pytest

from anysched import TransientStoreError
from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload

pytestmark = pytest.mark.anyio


def _kill_listener(url: str, channel: str) -> int:
    """Terminate the backend listening on ``channel`` only (other helpers share the server)."""
    query = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = %s AND pid <> pg_backend_pid()"
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(query, (f'LISTEN "{channel}"',)).fetchone()
    return 0 if row is None else int(row[0])


async def test_a_listener_whose_connection_the_server_kills_fails_promptly(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, Payload, schema=schema) as store:
        with anyio.fail_after(10), pytest.raises(TransientStoreError):  # noqa: PT012
            async with store.wake_ups(lambda: None):
                # Entered once LISTEN ran: its backend shows it as its last query.
                assert await anyio.to_thread.run_sync(_kill_listener, postgres_url, store.channel) == 1
                await anyio.sleep_forever()  # the block must end: the listener raises out of it


async def test_the_listening_thread_takes_no_token_the_stores_calls_need(postgres_url: str, schema: str) -> None:
    # An application that caps anyio's worker threads (here to one) must still get its store calls
    # through while a listener waits for notifications in a thread on trio.
    limiter = anyio.to_thread.current_default_thread_limiter()
    saved = limiter.total_tokens
    async with PostgresStore(postgres_url, Payload, schema=schema) as store:
        limiter.total_tokens = 1
        try:
            async with store.wake_ups(lambda: None):
                with anyio.fail_after(10):
                    await anyio.wait_all_tasks_blocked()  # the listener waits in its thread now
                    assert await store.count() == 0
        finally:
            limiter.total_tokens = saved
