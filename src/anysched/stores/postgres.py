"""PostgresStore: jobs in a PostgreSQL table, shared by any number of processes and hosts.

psycopg 3 does the work: its async pool on asyncio, its sync pool in worker threads on trio
(or wherever the user gives a sync pool). A claim of k jobs is one statement (a CTE that
locks the oldest due rows ``FOR UPDATE SKIP LOCKED`` and an ``UPDATE … RETURNING`` that
leases each under a fresh token), every update is one conditional ``UPDATE`` fenced by the
lease token, and inserts, releases and retries ``NOTIFY`` listeners in their own transaction.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import anyio

try:
    import psycopg
    from psycopg.types.json import Jsonb
    from psycopg_pool import AsyncConnectionPool, ConnectionPool
except ImportError as _missing:  # pragma: no cover -- tested in a subprocess without psycopg
    raise ImportError(
        "anysched.stores.postgres needs psycopg 3 and psycopg_pool: pip install anysched[postgres]"
    ) from _missing

from .._codec import PayloadCodec, json_text
from .._exceptions import JobNotFoundError, PayloadError, UndecodableDocumentError
from .._job import Job, JobStatus, new_lease_token
from .._schedule import Schedule, check_schedule
from .._schedule_document import schedule_document, schedule_from_document
from .._store import check_claim_arguments as _check_claim_arguments
from .._store import check_job as _check_job
from .._store import check_list_arguments as _check_list_arguments
from .._store import refused_by_job as _refused_by_job
from .._store import undecodable_last_error as _undecodable_last_error
from .._store import update_refused as _update_refused
from .._time import Seconds, require_utc, to_seconds
from ._postgres._coalescing import UpdateCoalescer
from ._postgres._connections import (
    Connections,
    Op,
    PostgresStoreError,
    Row,
    Statement,
    close_once,
    connect_once,
    connections_for,
    in_transaction,
    own_pool,
    rowcount_of,
    rows_of,
    run_once,
    settled,
    translated,
)
from ._postgres._sql import ARRAY_TYPES, FIELDS, SCHEMA_VERSION, ScheduleStatements, Statements
from ._postgres._wakeups import listening

__all__ = ("SCHEMA_VERSION", "PostgresStore", "PostgresStoreError")

PostgresStoreError.__module__ = __name__  # defined with the connections, documented and exported here

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", bound="PostgresStore[Any]")
_logger: logging.Logger = logging.getLogger("anysched")

_PURGE_STEP = 500  # rows per delete statement: each is a short transaction of its own
_EXPIRY_BUDGET = 0.05  # seconds of expiry steps one fetch may run (at least one step)
_MAX_EXPIRY_INTERVAL = timedelta(minutes=1)
_HAND_BACK_TIMEOUT = 5.0  # seconds a failed claim may spend, shielded, handing back what it won
_CLAIM_GRACE = 2.0  # seconds a cancelled claim's statement gets to answer, so what it won can be handed back


class PostgresStore(Generic[T]):
    """Jobs in a PostgreSQL table: atomic, fenced claims across processes and hosts, on asyncio and trio.

    Give it a connection string (or a psycopg pool) and the payload type; it creates (or
    checks) its schema, table and indexes on first use, or when entered with ``async with``::

        async with PostgresStore("postgresql://app@db/app", Greeting) as store:
            async with open_scheduler(store, handler) as scheduler:
                ...

    With a connection string the store opens a pool of its own for the backend it first runs
    on: psycopg's ``AsyncConnectionPool`` on asyncio, the sync ``ConnectionPool`` in worker
    threads on trio. A pool you give is used as it is (and not closed): an
    ``AsyncConnectionPool`` on asyncio only, a ``ConnectionPool`` anywhere; make its
    connections autocommit (``kwargs={"autocommit": True}``).

    :param conninfo: a libpq connection string or URL, or a psycopg pool. It never appears
        in a message or a log line of anysched's.
    :param payload_type: the payload's type (a dataclass, ``TypedDict``, pydantic model…);
        payloads are stored as ``jsonb`` through pydantic
    :param schema: the PostgreSQL schema of the store's tables (created if missing)
    :param table: the jobs table's name; ``<table>_meta`` beside it keeps the schema version,
        ``<table>_schedules`` the schedules (:class:`~anysched.StoresSchedules`)
    :param completed_ttl: when set, completed jobs older than this are deleted now and then,
        after a claim (never inside one), a few hundred per statement
    :param wake_ups: ``NOTIFY`` on insert, release and retry, and listen for them in
        :meth:`wake_ups`; turn off behind a transaction-mode pooler such as PgBouncer, where
        ``LISTEN`` does not work (the scheduler then polls)
    :param max_connections: the size limit of the store's own pool
    """

    def __init__(
        self,
        conninfo: str | ConnectionPool[Any] | AsyncConnectionPool[Any],
        payload_type: type[T],
        *,
        schema: str = "anysched",
        table: str = "jobs",
        completed_ttl: Seconds | None = None,
        wake_ups: bool = True,
        max_connections: int = 10,
    ) -> None:
        if not isinstance(conninfo, (str, ConnectionPool, AsyncConnectionPool)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                "conninfo must be a connection string, a psycopg_pool.ConnectionPool or an AsyncConnectionPool, "
                f"not {type(conninfo).__name__}"
            )
        if type(max_connections) is not int or max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        if not isinstance(wake_ups, bool):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"wake_ups must be a bool, not {type(wake_ups).__name__}")
        self._target = conninfo
        self._sql = Statements(schema, table)
        self._schedule_sql = ScheduleStatements(schema, table)
        self._codec = PayloadCodec[T](payload_type)
        self._ttl = None if completed_ttl is None else timedelta(seconds=to_seconds("completed_ttl", completed_ttl))
        self._wake_ups = wake_ups
        self._max_connections = max_connections
        self._connections: Connections | None = None
        self._opening: anyio.Lock | None = None
        self._closed = False
        self._next_expiry: datetime | None = None
        self._expiring = False
        self._updates = UpdateCoalescer(self._update_many, self._update_one)

    def __repr__(self) -> str:  # never the connection string
        return f"PostgresStore(schema={self._sql.schema!r}, table={self._sql.table!r})"

    @property
    def channel(self) -> str:
        """The ``LISTEN/NOTIFY`` channel of this store's table."""
        return self._sql.channel

    # -- opening and closing -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, and create or check the tables now (the first call does it otherwise).

        :raises PostgresStoreError: the server refused the credentials, the database does not
            exist, or it holds tables of a newer anysched
        :raises TransientStoreError: the server did not answer
        """
        await self._ready()

    async def aclose(self) -> None:
        """Close the store's own pool (a pool you gave stays open). The store cannot be used afterwards."""
        self._closed = True
        connections, self._connections = self._connections, None
        if connections is not None:
            with anyio.CancelScope(shield=True):
                await connections.close()

    async def __aenter__(self: S) -> S:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the store contract --------------------------------------------------------------------

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[T]]:
        """Lease up to ``limit`` due jobs, oldest due first, in one statement (see :class:`~anysched.JobStore`).

        A job whose stored payload cannot be decoded is marked failed (``last_error`` says
        why) and not returned, so it cannot stall the scheduler.
        """
        now = require_utc("now", now)
        _check_claim_arguments(limit, visibility_timeout)
        if limit == 0:
            return []
        tokens = [new_lease_token() for _ in range(limit)]
        params = {"now": now, "visible": now + visibility_timeout, "limit": limit, "tokens": tokens}
        try:
            # Settled, not abandoned, when the caller is cancelled: a claim that reached the server may
            # commit anyway, and the hand-back below can only find what committed before it runs.
            rows = await settled(
                lambda: self._run("claim", lambda: rows_of(Statement(self._sql.claim, params))), grace=_CLAIM_GRACE
            )
            jobs = await self._decode_claimed(rows, now)
            await self._expire_completed(now)  # after the claim has committed, in statements of its own
            return jobs
        except BaseException:
            # The claim may have committed though its result was lost (a cancellation, a
            # connection lost on the reply): nobody holds those jobs. Hand back whatever is
            # leased under this claim's tokens rather than leave it leased until expiry.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_HAND_BACK_TIMEOUT):
                await self._release_unreceived(tokens)
            raise

    async def update_job(self, job: Job[T]) -> None:
        """Store ``job`` while the stored copy is leased under ``job.lease`` (see :class:`~anysched.JobStore`).

        One conditional ``UPDATE``; a release or a retry (pending, ``visible_after=None``)
        also notifies listeners, in the same transaction. Calls made while an earlier one is
        on its way to the server are sent together, one statement and one commit for all,
        each row still fenced by its own lease.
        """
        _check_job(job)
        row = self._row(job)
        row["wakes"] = self._wake_ups and job.status is JobStatus.PENDING and job.visible_after is None
        # A None lease must not match a stored job that has none.
        if job.lease is None or not await self._updates.update(row):
            found = await self._run("update_job", lambda: rows_of(Statement(self._sql.exists, {"id": job.id})))
            raise _update_refused(job.id, exists=bool(found))

    async def _update_one(self, row: Row) -> bool:
        query = self._sql.update_notify if row["wakes"] else self._sql.update
        return bool(await self._run("update_job", lambda: rows_of(Statement(query, row))))

    async def _update_many(self, rows: list[Row]) -> set[str]:
        params = {name: [_array_value(row[name]) for row in rows] for name in ARRAY_TYPES}
        params["wakes"] = [row["wakes"] for row in rows]
        found = await self._run("update_job", lambda: rows_of(Statement(self._sql.update_many, params)))
        return {str(row["id"]) for row in found}

    async def add_job(
        self, job: Job[T], *, connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None
    ) -> None:
        """Insert ``job``, and notify listeners in the same transaction.

        :param connection: run the insert on this connection of yours, inside its current
            transaction (the outbox pattern): the job exists if and only if your transaction
            commits, and listeners hear of it then. Inside a transaction the insert runs in
            a savepoint, so a duplicate id leaves your transaction usable. A
            ``psycopg.AsyncConnection`` works on asyncio, a ``psycopg.Connection`` anywhere
            (in a worker thread); it must reach the database the store uses.
        :raises DuplicateJobError: its id exists; nothing was written
        :raises PayloadError: the payload cannot be stored as JSON; nothing was written
        """
        await self.add_jobs([job], connection=connection)

    async def add_jobs(
        self,
        jobs: Iterable[Job[T]],
        *,
        connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
    ) -> None:
        """Insert several jobs in one transaction: all of them or, on any error, none.

        :param connection: as for :meth:`add_job`
        :raises DuplicateJobError: one of the ids exists (or repeats); nothing was written
        :raises PayloadError: a payload cannot be encoded; nothing was written
        """
        rows = [self._row(_check_job(job)) for job in jobs]
        if not rows:
            return
        sql = self._sql
        single = len(rows) == 1

        def op() -> Op[None]:
            for row in rows:
                yield Statement(sql.insert_notify if self._wake_ups and single else sql.insert, row)
            if self._wake_ups and not single:
                yield Statement(sql.notify, {})

        if connection is None:
            await self._run("add_job", op, atomic=not single)
            return
        if not isinstance(connection, (psycopg.Connection, psycopg.AsyncConnection)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"connection must be a psycopg Connection or AsyncConnection, not {type(connection).__name__}"
            )
        await self._ready()  # the table exists before the caller's transaction writes to it
        # A savepoint inside the caller's open transaction. Outside one, a connection that is not
        # autocommit begins the caller's transaction with the first insert (the caller commits);
        # an autocommit one gets a transaction of its own when there are several rows.
        atomic = in_transaction(connection) or (connection.autocommit and not single)
        with translated("add_job"):
            await run_once(connection, op(), atomic=atomic)

    async def next_due_time(self) -> datetime | None:
        """The earliest moment a pending job is claimable, or ``None`` when none is pending."""
        rows = await self._run("next_due_time", lambda: rows_of(Statement(self._sql.next_due, {})))
        due: datetime | None = rows[0]["due"]
        return None if due is None else FIELDS["process_after"][1](due)

    def wake_ups(self, wake: Callable[[], None]) -> AbstractAsyncContextManager[None]:
        """Listen on the table's channel for the block's length; ``wake()`` on every insert, release
        or retry that commits, in any process (:class:`~anysched.SendsWakeUps`).

        One listening connection per block, of its own (not from the pool). With
        ``wake_ups=False`` the block does nothing.

        :raises TransientStoreError: the listening connection could not be opened, or failed
        """
        return self._listening(wake)

    @asynccontextmanager
    async def _listening(self, wake: Callable[[], None]) -> AsyncGenerator[None, None]:
        if not self._wake_ups:
            yield
            return
        connections = await self._ready()
        async with listening(connections.conninfo, connections.connect_options, self._sql.channel, wake):
            yield

    # -- schedules (anysched.StoresSchedules), in the table "<table>_schedules" --------------------

    async def put_schedule(self, schedule: Schedule[T]) -> None:
        """Store ``schedule``, replacing the one with its id, and move the change marker, in one
        transaction (see :class:`~anysched.StoresSchedules`).

        :raises PayloadError: its payload cannot be stored as JSON; nothing was written
        """
        document = schedule_document(check_schedule(schedule), self._codec.encode(schedule.payload))
        what = f"the payload of schedule {schedule.id!r} (a {type(schedule.payload).__name__})"
        text = json_text(document, what)
        params = {"id": schedule.id, "document": Jsonb(text, dumps=_as_text)}
        sql = self._schedule_sql

        def op() -> Op[None]:
            yield Statement(sql.bump_marker, {})
            yield Statement(sql.upsert, params)

        await self._run("put_schedule", op, atomic=True)

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Remove the schedule with this id; whether there was one. The marker moves only if there was."""
        sql = self._schedule_sql

        def op() -> Op[bool]:
            yield Statement(sql.lock_marker, {})  # the lock order of put_schedule: marker, then schedule
            if not (yield Statement(sql.delete, {"id": schedule_id})).rowcount:
                return False
            yield Statement(sql.bump_marker, {})
            return True

        return await self._run("remove_schedule", op, atomic=True)

    async def list_schedules(self) -> list[Schedule[T]]:
        """Every stored schedule (paused ones too), by id.

        :raises PayloadError: a stored schedule's payload does not decode
        :raises ValueError: a row does not hold a valid schedule
        """
        rows = await self._run("list_schedules", lambda: rows_of(Statement(self._schedule_sql.select_all, {})))
        documents: list[dict[str, Any]] = [row["document"] for row in rows]
        return [schedule_from_document(document, self._codec.decode(document["payload"])) for document in documents]

    async def schedules_marker(self) -> int:
        """A number that changes whenever a schedule is put or removed (one read by primary key)."""
        rows = await self._run("schedules_marker", lambda: rows_of(Statement(self._schedule_sql.read_marker, {})))
        return int(rows[0]["value"]) if rows else 0

    # -- inspection (anysched.InspectsJobs) --------------------------------------------------------

    async def get_job(self, job_id: str) -> Job[T]:
        """The stored job with this id. :raises JobNotFoundError: no such job"""
        rows = await self._run("get_job", lambda: rows_of(Statement(self._sql.select_one, {"id": job_id})))
        if not rows:
            raise JobNotFoundError(job_id)
        return self._job(rows[0])

    async def count(self, status: JobStatus | None = None) -> int:
        """How many jobs have ``status`` (all jobs when ``None``)."""
        if status is None:
            statement = Statement(self._sql.count_all, {})
        else:
            statement = Statement(self._sql.count_status, {"status": JobStatus(status).value})
        rows = await self._run("count", lambda: rows_of(statement))
        return int(rows[0]["n"])

    async def list_jobs(
        self, status: JobStatus | None = None, *, limit: int = 100, after: str | None = None
    ) -> list[Job[T]]:
        """Up to ``limit`` jobs with ``status`` (all when ``None``) whose ids sort after ``after``, by id.

        :raises PayloadError: a listed job's stored payload does not decode
        """
        status = _check_list_arguments(status, limit, after)
        query = self._sql.page[(status is not None, after is not None)]
        params = {"status": None if status is None else status.value, "after": after, "limit": limit}
        rows = await self._run("list_jobs", lambda: rows_of(Statement(query, params)))
        return [self._job(row) for row in rows]

    async def purge(self, *, completed_before: datetime) -> int:
        """Delete completed jobs processed before ``completed_before``; return how many.

        Pending and failed jobs are never purged. Deletes a few hundred rows per statement,
        each its own short transaction.
        """
        cutoff = require_utc("completed_before", completed_before)
        deleted, _ = await self._delete_completed(cutoff, deadline=None)
        return deleted

    # -- connections ---------------------------------------------------------------------------------

    async def _ready(self) -> Connections:
        if self._connections is not None:
            return self._connections
        if self._opening is None:
            self._opening = anyio.Lock()
        async with self._opening:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._connections is None:
                self._connections = await self._open()
        return self._connections

    async def _open(self) -> Connections:
        if isinstance(self._target, str):
            connections = own_pool(self._target, self._max_connections)
            with translated("open"):
                # A connection of its own first: a refused login shows here as what it is,
                # where a pool would only time out.
                connection = await connect_once(self._target, {})
                try:
                    await run_once(connection, self._ensure_tables(), atomic=True)
                finally:
                    with anyio.CancelScope(shield=True):
                        await close_once(connection)
        else:
            connections = connections_for(self._target)
            with translated("open"):
                await connections.run(self._ensure_tables, atomic=True)
        await connections.open()
        return connections

    def _ensure_tables(self) -> Op[None]:
        """The job tables (:meth:`_ensure_schema`), then the schedules' beside them, in one transaction."""
        yield from self._ensure_schema()
        for statement in self._schedule_sql.create:  # IF NOT EXISTS: also for tables of an older anysched
            yield Statement(statement, {})

    def _ensure_schema(self) -> Op[None]:
        """Create the schema, tables and indexes in a new database; check their version in an existing one."""
        sql = self._sql
        yield Statement(sql.lock, {})  # one creator at a time, across processes
        yield Statement(sql.create_schema, {})
        yield Statement(sql.create_meta, {})
        found = (yield Statement(sql.read_version, {})).rows
        if found:
            version = int(found[0]["value"])
            if version > SCHEMA_VERSION:
                raise PostgresStoreError(
                    f"the job table {sql.schema}.{sql.table} has schema version {version}, from a newer "
                    f"anysched; this one knows up to version {SCHEMA_VERSION}: upgrade anysched"
                )
            if version < SCHEMA_VERSION:  # pragma: no cover -- no older version exists yet
                raise PostgresStoreError(f"the job table {sql.schema}.{sql.table} has unknown schema version {version}")
            return
        if (yield Statement(sql.jobs_exists, {})).rows[0]["found"]:
            raise PostgresStoreError(f"{sql.schema}.{sql.table} exists but anysched did not create it")
        for statement in sql.create:
            yield Statement(statement, {})
        _logger.info("created the anysched table %s.%s (schema version %d)", sql.schema, sql.table, SCHEMA_VERSION)

    async def _run(self, operation: str, make_op: Callable[[], Op[R]], *, atomic: bool = False) -> R:
        connections = await self._ready()
        with translated(operation):
            return await connections.run(make_op, atomic=atomic)

    async def _release_unreceived(self, tokens: list[str]) -> None:
        query = self._sql.release_notify if self._wake_ups else self._sql.release
        try:
            rows = await self._run("release", lambda: rows_of(Statement(query, {"tokens": tokens})))
        except Exception as error:  # the leases expire anyway; don't mask the original exception
            _logger.warning("could not hand back claimed jobs: %r; they reappear when their leases end", error)
        else:
            if rows:
                _logger.info("handed back %d claimed job(s) that no caller received", len(rows))

    # -- the claim's jobs ------------------------------------------------------------------------

    async def _decode_claimed(self, rows: Sequence[Row], now: datetime) -> list[Job[T]]:
        jobs: list[Job[T]] = []
        for row in rows:
            try:
                jobs.append(self._job(row))
            except PayloadError as error:  # its message names fields and kinds, never the payload
                _logger.error("job %s: %s; marking it failed", row["id"], error)
                await self._fail_undecodable(row, UndecodableDocumentError("payload", error), now)
            except UndecodableDocumentError as error:  # a field Job refuses: one bad row must not stall every claim
                _logger.error("job %s: %s; marking it failed", row["id"], error)
                await self._fail_undecodable(row, error, now)
        jobs.sort(key=lambda job: job.process_after)  # RETURNING gives rows in no particular order
        return jobs

    async def _fail_undecodable(self, row: Row, error: UndecodableDocumentError, now: datetime) -> None:
        last_error = _undecodable_last_error(error)
        params = {"id": row["id"], "lease": row["lease"], "now": now, "last_error": last_error}
        statement = Statement(self._sql.fail_undecodable, params)
        await self._run("claim", functools.partial(rows_of, statement))

    # -- deleting completed jobs ---------------------------------------------------------------

    async def _expire_completed(self, now: datetime) -> None:
        """Delete completed jobs older than ``completed_ttl``, after a claim, at most once per interval."""
        if self._ttl is None or self._expiring or (self._next_expiry is not None and now < self._next_expiry):
            return
        self._expiring = True  # one fetch at a time
        try:
            deadline = time.monotonic() + _EXPIRY_BUDGET  # real work time, whatever the event loop's clock
            deleted, backlog = await self._delete_completed(now - self._ttl, deadline=deadline)
        except Exception as error:  # housekeeping: the claim itself succeeded
            _logger.warning("could not delete expired completed jobs: %r; trying again later", error)
            deleted, backlog = 0, False
        finally:
            self._expiring = False
        if not backlog:
            self._next_expiry = now + min(self._ttl, _MAX_EXPIRY_INTERVAL)
        if deleted:
            _logger.info("deleted %d completed job(s) older than %s", deleted, self._ttl)

    async def _delete_completed(self, cutoff: datetime, *, deadline: float | None) -> tuple[int, bool]:
        """Delete completed jobs processed before ``cutoff``, ``_PURGE_STEP`` rows per statement.

        :return: how many were deleted, and whether some may be left
        """
        deleted = 0
        params = {"cutoff": cutoff, "limit": _PURGE_STEP}
        while True:
            count = await self._run("purge", lambda: rowcount_of(Statement(self._sql.delete_completed, params)))
            deleted += count
            if count < _PURGE_STEP:
                return deleted, False
            if deadline is not None and time.monotonic() >= deadline:
                return deleted, True

    # -- rows and jobs ---------------------------------------------------------------------------

    def _row(self, job: Job[T]) -> Row:
        """The job as statement parameters. :raises PayloadError: the payload cannot be encoded"""
        text = json_text(self._codec.encode(job.payload), f"a payload of type {type(job.payload).__name__}")
        fields = {name: write(getattr(job, name)) for name, (write, _) in FIELDS.items()}
        return {"payload": Jsonb(text, dumps=_as_text), **fields}

    def _job(self, row: Row) -> Job[T]:
        """The job a row holds.

        :raises PayloadError: its payload does not decode
        :raises UndecodableDocumentError: ``Job`` refuses a field that the table's checks let
            through (a row written by hand or by another program)
        """
        fields = {name: read(row[name]) for name, (_, read) in FIELDS.items()}
        payload = self._codec.decode(row["payload"])
        try:
            return Job(payload=payload, **fields)
        except (TypeError, ValueError) as error:  # Job's own checks quote the value: name the field
            raise UndecodableDocumentError(_refused_by_job(fields), error) from None


def _as_text(text: Any) -> str:
    """The ``dumps`` of a payload already serialized (and checked) by :meth:`PostgresStore._row`."""
    return str(text)


def _array_value(value: Any) -> Any:
    """A row's value as an element of ``update_many``'s column arrays: a payload as its JSON text."""
    return value.obj if isinstance(value, Jsonb) else value
