"""SQLiteStore: durable jobs in one SQLite file, shared by the processes of one machine.

The standard library's :mod:`sqlite3` does the work in a worker thread (through
:func:`anyio.to_thread.run_sync`), so the store runs on asyncio and on trio. Every write is
a transaction that takes SQLite's write lock up front (``BEGIN IMMEDIATE``), the file is in
WAL mode, and a claim of k jobs is one ``UPDATE … RETURNING`` statement: two processes on
one file never receive the same job.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar, overload

import anyio
import anyio.to_thread

from .._codec import PayloadCodec, json_text
from .._exceptions import (
    AnyschedError,
    DuplicateJobError,
    JobNotFoundError,
    PayloadError,
    TransientStoreError,
    UndecodableDocumentError,
)
from .._job import Job, JobStatus, new_lease_token
from .._schedule import Schedule, check_schedule
from .._schedule_document import schedule_document, schedules_from_documents
from .._store import check_claim_arguments as _check_claim_arguments
from .._store import check_job as _check_job
from .._store import check_list_arguments as _check_list_arguments
from .._store import undecodable_last_error as _undecodable_last_error
from .._store import update_refused as _update_refused
from .._time import Seconds, require_utc, to_seconds, utc_now
from ._sqlite_changes import watch_commits

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", bound="SQLiteStore[Any]")  # `async with` gives back the store's own class (a subclass too)

__all__ = ("SCHEMA_VERSION", "SQLiteStore", "SQLiteStoreError", "Synchronous")

_logger: logging.Logger = logging.getLogger("anysched")

SCHEMA_VERSION: Final = 1
"""The version of the tables this anysched writes; kept in the ``anysched_meta`` table."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_TRANSIENT_CODES = frozenset({5, 6, 15})  # SQLITE_BUSY, SQLITE_LOCKED, SQLITE_PROTOCOL (a WAL lock race)
_PURGE_STEP = 500  # rows per purge transaction: each holds the connection and the write lock only briefly
_EXPIRY_BUDGET = 0.05  # seconds of expiry steps one fetch may run (at least one step)
_MAX_EXPIRY_INTERVAL = timedelta(minutes=1)


def _to_us(moment: datetime) -> int:
    """Integer microseconds since the Unix epoch: exact, and sorts like the instants."""
    return (moment - _EPOCH) // _MICROSECOND


def _maybe_us(moment: datetime | None) -> int | None:
    return None if moment is None else _to_us(moment)


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _maybe_datetime(value: int | None) -> datetime | None:
    return None if value is None else _from_us(value)


def _as_is(value: R) -> R:
    return value


def _status_value(status: JobStatus) -> str:
    return status.value


_FIELDS: Final[dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]]] = {
    "id": (_as_is, _as_is),
    "status": (_status_value, JobStatus),
    "process_after": (_to_us, _from_us),
    "visible_after": (_maybe_us, _maybe_datetime),
    "processed_at": (_maybe_us, _maybe_datetime),
    "attempts": (_as_is, _as_is),
    "lease": (_as_is, _as_is),
    "last_error": (_as_is, _as_is),
    "max_attempts": (_as_is, _as_is),
    "timeout": (_as_is, _as_is),
}
"""The one map of Job attributes to columns: every attribute but the payload (JSON through the
codec), each in the column of its name, with how its value is written there and read back.
Every statement and every row (a dict keyed by column) takes its names from here."""
_NAMES = ("payload", *_FIELDS)
_COLUMNS = ", ".join(_NAMES)
_Row: TypeAlias = "dict[str, Any]"
_LEASE_HELD = "id = :id AND lease = :lease AND status = 'pending' AND visible_after IS NOT NULL"
"""The stored job is leased under the caller's token (``Job.accepts_write_fenced_by``); an outcome ends that."""
_INSERT = f"INSERT INTO anysched_jobs ({_COLUMNS}) VALUES ({', '.join(f':{name}' for name in _NAMES)})"
_UPDATE = (
    f"UPDATE anysched_jobs SET {', '.join(f'{name} = :{name}' for name in _NAMES if name != 'id')}"
    f" WHERE {_LEASE_HELD}"  # the WHERE sees the stored lease; the SET writes the same token
)
_CLAIMABLE = (
    "FROM anysched_jobs WHERE status = 'pending' AND process_after <= :now"
    " AND (visible_after IS NULL OR visible_after <= :now) ORDER BY process_after LIMIT :limit"
)
_SCHEMA = (
    "CREATE TABLE anysched_meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)",
    """CREATE TABLE anysched_jobs (
        id TEXT PRIMARY KEY NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
        process_after INTEGER NOT NULL,
        visible_after INTEGER,
        processed_at INTEGER,
        attempts INTEGER NOT NULL,
        lease TEXT,
        last_error TEXT,
        max_attempts INTEGER,
        timeout REAL
    )""",
    # The claim walks pending jobs oldest due first and stops after `limit` rows. The index
    # covers the claim's WHERE (status too: SQLite's planner does not see that the partial
    # index implies it), so leased jobs are skipped without reading the table.
    "CREATE INDEX anysched_jobs_claim ON anysched_jobs (process_after, visible_after, status) WHERE status = 'pending'",
    # next_due_time: the earliest lease expiry, among the few leased jobs only.
    "CREATE INDEX anysched_jobs_leased ON anysched_jobs (visible_after)"
    " WHERE status = 'pending' AND visible_after IS NOT NULL",
    # purge: completed jobs by age.
    "CREATE INDEX anysched_jobs_completed ON anysched_jobs (processed_at) WHERE status = 'completed'",
    f"INSERT INTO anysched_meta (key, value) VALUES ('schema_version', {SCHEMA_VERSION})",
)

Synchronous: TypeAlias = Literal["full", "normal"]
"""How hard SQLite makes each commit durable (its ``PRAGMA synchronous``)."""


class SQLiteStoreError(AnyschedError, RuntimeError):
    """The SQLite file cannot serve as a job store: it cannot be created or opened, it is
    corrupt or not a database, or its tables come from a newer anysched.

    Permanent: the scheduler does not retry it.
    """


class SQLiteStore(Generic[T]):
    """Jobs in a SQLite file: durable across restarts, shared by processes on one machine.

    Give it a path and the payload type; it opens the file, switches it to WAL mode and
    creates (or checks) its tables on first use, or when entered with ``async with``::

        async with SQLiteStore("jobs.db", Greeting) as store:
            async with open_scheduler(store, handler) as scheduler:
                ...

    One store holds one connection and runs its calls one at a time in a worker thread, so
    any number of tasks may share it; open one store per process (and per event loop).
    Several processes, each with its store, may share one file: claims are atomic across
    them. A network file system is not supported (SQLite's locks do not work there).

    :param path: the database file (created if missing, readable by its owner only, like
        the ``-wal`` and ``-shm`` files beside it; its directory must exist), or
        ``":memory:"`` for a private in-memory database
    :param payload_type: the payload's type (a dataclass, ``TypedDict``, pydantic model,
        ``dict[str, Any]`` …); payloads are stored as JSON through pydantic
    :param busy_timeout: how long a call waits for another process's write lock before it
        fails with :class:`~anysched.TransientStoreError` (which the scheduler retries)
    :param completed_ttl: when set, completed jobs older than this are deleted now and then:
        after a claim, a few hundred at a time, for a few milliseconds per fetch, once a
        minute at most when none is left; by default they are kept until :meth:`purge`
    :param synchronous: ``"full"`` (default) makes every commit durable across a power
        loss; ``"normal"`` is faster and still survives any process crash, but a power loss
        may undo the last commits (a job added or completed just before it)
    :param wake_up_interval: how often :meth:`wake_ups` checks the file for another
        connection's commit (a ``PRAGMA data_version``: a few microseconds, no lock)
    """

    @overload
    def __init__(
        self,
        path: str | os.PathLike[str],
        payload_type: type[T],
        *,
        busy_timeout: Seconds = ...,
        completed_ttl: Seconds | None = ...,
        synchronous: Synchronous = ...,
        wake_up_interval: Seconds = ...,
    ) -> None: ...
    @overload
    def __init__(  # a type that is not a class, e.g. `int | str`: write `SQLiteStore[int | str](...)`
        self,
        path: str | os.PathLike[str],
        payload_type: Any,
        *,
        busy_timeout: Seconds = ...,
        completed_ttl: Seconds | None = ...,
        synchronous: Synchronous = ...,
        wake_up_interval: Seconds = ...,
    ) -> None: ...
    def __init__(
        self,
        path: str | os.PathLike[str],
        payload_type: type[T] | Any,
        *,
        busy_timeout: Seconds = 5.0,
        completed_ttl: Seconds | None = None,
        synchronous: Synchronous = "full",
        wake_up_interval: Seconds = 0.01,
    ) -> None:
        self.path: str = os.fspath(path)
        """The database file's path."""
        self._codec: PayloadCodec[T] = PayloadCodec(payload_type)
        self._busy_timeout = to_seconds("busy_timeout", busy_timeout, allow_zero=True)
        self._ttl = None if completed_ttl is None else timedelta(seconds=to_seconds("completed_ttl", completed_ttl))
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self._synchronous: Synchronous = synchronous
        self._wake_up_interval = to_seconds("wake_up_interval", wake_up_interval)
        self._use_returning = _HAS_RETURNING
        self._lock = threading.Lock()
        # One thread at a time: the others queue here instead of blocking pool threads on the lock.
        self._limiter = anyio.CapacityLimiter(1)
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        self._next_expiry: int | None = None
        self._expiring = False

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, {self._codec.payload_type!r})"

    # -- opening and closing -------------------------------------------------------------

    async def open(self) -> None:
        """Open the file and create or check the tables now (the first call does it otherwise).

        :raises SQLiteStoreError: the file cannot be created or opened, is not a database,
            or holds tables of a newer anysched
        """
        await self._run(lambda connection: None)

    async def aclose(self) -> None:
        """Close the connection. The store cannot be used afterwards."""
        await anyio.to_thread.run_sync(self._close, limiter=self._limiter)

    async def __aenter__(self: S) -> S:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the store contract --------------------------------------------------------------

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[T]]:
        """Lease up to ``limit`` due jobs, oldest due first, in one transaction (see :class:`~anysched.JobStore`).

        A job whose stored payload cannot be decoded is marked failed (``last_error`` says
        why) in the same transaction and not returned, so it cannot stall the scheduler.
        """
        now_us = _to_us(require_utc("now", now))
        _check_claim_arguments(limit, visibility_timeout)
        if limit == 0:
            return []
        visible_us = now_us + visibility_timeout // _MICROSECOND
        claimed: list[Job[T]] = []

        def claim(connection: sqlite3.Connection) -> list[Job[T]]:
            claimed.extend(self._claim(connection, now_us, visible_us, limit))
            return claimed

        try:
            jobs = await self._run(claim)
            await self._expire_completed(now_us)  # after the claim has committed, in steps of its own
            return jobs
        except BaseException:
            # anyio waits for the thread and returns its result, delivering a cancellation at
            # the caller's next checkpoint, so the caller owns the jobs. Should the claim's
            # result be lost all the same (an error or a cancellation raised after the commit,
            # or during the expiry steps), nobody has them: hand them back now rather than
            # leave them leased until expiry.
            with anyio.CancelScope(shield=True):
                await self._release_unreceived(claimed)
            raise

    async def update_job(self, job: Job[T]) -> None:
        """Store ``job`` while the stored copy is leased under ``job.lease`` (see :class:`~anysched.JobStore`)."""
        _check_job(job)
        row = self._row(job)
        await self._run(lambda connection: _update(connection, row))

    async def add_job(self, job: Job[T]) -> None:
        """Insert ``job``. :raises DuplicateJobError: its id exists; nothing was written"""
        await self.add_jobs([job])

    async def add_jobs(self, jobs: Iterable[Job[T]]) -> None:
        """Insert several jobs in one transaction: all of them or, on any error, none.

        :raises DuplicateJobError: one of the ids exists (or repeats); nothing was written
        :raises PayloadError: a payload cannot be encoded; nothing was written
        """
        rows = [self._row(_check_job(job)) for job in jobs]
        if rows:
            await self._run(lambda connection: _insert(connection, rows))

    async def next_due_time(self) -> datetime | None:
        """The earliest moment a pending job is claimable, or ``None`` when none is pending."""
        moment = await self._run(_next_due)
        return None if moment is None else _from_us(moment)

    # -- wake-ups (anysched.SendsWakeUps) ------------------------------------------------------

    @asynccontextmanager
    async def wake_ups(self, wake: Callable[[], None]) -> AsyncGenerator[None]:
        """Call ``wake`` when another connection (another process, another store object) commits
        a change that may have made a job claimable: a job due now, or due earlier than any before.

        A thread checks ``PRAGMA data_version`` on a connection of its own every
        ``wake_up_interval``, and only after a change reads the earliest claimable moment. The
        store's own claims, renewals and outcomes only move that moment later: a lone
        scheduler is not woken by its own writes. A private ``":memory:"`` database has no
        other connection: the block listens to nothing.
        """
        await self.open()
        if self.path in ("", ":memory:"):
            yield
            return
        async with watch_commits(self._watching_connection, self._wake_up_interval, _EarliestClaimable(), wake):
            yield

    def _watching_connection(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA query_only = ON")
        except sqlite3.Error as error:
            raise _translate(error, self.path, "cannot be watched for changes") from error
        return connection

    # -- inspection (anysched.InspectsJobs) ------------------------------------------------------

    async def get_job(self, job_id: str) -> Job[T]:
        """The stored job with this id. :raises JobNotFoundError: no such job"""
        row = await self._run(lambda connection: _select_one(connection, job_id))
        if row is None:
            raise JobNotFoundError(job_id)
        return self._job(row)

    async def count(self, status: JobStatus | None = None) -> int:
        """How many jobs have ``status`` (all jobs when ``None``)."""
        status = None if status is None else JobStatus(status)
        return await self._run(lambda connection: _count(connection, status))

    async def list_jobs(
        self, status: JobStatus | None = None, *, limit: int = 100, after: str | None = None
    ) -> list[Job[T]]:
        """Up to ``limit`` jobs with ``status`` (all when ``None``) whose ids sort after ``after``, by id.

        :raises PayloadError: a listed job's stored payload does not decode
        """
        status = _check_list_arguments(status, limit, after)
        rows = await self._run(lambda connection: _select_page(connection, status, limit, after))
        return [self._job(row) for row in rows]

    async def purge(self, *, completed_before: datetime) -> int:
        """Delete completed jobs processed before ``completed_before``; return how many.

        Pending and failed jobs are never purged. Deletes a few hundred rows at a time, each
        step its own transaction and its own turn on the connection, so neither other
        processes nor this store's other calls (lease renewals above all) wait for long.
        """
        cutoff = _to_us(require_utc("completed_before", completed_before))
        deleted, _ = await self._delete_completed(cutoff, deadline=None)
        return deleted

    # -- schedules (anysched.StoresSchedules) -------------------------------------------------

    async def put_schedule(self, schedule: Schedule[T]) -> None:
        """Store ``schedule``, replacing the one with its id (see :class:`~anysched.StoresSchedules`).

        :raises PayloadError: its payload cannot be encoded; nothing was written
        """
        document = schedule_document(check_schedule(schedule), self._codec.encode(schedule.payload))
        text = json_text(document, f"the payload of schedule {schedule.id!r} (a {type(schedule.payload).__name__})")
        await self._run(lambda connection: _put_schedule(connection, schedule.id, text))

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Remove the schedule with this id; whether there was one."""
        return await self._run(lambda connection: _remove_schedule(connection, schedule_id))

    async def list_schedules(self) -> list[Schedule[T]]:
        """Every stored schedule, by id; one that does not decode is logged and left out."""
        texts = await self._run(_select_schedules)
        return schedules_from_documents((json.loads(text) for text in texts), self._codec.decode)

    async def schedules_marker(self) -> int:
        """A number that changes whenever a schedule is put or removed (one indexed read)."""
        return await self._run(_schedules_marker)

    # -- running calls in the worker thread ------------------------------------------------

    async def _run(self, call: Callable[[sqlite3.Connection], R]) -> R:
        return await anyio.to_thread.run_sync(self._call, call, limiter=self._limiter)

    def _call(self, call: Callable[[sqlite3.Connection], R]) -> R:
        with self._lock:
            connection = self._connect()
            try:
                return call(connection)
            except sqlite3.Error as error:
                raise _translate(error, self.path, "failed") from error

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._connection is None:
            self._connection = _open(self.path, self._busy_timeout, self._synchronous)
        return self._connection

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()

    async def _release_unreceived(self, jobs: list[Job[T]]) -> None:
        if not jobs:
            return
        try:
            await self._run(lambda connection: _release(connection, jobs))
        except Exception as error:  # the leases expire anyway; don't mask the original exception
            _logger.warning("could not hand back %d claimed job(s): %r", len(jobs), error)
        else:
            _logger.info("handed back %d claimed job(s) that no caller received", len(jobs))

    # -- the claim ---------------------------------------------------------------------------

    def _claim(self, connection: sqlite3.Connection, now_us: int, visible_us: int, limit: int) -> list[Job[T]]:
        params = {"now": now_us, "visible": visible_us, "limit": limit}
        with _write(connection):
            rows = _claim_returning(connection, params) if self._use_returning else _claim_select(connection, params)
            jobs, broken = self._decode_claimed(rows)
            if broken:
                _fail_undecodable(connection, broken, now_us)
        jobs.sort(key=lambda job: job.process_after)  # RETURNING gives rows in no particular order
        return jobs

    def _decode_claimed(self, rows: Sequence[_Row]) -> tuple[list[Job[T]], list[_Row]]:
        """The claimed jobs whose payloads decode, and for those that do not, their failure."""
        jobs: list[Job[T]] = []
        broken: list[_Row] = []
        for row in rows:
            try:
                jobs.append(self._job(row))
            except PayloadError as error:  # its message names fields and kinds, never the payload
                _logger.error("job %s: %s; marking it failed", row["id"], error)
                last_error = _undecodable_last_error(UndecodableDocumentError("payload", error))
                broken.append({"id": row["id"], "last_error": last_error})
        return jobs, broken

    # -- deleting completed jobs --------------------------------------------------------------

    async def _expire_completed(self, now_us: int) -> None:
        """Delete completed jobs older than ``completed_ttl``, after a claim, at most once per interval.

        One fetch spends about ``_EXPIRY_BUDGET`` on it (at least one step); while a backlog
        remains (its last step was full), the next fetch goes on with it rather than waiting
        for the next interval.
        """
        if self._ttl is None or self._expiring or (self._next_expiry is not None and now_us < self._next_expiry):
            return
        self._expiring = True  # one fetch at a time: concurrent fetches would only compete for the connection
        try:
            deadline = time.monotonic() + _EXPIRY_BUDGET  # real work time, whatever the event loop's clock
            deleted, backlog = await self._delete_completed(now_us - self._ttl // _MICROSECOND, deadline=deadline)
        except Exception as error:  # housekeeping: the claim itself succeeded
            _logger.warning("could not delete expired completed jobs: %r; trying again later", error)
            deleted, backlog = 0, False
        finally:
            self._expiring = False
        if not backlog:
            self._next_expiry = now_us + min(self._ttl, _MAX_EXPIRY_INTERVAL) // _MICROSECOND
        if deleted:
            _logger.info("deleted %d completed job(s) older than %s", deleted, self._ttl)

    async def _delete_completed(self, cutoff_us: int, *, deadline: float | None) -> tuple[int, bool]:
        """Delete completed jobs processed before ``cutoff_us`` in steps of ``_PURGE_STEP`` rows.

        Each step is its own transaction and its own call on the connection, so every other
        call of the store, lease renewals included, gets its turn between two steps.

        :param deadline: stop after the step that ends past this ``time.monotonic()``
            moment; ``None``: go on until none is left
        :return: how many were deleted, and whether some may be left
        """
        deleted, step = 0, _PURGE_STEP
        while True:
            count = await self._run(lambda connection: _delete_completed_step(connection, cutoff_us, step))
            deleted += count
            if count < step:
                return deleted, False
            if deadline is not None and time.monotonic() >= deadline:
                return deleted, True

    # -- rows and jobs -------------------------------------------------------------------------

    def _row(self, job: Job[T]) -> _Row:
        """The job as a row. :raises PayloadError: the payload cannot be encoded"""
        payload = json_text(self._codec.encode(job.payload), f"a payload of type {type(job.payload).__name__}")
        return {"payload": payload, **{name: write(getattr(job, name)) for name, (write, _) in _FIELDS.items()}}

    def _job(self, row: _Row) -> Job[T]:
        """The job a row holds. :raises PayloadError: its payload does not decode"""
        fields = {name: read(row[name]) for name, (_, read) in _FIELDS.items()}
        return Job(payload=self._decode(row["payload"]), **fields)

    def _decode(self, text: str) -> T:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:  # its ``doc`` holds the whole payload: not chained
            where = f"{error.msg} at line {error.lineno} column {error.colno}"
        except (TypeError, ValueError) as error:
            where = type(error).__name__
        else:
            return self._codec.decode(data)
        raise PayloadError(f"a stored payload is not JSON: {where}")


# -- schedules, run in the worker thread ----------------------------------------------------

_SCHEDULES_TABLE = (
    "CREATE TABLE IF NOT EXISTS anysched_schedules (id TEXT PRIMARY KEY NOT NULL, document TEXT NOT NULL)"
)
"""Created at the first schedule written: a job database without schedules is left as it was."""


def _put_schedule(connection: sqlite3.Connection, schedule_id: str, document: str) -> None:
    with _write(connection):
        connection.execute(_SCHEDULES_TABLE)
        connection.execute(
            "INSERT OR REPLACE INTO anysched_schedules (id, document) VALUES (?, ?)", (schedule_id, document)
        )
        _bump_schedules_marker(connection)


def _remove_schedule(connection: sqlite3.Connection, schedule_id: str) -> bool:
    with _write(connection):
        if not _table_exists(connection, "anysched_schedules"):
            return False
        found = connection.execute("DELETE FROM anysched_schedules WHERE id = ?", (schedule_id,)).rowcount > 0
        if found:
            _bump_schedules_marker(connection)
        return found


def _bump_schedules_marker(connection: sqlite3.Connection) -> None:
    connection.execute(
        "INSERT INTO anysched_meta (key, value) VALUES ('schedules_marker', 1) "
        "ON CONFLICT (key) DO UPDATE SET value = value + 1"
    )


def _select_schedules(connection: sqlite3.Connection) -> list[str]:
    if not _table_exists(connection, "anysched_schedules"):
        return []
    return [row[0] for row in connection.execute("SELECT document FROM anysched_schedules ORDER BY id")]


def _schedules_marker(connection: sqlite3.Connection) -> int:
    row = connection.execute("SELECT value FROM anysched_meta WHERE key = 'schedules_marker'").fetchone()
    return 0 if row is None else int(row[0])


# -- opening a database ---------------------------------------------------------------------


def _open(path: str, busy_timeout: float, synchronous: Synchronous) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode with the current schema, or a clear error."""
    _create_private(path)
    try:
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself.
        connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise _translate(error, path, "cannot be opened") from error
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        _ensure_schema(connection, path)
    except BaseException as error:
        connection.close()
        if isinstance(error, sqlite3.Error):
            raise _translate(error, path, "cannot be used as a job store") from error
        raise
    return connection


def _create_private(path: str) -> None:
    """Create the database file readable and writable by its owner only, if it does not exist.

    Jobs' payloads may hold secrets. SQLite gives the ``-wal`` and ``-shm`` files it creates
    the database file's permissions, so they are private too. An existing file keeps its
    mode; a path that cannot be created is left for :func:`sqlite3.connect` to report.
    """
    if path in ("", ":memory:"):  # private in-memory or temporary databases: no file of ours
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return
    try:
        if hasattr(os, "fchmod"):  # POSIX: 0o600 whatever the umask (one that masks the owner's bits too)
            os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)


def _ensure_schema(connection: sqlite3.Connection, path: str) -> None:
    """Create the tables in a new database; check their version in an existing one."""
    with _write(connection):
        version = _schema_version(connection, path)
        if version is None:
            for statement in _SCHEMA:
                connection.execute(statement)
            _logger.info("created the anysched tables (schema version %d) in %s", SCHEMA_VERSION, path)
        elif version > SCHEMA_VERSION:
            raise SQLiteStoreError(
                f"the job database {path!r} has schema version {version}, from a newer anysched; "
                f"this one knows up to version {SCHEMA_VERSION}: upgrade anysched"
            )
        elif version < SCHEMA_VERSION:  # pragma: no cover -- no older version exists yet
            raise SQLiteStoreError(f"the job database {path!r} has unknown schema version {version}")


def _schema_version(connection: sqlite3.Connection, path: str) -> int | None:
    if not _table_exists(connection, "anysched_meta"):
        if _table_exists(connection, "anysched_jobs"):
            raise SQLiteStoreError(f"{path!r} has an anysched_jobs table that anysched did not create")
        return None
    row = connection.execute("SELECT value FROM anysched_meta WHERE key = 'schema_version'").fetchone()
    if row is None or type(row[0]) is not int:
        raise SQLiteStoreError(f"the job database {path!r} has no valid schema version in anysched_meta")
    return int(row[0])


def _table_exists(connection: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return connection.execute(query, (name,)).fetchone() is not None


# -- statements, run in the worker thread -----------------------------------------------------


@contextmanager
def _write(connection: sqlite3.Connection) -> Generator[None, None, None]:
    """A write transaction that holds SQLite's write lock from its first statement.

    Taking the lock up front (not at the first write) makes SQLite wait for it with the
    busy timeout, where a read transaction upgraded later would fail at once in WAL mode.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _records(cursor: sqlite3.Cursor) -> list[_Row]:
    """The cursor's rows, each a dict keyed by column name."""
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def _claim_returning(connection: sqlite3.Connection, params: dict[str, int]) -> list[_Row]:
    """Lease the due jobs in one statement (SQLite >= 3.35); each gets its own random lease token."""
    return _records(
        connection.execute(
            "UPDATE anysched_jobs SET visible_after = :visible, lease = lower(hex(randomblob(16))),"
            f" attempts = attempts + 1 WHERE rowid IN (SELECT rowid {_CLAIMABLE}) RETURNING {_COLUMNS}",
            params,
        )
    )


def _claim_select(connection: sqlite3.Connection, params: dict[str, int]) -> list[_Row]:
    """The same claim for SQLite < 3.35: select, then update; atomic, as the write lock is held."""
    selected = _records(connection.execute(f"SELECT {_COLUMNS} {_CLAIMABLE}", params))
    claimed = [
        {**row, "visible_after": params["visible"], "attempts": row["attempts"] + 1, "lease": new_lease_token()}
        for row in selected
    ]
    connection.executemany(
        "UPDATE anysched_jobs SET visible_after = :visible_after, attempts = :attempts, lease = :lease WHERE id = :id",
        claimed,
    )
    return claimed


def _fail_undecodable(connection: sqlite3.Connection, broken: list[_Row], now_us: int) -> None:
    connection.executemany(
        "UPDATE anysched_jobs SET status = 'failed', processed_at = :now, visible_after = NULL,"
        " last_error = :last_error WHERE id = :id",
        [{**failure, "now": now_us} for failure in broken],
    )


def _release(connection: sqlite3.Connection, jobs: Sequence[Job[Any]]) -> None:
    """Make claimed jobs visible again, with their attempt back, if their leases still hold."""
    with _write(connection):
        connection.executemany(
            f"UPDATE anysched_jobs SET visible_after = NULL, attempts = attempts - 1 WHERE {_LEASE_HELD}",
            [{"id": job.id, "lease": job.lease} for job in jobs],
        )


def _update(connection: sqlite3.Connection, row: _Row) -> None:
    with _write(connection):
        if connection.execute(_UPDATE, row).rowcount == 0:
            exists = connection.execute("SELECT 1 FROM anysched_jobs WHERE id = :id", row).fetchone()
            raise _update_refused(row["id"], exists=exists is not None)


def _insert(connection: sqlite3.Connection, rows: list[_Row]) -> None:
    with _write(connection):
        for row in rows:
            try:
                connection.execute(_INSERT, row)
            except sqlite3.IntegrityError as error:
                raise DuplicateJobError(row["id"]) from error


def _next_due(connection: sqlite3.Connection) -> int | None:
    unleased = connection.execute(
        "SELECT process_after FROM anysched_jobs WHERE status = 'pending' AND visible_after IS NULL"
        " ORDER BY process_after LIMIT 1"
    ).fetchone()
    leased = connection.execute(
        "SELECT MIN(MAX(process_after, visible_after)) FROM anysched_jobs"
        " WHERE status = 'pending' AND visible_after IS NOT NULL"
    ).fetchone()
    moments = [int(value) for value in (unleased and unleased[0], leased[0]) if value is not None]
    return min(moments, default=None)


class _EarliestClaimable:
    """Whether a committed change may have made a job claimable: the earliest moment a pending
    job can be claimed is now (or past), or earlier than when it was last looked at."""

    def __init__(self) -> None:
        self._earliest: int | None = None

    def __call__(self, connection: sqlite3.Connection) -> bool:
        before, self._earliest = self._earliest, _next_due(connection)
        if self._earliest is None:
            return False
        return self._earliest <= _to_us(utc_now()) or before is None or self._earliest < before


def _select_one(connection: sqlite3.Connection, job_id: str) -> _Row | None:
    rows = _records(connection.execute(f"SELECT {_COLUMNS} FROM anysched_jobs WHERE id = ?", (job_id,)))
    return rows[0] if rows else None


def _select_page(connection: sqlite3.Connection, status: JobStatus | None, limit: int, after: str | None) -> list[_Row]:
    """Up to ``limit`` rows by id (the primary key's order), of ``status`` if given, after id ``after``."""
    conditions = [*([] if status is None else ["status = :status"]), *([] if after is None else ["id > :after"])]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    params = {"status": None if status is None else status.value, "after": after, "limit": limit}
    return _records(connection.execute(f"SELECT {_COLUMNS} FROM anysched_jobs{where} ORDER BY id LIMIT :limit", params))


def _count(connection: sqlite3.Connection, status: JobStatus | None) -> int:
    if status is None:
        return int(connection.execute("SELECT COUNT(*) FROM anysched_jobs").fetchone()[0])
    query = "SELECT COUNT(*) FROM anysched_jobs WHERE status = ?"
    return int(connection.execute(query, (status.value,)).fetchone()[0])


def _delete_completed_step(connection: sqlite3.Connection, cutoff_us: int, limit: int) -> int:
    """Delete up to ``limit`` completed jobs processed before ``cutoff_us``, in one transaction."""
    with _write(connection):
        return connection.execute(
            "DELETE FROM anysched_jobs WHERE rowid IN (SELECT rowid FROM anysched_jobs"
            " WHERE status = 'completed' AND processed_at < ? LIMIT ?)",
            (cutoff_us, limit),
        ).rowcount


# -- errors and conversions ---------------------------------------------------------------------


def _translate(error: sqlite3.Error, path: str, what: str) -> Exception:
    """A lock held by another connection is transient; every other SQLite error is permanent."""
    if _is_busy(error):
        return TransientStoreError(f"the job database {path!r} is busy (locked by another connection): {error}")
    return SQLiteStoreError(f"the job database {path!r} {what}: {error}")


def _is_busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)  # Python >= 3.11
    if isinstance(code, int):
        return code & 0xFF in _TRANSIENT_CODES
    message = str(error).lower()
    return "locked" in message or "busy" in message
