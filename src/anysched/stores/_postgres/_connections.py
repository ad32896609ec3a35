"""Connections for the PostgreSQL store: psycopg's async pool on asyncio, its sync pool in worker
threads on trio, and one way to run a store operation on either.

A store operation is written once, as a generator that yields statements and receives their
results (:data:`Op`); :func:`drive` and :func:`drive_async` run it on a sync or an async
connection. So no query is written twice for the two kinds of connection.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Awaitable, Callable, Generator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar, cast

import anyio
import anyio.to_thread
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed

from ..._exceptions import AnyschedError, DuplicateJobError, PayloadError, TransientStoreError

R = TypeVar("R")
P = TypeVar("P", "AsyncConnectionPool[Any]", "ConnectionPool[Any]")
_logger: logging.Logger = logging.getLogger("anysched")
_DUPLICATE_KEY = re.compile(r"Key \(id\)=\((.*)\) already exists")
_INVALID_OPTION = re.compile(r"\binvalid \w+ value")

Row: TypeAlias = "dict[str, Any]"


@dataclass(frozen=True)
class Statement:
    query: bytes  # rendered once per store (``Statements``)
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Result:
    rows: list[Row]
    rowcount: int


Op: TypeAlias = "Generator[Statement, Result, R]"
"""A store operation: yields statements, receives each one's result, returns its value."""


class PostgresStoreError(AnyschedError, RuntimeError):
    """The database cannot serve as a job store: it refused the credentials, does not exist, holds
    tables of a newer anysched, or refused a statement for a reason retrying will not fix.

    Permanent: the scheduler does not retry it. Its message never holds the connection string.
    """


# -- errors ------------------------------------------------------------------------------------

_PERMANENT_AT_CONNECT = (
    ("does not exist", "the database or the role does not exist"),
    ("authentication failed", "the credentials were refused"),
    ("no pg_hba.conf entry", "the server does not accept this host, user and database (pg_hba.conf)"),
    ("password", "the credentials were refused"),
    ("permission denied", "the role may not connect to the database"),
    ("not permitted to log in", "the role may not log in"),
)


def describe(error: psycopg.Error) -> str:
    """The error's class and SQLSTATE, never its text: that can name hosts, users and values."""
    return type(error).__name__ + ("" if error.sqlstate is None else f" (SQLSTATE {error.sqlstate})")


def translate(error: psycopg.Error, operation: str) -> Exception:
    """A transient error (the connection lost, the server shutting down or starting, a
    serialization failure, a pool timeout) as :class:`~anysched.TransientStoreError`; the rest
    as :class:`PostgresStoreError`. Neither quotes the driver's message; raise it ``from None``."""
    if isinstance(error, PoolClosed):  # not open yet, or closed: waiting will not open it
        return PostgresStoreError(
            f"PostgreSQL {operation} failed: its connection pool is not open (open a pool you give)"
        )
    if isinstance(error, psycopg.OperationalError):
        reason = _refusal_at_connect(error)
        if reason is not None:
            return PostgresStoreError(f"cannot connect to PostgreSQL for {operation}: {reason}")
        return TransientStoreError(f"PostgreSQL {operation} failed: {describe(error)}")
    if isinstance(error, psycopg.InterfaceError) and "closed" in str(error):
        return TransientStoreError(f"PostgreSQL {operation} failed: {describe(error)} (connection closed)")
    return PostgresStoreError(f"PostgreSQL {operation} failed: {describe(error)}")


def _refusal_at_connect(error: psycopg.OperationalError) -> str | None:
    """Why the server (or libpq, reading the connection string) refused a new connection for good
    (libpq gives no SQLSTATE there), or ``None``."""
    if error.sqlstate is not None:
        return None
    text = str(error)
    if "FATAL" not in text:
        # libpq checks option values before any I/O ("invalid sslmode value"): retrying cannot help.
        return "the connection string has an invalid option value" if _INVALID_OPTION.search(text) else None
    return next((reason for clue, reason in _PERMANENT_AT_CONNECT if clue in text), None)


# -- running operations ------------------------------------------------------------------------


def drive(connection: psycopg.Connection[Any], op: Op[R], *, atomic: bool) -> R:
    """Run ``op`` on a sync connection; in one transaction when ``atomic``."""
    transaction: AbstractContextManager[Any] = connection.transaction() if atomic else nullcontext()
    with transaction, connection.cursor(row_factory=dict_row) as cursor:
        statement = next(op)
        while True:
            cursor.execute(statement.query, statement.params)
            rows = cursor.fetchall() if cursor.description is not None else []
            try:
                statement = op.send(Result(rows, cursor.rowcount))
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


async def drive_async(connection: psycopg.AsyncConnection[Any], op: Op[R], *, atomic: bool) -> R:
    """Run ``op`` on an async connection; in one transaction when ``atomic``."""
    transaction: AbstractAsyncContextManager[Any] = connection.transaction() if atomic else nullcontext()
    async with transaction, connection.cursor(row_factory=dict_row) as cursor:
        statement = next(op)
        while True:
            await cursor.execute(statement.query, statement.params)
            rows = await cursor.fetchall() if cursor.description is not None else []
            try:
                statement = op.send(Result(rows, cursor.rowcount))
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


async def settled(call: Callable[[], Awaitable[R]], *, grace: float) -> R:
    """``await call()``; if the caller is cancelled meanwhile, keep waiting (shielded) up to ``grace``
    seconds for the server's answer before the cancellation goes on.

    For a statement that leases rows: once sent, it may commit whether or not anyone waits for its
    reply (the server reads it before it notices the client left). Waiting for the answer lets the
    caller's clean-up find and undo what it did; giving up at once would let it commit afterwards.
    """
    outcome: list[R] = []
    failure: list[Exception] = []
    done = anyio.Event()
    shield = anyio.CancelScope(shield=True)

    async def run() -> None:
        with shield:  # its own deadline (set on the caller's cancellation) is all that can stop it
            try:
                outcome.append(await call())
            except Exception as error:
                failure.append(error)
            finally:
                done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            await done.wait()
        except BaseException:  # the caller's cancellation: the statement gets `grace` to answer
            shield.deadline = anyio.current_time() + grace
            with anyio.CancelScope(shield=True):
                await done.wait()
            raise
    if failure:
        raise failure[0]
    return outcome[0]


def in_transaction(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return connection.info.transaction_status == TransactionStatus.INTRANS


def running_on_asyncio() -> bool:
    # anyio before 4.11 has no public "which backend is this"; its cancellation class tells.
    return anyio.get_cancelled_exc_class().__module__.partition(".")[0] == "asyncio"


class Connections(Protocol):
    """Where the store's operations run: one connection of a pool per operation."""

    @property
    def conninfo(self) -> str: ...
    @property
    def connect_options(self) -> dict[str, Any]: ...
    async def run(self, make_op: Callable[[], Op[R]], *, atomic: bool = False) -> R: ...
    async def open(self) -> None: ...
    async def close(self) -> None: ...


class _Pool(Generic[P]):
    """What both runners read off their pool the same way: where the listener connects, and how."""

    def __init__(self, pool: P, *, owned: bool) -> None:
        self._pool: P = pool
        self._owned = owned  # made by the store, so opened and closed by it

    @property
    def conninfo(self) -> str:
        return _plain_conninfo(self._pool.conninfo)

    @property
    def connect_options(self) -> dict[str, Any]:
        return _plain_options(self._pool.kwargs)


class AsyncPoolConnections(_Pool["AsyncConnectionPool[Any]"]):
    """psycopg's ``AsyncConnectionPool``: asyncio only."""

    async def run(self, make_op: Callable[[], Op[R]], *, atomic: bool = False) -> R:
        async with self._pool.connection() as connection:
            return await drive_async(connection, make_op(), atomic=atomic)

    async def open(self) -> None:
        if self._owned:
            await self._pool.open(wait=False)

    async def close(self) -> None:
        if self._owned:
            await self._pool.close()


class ThreadedPoolConnections(_Pool["ConnectionPool[Any]"]):
    """psycopg's sync ``ConnectionPool``, each operation in a worker thread: any anyio backend.

    A cancelled call abandons its thread (as a cancelled async call abandons its query), so a
    stop stays bounded when the server hangs: the statement may still commit, which fencing
    allows for. A claim is awaited a little longer (:func:`settled`), so that the hand-back by
    token finds what it won; one that answers later still waits for its leases to expire.
    """

    async def run(self, make_op: Callable[[], Op[R]], *, atomic: bool = False) -> R:
        return await anyio.to_thread.run_sync(self._run, make_op, atomic, abandon_on_cancel=True)

    def _run(self, make_op: Callable[[], Op[R]], atomic: bool) -> R:
        with self._pool.connection() as connection:
            return drive(connection, make_op(), atomic=atomic)

    async def open(self) -> None:
        if self._owned:
            await anyio.to_thread.run_sync(lambda: self._pool.open(wait=False))

    async def close(self) -> None:
        if self._owned:
            await anyio.to_thread.run_sync(self._pool.close)


def _plain_conninfo(conninfo: object) -> str:
    """A pool's conninfo, for the listener's connection of its own; a pool that computes it per connection has none."""
    if not isinstance(conninfo, str):
        raise PostgresStoreError(
            "wake-ups need a pool whose conninfo is a string (this one computes it per connection): "
            "pass wake_ups=False to PostgresStore"
        )
    return conninfo


def _plain_options(options: object) -> dict[str, Any]:
    return dict(cast("dict[str, Any]", options)) if isinstance(options, dict) else {}


def connections_for(pool: object) -> Connections:
    """The runner for a pool the user gave, checked against the running backend."""
    if isinstance(pool, ConnectionPool):
        return ThreadedPoolConnections(pool, owned=False)  # pyright: ignore[reportUnknownArgumentType]
    if isinstance(pool, AsyncConnectionPool):
        if not running_on_asyncio():
            raise RuntimeError(
                "PostgresStore got a psycopg_pool.AsyncConnectionPool, which runs only on asyncio; on trio, "
                "give it a psycopg_pool.ConnectionPool (its calls then run in worker threads) or a conninfo string"
            )
        return AsyncPoolConnections(pool, owned=False)  # pyright: ignore[reportUnknownArgumentType]
    raise TypeError(
        "conninfo must be a libpq connection string or URL, a psycopg_pool.ConnectionPool or an "
        f"AsyncConnectionPool, not {type(pool).__name__}"
    )


def own_pool(conninfo: str, max_size: int) -> Connections:
    """A pool of our own for ``conninfo``: async on asyncio, sync in threads elsewhere (trio)."""
    options: dict[str, Any] = {"autocommit": True}
    if running_on_asyncio():
        return AsyncPoolConnections(
            AsyncConnectionPool(conninfo, min_size=1, max_size=max_size, kwargs=options, open=False, name="anysched"),
            owned=True,
        )
    return ThreadedPoolConnections(
        ConnectionPool(conninfo, min_size=1, max_size=max_size, kwargs=options, open=False, name="anysched"),
        owned=True,
    )


async def connect_once(
    conninfo: str, options: Mapping[str, Any]
) -> psycopg.Connection[Any] | psycopg.AsyncConnection[Any]:
    """One autocommit connection of its own (the first check at open, a listener), on the backend's driver."""
    settings: dict[str, Any] = {**options, "autocommit": True}
    if running_on_asyncio():
        return await psycopg.AsyncConnection.connect(conninfo, **settings)
    return await open_in_thread(lambda: psycopg.Connection.connect(conninfo, **settings))


async def open_in_thread(
    open_: Callable[[], psycopg.Connection[Any]], *, limiter: anyio.CapacityLimiter | None = None
) -> psycopg.Connection[Any]:
    """``open_()`` (a connection) in a worker thread that a cancellation abandons: a server that hangs
    must not hold up a scheduler's stop for libpq's connect timeout. The thread closes what it opens
    too late."""
    lock = threading.Lock()
    abandoned = False
    opened: list[psycopg.Connection[Any]] = []

    def work() -> psycopg.Connection[Any]:
        connection = open_()
        with lock:
            if not abandoned:
                opened.append(connection)
                return connection
        connection.close()  # nobody awaits it any more
        return connection

    try:
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=limiter)
    except BaseException:
        with lock:
            abandoned = True
        for connection in opened:  # opened, but the caller was cancelled before it received it
            connection.close()
        raise


async def run_once(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], op: Op[R], *, atomic: bool) -> R:
    """Run ``op`` on a connection the caller holds: awaited if async, in a worker thread if sync."""
    if isinstance(connection, psycopg.AsyncConnection):
        if not running_on_asyncio():
            raise RuntimeError("a psycopg.AsyncConnection runs only on asyncio; on trio, use a psycopg.Connection")
        return await drive_async(connection, op, atomic=atomic)
    return await anyio.to_thread.run_sync(lambda: drive(connection, op, atomic=atomic))


async def close_once(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if isinstance(connection, psycopg.AsyncConnection):
        await connection.close()
    else:
        await anyio.to_thread.run_sync(connection.close)


# -- small operations and the store's error boundary -------------------------------------------


def rows_of(statement: Statement) -> Op[list[Row]]:
    return (yield statement).rows


def rowcount_of(statement: Statement) -> Op[int]:
    return (yield statement).rowcount


class translated:
    """Translate psycopg's errors at the store's boundary: a duplicate id, a payload the server
    refuses, transient and permanent errors; none with the driver's text (it can quote values,
    hosts and users) and none chained to it."""

    def __init__(self, operation: str) -> None:
        self._operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if not isinstance(error, psycopg.Error):
            return
        if isinstance(error, psycopg.errors.UniqueViolation):
            match = _DUPLICATE_KEY.search(error.diag.message_detail or "")
            raise DuplicateJobError(match.group(1) if match else "(one of the jobs)") from None
        if isinstance(error, psycopg.DataError):
            raise PayloadError(f"PostgreSQL refused a job's values ({describe(error)})") from None
        raise translate(error, self._operation) from None
