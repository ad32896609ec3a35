"""PostgresStore beyond the contract: its schema, its errors, undecodable payloads, expiry, and
the transactional enqueue (the outbox pattern) on asyncio and trio."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest
from postgres_support import CallersConnection, terminate_backends
from psycopg import sql

from anysched import DuplicateJobError, Job, JobStatus, TransientStoreError
from anysched.stores.postgres import SCHEMA_VERSION, PostgresStore, PostgresStoreError
from anysched.testing import Payload

pytestmark = pytest.mark.anyio

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
VT = timedelta(seconds=30)


def _execute(url: str, query: sql.Composed, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def _table(schema: str, name: str = "jobs") -> sql.Identifier:
    return sql.Identifier(schema, name)


async def test_the_schema_is_created_once_and_versioned(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, Payload, schema=schema) as store:
        await store.add_job(Job.create(Payload(1), id="a"))
    async with PostgresStore(postgres_url, Payload, schema=schema) as again:  # finds its tables, keeps the job
        assert (await again.get_job("a")).payload == Payload(1)
    query = sql.SQL("SELECT value FROM {} WHERE key = 'schema_version'").format(_table(schema, "jobs_meta"))
    assert await anyio.to_thread.run_sync(_execute, postgres_url, query) == [(SCHEMA_VERSION,)]


async def test_a_newer_schema_is_refused_at_open(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, Payload, schema=schema):
        pass
    query = sql.SQL("UPDATE {} SET value = %s").format(_table(schema, "jobs_meta"))
    await anyio.to_thread.run_sync(_execute, postgres_url, query, (SCHEMA_VERSION + 1,))
    store = PostgresStore(postgres_url, Payload, schema=schema)
    with pytest.raises(PostgresStoreError, match="from a newer anysched"):
        await store.open()
    await store.aclose()


async def test_a_table_anysched_did_not_create_is_refused(postgres_url: str, schema: str) -> None:
    create = sql.SQL("CREATE SCHEMA {s}; CREATE TABLE {t} (x int)").format(
        s=sql.Identifier(schema), t=_table(schema, "mine")
    )
    await anyio.to_thread.run_sync(_execute, postgres_url, create)
    store = PostgresStore(postgres_url, Payload, schema=schema, table="mine")
    with pytest.raises(PostgresStoreError, match="anysched did not create it"):
        await store.open()
    await store.aclose()


async def test_two_tables_in_one_schema_are_separate(postgres_url: str, schema: str) -> None:
    async with (
        PostgresStore(postgres_url, Payload, schema=schema, table="one") as one,
        PostgresStore(postgres_url, Payload, schema=schema, table="two") as two,
    ):
        await one.add_job(Job.create(Payload(1), id="x"))
        assert await two.count() == 0
        assert one.channel != two.channel


def test_names_and_options_are_checked() -> None:
    with pytest.raises(ValueError, match="schema"):
        PostgresStore("postgresql://", Payload, schema="bad; DROP TABLE x")
    with pytest.raises(ValueError, match="table"):
        PostgresStore("postgresql://", Payload, table="1jobs")
    with pytest.raises(TypeError, match="table"):
        PostgresStore("postgresql://", Payload, table=3)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="max_connections"):
        PostgresStore("postgresql://", Payload, max_connections=0)
    with pytest.raises(ValueError, match="completed_ttl"):
        PostgresStore("postgresql://", Payload, completed_ttl=-1)
    with pytest.raises(TypeError, match="conninfo"):
        PostgresStore(42, Payload)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def test_a_missing_database_is_a_clear_permanent_error(postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/anysched_no_such_database"
    store = PostgresStore(url, Payload)
    with pytest.raises(PostgresStoreError, match="does not exist") as caught:
        await store.open()
    assert not isinstance(caught.value, TransientStoreError)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__  # the driver's text (hosts, users) is not chained
    await store.aclose()


async def test_no_server_is_transient(postgres_url: str) -> None:
    store = PostgresStore("postgresql://127.0.0.1:1/test?connect_timeout=2", Payload)
    with pytest.raises(TransientStoreError):
        await store.open()
    await store.aclose()


async def test_an_undecodable_payload_is_marked_failed_not_returned(
    store: PostgresStore[Payload], postgres_url: str
) -> None:
    await store.add_job(Job.create(Payload(1), id="good", process_after=NOW))
    await store.add_job(Job.create(Payload(2), id="bad", process_after=NOW))
    query = sql.SQL("UPDATE {} SET payload = '{{\"n\": \"not a number\"}}' WHERE id = 'bad'").format(
        sql.Identifier(store._sql.schema, "jobs")  # pyright: ignore[reportPrivateUsage]
    )
    await anyio.to_thread.run_sync(_execute, postgres_url, query)
    claimed = await store.fetch_pending_jobs(NOW, 10, VT)
    assert [job.id for job in claimed] == ["good"]
    assert await store.count(JobStatus.FAILED) == 1
    rows = await anyio.to_thread.run_sync(
        _execute,
        postgres_url,
        sql.SQL("SELECT last_error FROM {} WHERE id = 'bad'").format(_table(store._sql.schema)),  # pyright: ignore[reportPrivateUsage]
    )
    assert "not a number" not in rows[0][0]
    assert rows[0][0].startswith("UndecodableDocumentError")


async def test_completed_jobs_past_their_ttl_are_deleted_after_a_claim(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, Payload, schema=schema, completed_ttl=60) as store:
        for n in range(3):
            await store.add_job(Job.create(Payload(n), id=f"j{n}", process_after=NOW))
        for job in await store.fetch_pending_jobs(NOW, 2, VT):
            done = replace(job, status=JobStatus.COMPLETED, processed_at=NOW, visible_after=None)
            await store.update_job(done)
        await store.fetch_pending_jobs(NOW + timedelta(seconds=61), 0 + 1, VT)
        assert await store.count(JobStatus.COMPLETED) == 0
        assert await store.count() == 1


async def test_a_payload_the_server_refuses_is_a_payload_error(store: PostgresStore[Payload]) -> None:
    from anysched import PayloadError

    with pytest.raises(PayloadError) as caught:
        await store.add_job(Job.create(Payload(1, note="nul \x00 byte")))
    assert "nul" not in str(caught.value)
    assert await store.count() == 0


async def test_connections_killed_by_the_server_are_transient_and_replaced(postgres_url: str, schema: str) -> None:
    name = f"anysched_kill_{schema[-12:]}"
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={name}"
    async with PostgresStore(url, Payload, schema=schema) as store:
        await store.add_job(Job.create(Payload(1), id="a"))
        assert await anyio.to_thread.run_sync(terminate_backends, postgres_url, name) >= 1
        errors: list[Exception] = []
        with anyio.fail_after(30):
            while True:
                try:
                    count = await store.count()
                    break
                except TransientStoreError as error:
                    errors.append(error)
                    await anyio.sleep(0.05)
        assert count == 1
        assert len(errors) <= 2


async def test_an_async_pool_on_trio_is_refused(anyio_backend: str, postgres_url: str, schema: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    if anyio_backend != "trio":
        pytest.skip("the mismatch exists on trio only")
    pool = AsyncConnectionPool(postgres_url, open=False)
    store = PostgresStore(pool, Payload, schema=schema)
    with pytest.raises(RuntimeError, match="runs only on asyncio"):
        await store.open()


async def test_a_sync_pool_of_the_users_works_and_stays_open(postgres_url: str, schema: str) -> None:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(postgres_url, kwargs={"autocommit": True}, open=False)
    await anyio.to_thread.run_sync(pool.open)
    try:
        async with PostgresStore(pool, Payload, schema=schema) as store:
            await store.add_job(Job.create(Payload(1), id="a", process_after=NOW))
            assert [job.id for job in await store.fetch_pending_jobs(NOW, 5, VT)] == ["a"]
        assert not pool.closed
    finally:
        await anyio.to_thread.run_sync(pool.close)


# -- the outbox pattern: a job exists if and only if the caller's transaction commits --------------


async def _enqueue_in_transaction(
    anyio_backend: str, url: str, store: PostgresStore[Payload], job: Job[Payload], *, commit: bool
) -> None:
    """Write a business row and add ``job`` in one transaction of the caller's, then commit or roll back."""
    business = sql.SQL("INSERT INTO {} (note) VALUES ('order 1')").format(_table(store._sql.schema, "orders"))  # pyright: ignore[reportPrivateUsage]
    async with CallersConnection(url, anyio_backend) as caller:
        await caller.execute(business)
        assert caller.connection is not None
        await store.add_job(job, connection=caller.connection)
        await (caller.commit() if commit else caller.rollback())


@pytest.mark.parametrize("commit", [True, False])
async def test_a_job_added_in_the_callers_transaction_exists_iff_it_commits(
    anyio_backend: str, store: PostgresStore[Payload], postgres_url: str, commit: bool
) -> None:
    orders = sql.SQL("CREATE TABLE {} (note text)").format(_table(store._sql.schema, "orders"))  # pyright: ignore[reportPrivateUsage]
    await anyio.to_thread.run_sync(_execute, postgres_url, orders)
    await _enqueue_in_transaction(anyio_backend, postgres_url, store, Job.create(Payload(7), id="mail"), commit=commit)
    count = sql.SQL("SELECT count(*) FROM {}").format(_table(store._sql.schema, "orders"))  # pyright: ignore[reportPrivateUsage]
    assert await anyio.to_thread.run_sync(_execute, postgres_url, count) == [(1 if commit else 0,)]
    assert await store.count() == (1 if commit else 0)


async def test_a_duplicate_in_the_callers_transaction_leaves_it_usable(
    anyio_backend: str, store: PostgresStore[Payload], postgres_url: str
) -> None:
    await store.add_job(Job.create(Payload(1), id="dup"))
    async with CallersConnection(postgres_url, anyio_backend) as caller:
        assert caller.connection is not None
        await caller.execute("SELECT 1")  # the caller's transaction is open
        with pytest.raises(DuplicateJobError):
            await store.add_job(Job.create(Payload(2), id="dup"), connection=caller.connection)
        await store.add_job(Job.create(Payload(3), id="fresh"), connection=caller.connection)
        await caller.commit()
    assert (await store.get_job("dup")).payload == Payload(1)
    assert (await store.get_job("fresh")).payload == Payload(3)


async def test_a_store_logs_nothing_above_info_in_a_quiet_run(
    store: PostgresStore[Payload], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await store.add_job(Job.create(Payload(1), process_after=NOW))
    await store.fetch_pending_jobs(NOW, 1, VT)
    assert [r for r in caplog.records if r.levelno > logging.INFO] == []


@pytest.mark.parametrize("commit", [True, False])
async def test_jobs_added_first_in_a_callers_transaction_follow_it(
    anyio_backend: str, store: PostgresStore[Payload], postgres_url: str, commit: bool
) -> None:
    """On a connection that is not autocommit and has no transaction yet, the insert begins the caller's."""
    async with CallersConnection(postgres_url, anyio_backend) as caller:
        assert caller.connection is not None
        jobs = [Job.create(Payload(n), id=f"j{n}") for n in range(3)]
        await store.add_jobs(jobs, connection=caller.connection)
        assert await store.count() == 0  # not visible outside the caller's transaction yet
        await (caller.commit() if commit else caller.rollback())
    assert await store.count() == (3 if commit else 0)
