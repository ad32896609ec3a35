"""The adversarial review of PostgresStore: a server that stops answering, rows written by hand,
session settings of the user's, against the real server (see ``tests/postgres/postgres_support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.abc
import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

from anysched import Job, JobStatus
from anysched.stores.postgres import PostgresStore, PostgresStoreError
from anysched.testing import Payload

pytestmark = pytest.mark.anyio


class FreezingProxy:
    """A TCP proxy in front of the server that can stop answering: once ``frozen``, it accepts new
    connections and reads nothing from them, as a server that hangs would (or a network that drops).
    While ``holding``, what clients send on connections open before is kept back (``held`` is set)
    until :meth:`let_go`; new connections pass."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self.accepted_frozen = anyio.Event()
        self.holding = False
        self.held = anyio.Event()
        self._let_go = anyio.Event()

    def hold(self) -> None:
        self.holding = True
        self._let_go = anyio.Event()

    def let_go(self) -> None:
        self.holding = False
        self._let_go.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        if self.frozen:
            async with client:  # never read, never closed while the proxy runs
                self.accepted_frozen.set()
                await anyio.sleep_forever()
        server = await anyio.connect_tcp("127.0.0.1", self.target_port)
        opened_while_holding = self.holding
        async with client, server, anyio.create_task_group() as tg:
            tg.start_soon(self._forward, client, server, opened_while_holding)
            await _pipe(server, client)
            tg.cancel_scope.cancel()

    async def _forward(
        self, client: anyio.abc.SocketStream, server: anyio.abc.SocketStream, opened_while_holding: bool
    ) -> None:
        try:
            async for chunk in client:
                if self.holding and not opened_while_holding:
                    self.held.set()
                    await self._let_go.wait()
                await server.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass


async def _pipe(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[FreezingProxy]:
    port = int(psycopg.conninfo.conninfo_to_dict(postgres_url).get("port") or 5432)
    frozen = FreezingProxy(port)
    async with anyio.create_task_group() as tg:
        await tg.start(frozen.serve)
        yield frozen
        tg.cancel_scope.cancel()


def through(proxy: FreezingProxy, url: str, **options: str) -> str:
    return psycopg.conninfo.make_conninfo(url, host="127.0.0.1", port=str(proxy.port), **options)


# -- the listener on a server that stops answering ---------------------------------------------


async def test_a_listener_connecting_to_a_hung_server_stops_when_cancelled(
    postgres_url: str, schema: str, proxy: FreezingProxy
) -> None:
    # libpq would wait up to connect_timeout for the hung server; the block must end well before.
    conninfo = through(proxy, postgres_url, connect_timeout="8")
    async with PostgresStore(conninfo, Payload, schema=schema) as store:
        proxy.frozen = True
        started = anyio.current_time()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def listen() -> None:
                    async with store.wake_ups(lambda: None):
                        await anyio.sleep_forever()

                tg.start_soon(listen)
                with anyio.fail_after(5):
                    await proxy.accepted_frozen.wait()  # the listener is connecting
                started = anyio.current_time()
                scope.cancel()
        assert anyio.current_time() - started < 3, "the listener's connect kept the block from ending"


# -- rows the store did not write ------------------------------------------------------------


NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
VT = timedelta(seconds=30)


async def _set_column(url: str, schema: str, job_id: str, column: str, value: object) -> None:
    query = sql.SQL("UPDATE {} SET {} = %s WHERE id = %s").format(
        sql.Identifier(schema, "jobs"), sql.Identifier(column)
    )

    def write() -> None:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(query, (value, job_id))

    await anyio.to_thread.run_sync(write)


async def _column(url: str, schema: str, job_id: str, column: str) -> object:
    query = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(sql.Identifier(column), sql.Identifier(schema, "jobs"))

    def read() -> object:
        with psycopg.connect(url, autocommit=True) as connection:
            row = connection.execute(query, (job_id,)).fetchone()
        assert row is not None
        return row[0]

    return await anyio.to_thread.run_sync(read)


@pytest.mark.parametrize(("column", "value"), [("max_attempts", 0), ("timeout", float("nan")), ("timeout", -1.0)])
async def test_a_row_with_an_invalid_field_is_failed_not_a_claim_that_always_raises(
    postgres_url: str, schema: str, column: str, value: object
) -> None:
    async with PostgresStore(postgres_url, Payload, schema=schema) as store:
        await store.add_jobs(
            [Job.create(Payload(1), id="bad", process_after=NOW), Job.create(Payload(2), id="good", process_after=NOW)]
        )
        await _set_column(postgres_url, schema, "bad", column, value)  # an operator's hand, an older writer
        claimed = await store.fetch_pending_jobs(NOW, 5, VT)
        assert [job.id for job in claimed] == ["good"]
        assert await store.count(JobStatus.FAILED) == 1
        last_error = await _column(postgres_url, schema, "bad", "last_error")
        assert isinstance(last_error, str)
        assert column in last_error  # names the field Job refused
        assert await store.fetch_pending_jobs(NOW + VT * 2, 5, VT) != []  # only "good" again, once its lease ends


# -- the server session's settings -------------------------------------------------------------


async def test_the_sessions_time_zone_does_not_move_stored_instants(postgres_url: str, schema: str) -> None:
    due = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)
    conninfo = psycopg.conninfo.make_conninfo(postgres_url, options="-c TimeZone=Asia/Kathmandu")
    async with PostgresStore(conninfo, Payload, schema=schema) as store:
        await store.add_job(Job.create(Payload(1), id="a", process_after=due))
        stored = await store.get_job("a")
        assert stored.process_after == due
        assert stored.process_after.utcoffset() == timedelta(0)
        assert await store.next_due_time() == due
        assert await store.fetch_pending_jobs(due - timedelta(microseconds=1), 5, VT) == []
        (claimed,) = await store.fetch_pending_jobs(due, 5, VT)
        assert claimed.visible_after == due + VT


# -- pools of the user's -------------------------------------------------------------------------


async def test_a_pool_the_user_never_opened_is_a_clear_error_not_a_transient_one(
    anyio_backend: str, postgres_url: str, schema: str
) -> None:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(postgres_url, kwargs={"autocommit": True}, open=False)
    store = PostgresStore(pool, Payload, schema=schema)
    with pytest.raises(PostgresStoreError, match="pool"):
        await store.open()


async def test_a_pool_without_autocommit_still_commits_claims_and_updates(postgres_url: str, schema: str) -> None:
    from psycopg_pool import ConnectionPool

    pool: ConnectionPool[Any] = ConnectionPool(postgres_url, open=False)
    await anyio.to_thread.run_sync(pool.open)
    try:
        async with PostgresStore(pool, Payload, schema=schema) as store:
            await store.add_job(Job.create(Payload(1), id="a", process_after=NOW))
            (claimed,) = await store.fetch_pending_jobs(NOW, 5, VT)
            await store.update_job(replace(claimed, status=JobStatus.COMPLETED, processed_at=NOW, visible_after=None))
        async with PostgresStore(postgres_url, Payload, schema=schema) as fresh:
            assert (await fresh.get_job("a")).status is JobStatus.COMPLETED
    finally:
        await anyio.to_thread.run_sync(pool.close)


# -- connection strings that can never work --------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"sslmode": "bogus"}, {"port": "notaport"}, {"target_session_attrs": "bogus"}],
    ids=lambda o: next(iter(o)),
)
async def test_a_connection_option_libpq_refuses_is_permanent_not_retried_for_ever(
    postgres_url: str, schema: str, options: dict[str, str]
) -> None:
    conninfo = psycopg.conninfo.make_conninfo(postgres_url, password="s3cret-pw", **options)
    store = PostgresStore(conninfo, Payload, schema=schema)
    try:
        with pytest.raises(PostgresStoreError) as raised:
            await store.open()
    finally:
        await store.aclose()
    assert "s3cret-pw" not in str(raised.value)


# -- a claim whose caller was cancelled before the server got it -------------------------------------


async def test_a_claim_that_commits_after_its_caller_was_cancelled_is_handed_back(
    postgres_url: str, schema: str, proxy: FreezingProxy
) -> None:
    # On trio the claim runs in a worker thread that a cancellation abandons: the statement can reach
    # the server after the store's hand-back ran and found nothing. Its jobs must not stay leased to nobody.
    conninfo = through(proxy, postgres_url)
    async with PostgresStore(conninfo, Payload, schema=schema, max_connections=3) as store:
        await store.add_job(Job.create(Payload(1), id="a", process_after=NOW))
        before = await _column(postgres_url, schema, "a", "ctid")
        proxy.hold()  # the pool's open connections stop reaching the server; new ones still do
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.fetch_pending_jobs, NOW, 5, VT)
                with anyio.fail_after(10):
                    await proxy.held.wait()  # the claim is on its way
                scope.cancel()
                proxy.let_go()  # the claim reaches the server now, after its caller has given up
        changed = False
        with anyio.move_on_after(10):
            while True:  # the claim lands (the row changes), then its jobs are handed back
                changed = await _column(postgres_url, schema, "a", "ctid") != before
                if changed and await _column(postgres_url, schema, "a", "visible_after") is None:
                    break
                await anyio.sleep(0.02)  # polling the server: nothing else tells when another connection commits
        assert changed, "the claim never reached the server"
        assert await _column(postgres_url, schema, "a", "visible_after") is None, "leased to nobody"
        assert await _column(postgres_url, schema, "a", "attempts") == 0


async def test_opening_the_store_on_a_hung_server_stops_when_cancelled(
    postgres_url: str, schema: str, proxy: FreezingProxy
) -> None:
    # A scheduler told to stop while its store still connects must not wait out libpq's connect timeout.
    proxy.frozen = True
    store = PostgresStore(through(proxy, postgres_url, connect_timeout="8"), Payload, schema=schema)
    started = anyio.current_time()
    try:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.open)
                with anyio.fail_after(5):
                    await proxy.accepted_frozen.wait()  # the store is connecting
                started = anyio.current_time()
                scope.cancel()
    finally:
        await store.aclose()
    assert anyio.current_time() - started < 3, "the store's first connect kept the stop waiting"
