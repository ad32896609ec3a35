"""Wake-ups over LISTEN/NOTIFY: one listening connection per ``wake_ups`` block.

Inserts, releases and retries ``NOTIFY`` the table's channel in their own transaction, so a
notification arrives only for a change that committed. On asyncio the listener awaits
psycopg's async ``notifies()``; elsewhere (trio) a worker thread waits on the sync
``notifies(timeout=…)`` in short rounds, so it notices within one round that the block ended.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import psycopg
from psycopg import sql

from ..._wake_ups import beside
from ._connections import close_once, open_in_thread, running_on_asyncio, translate

_logger: logging.Logger = logging.getLogger("anysched")

_ROUND = 0.25
"""Seconds a listening thread waits for a notification before it checks whether to stop."""


@asynccontextmanager
async def listening(
    conninfo: str, options: Mapping[str, Any], channel: str, wake: Callable[[], None]
) -> AsyncGenerator[None, None]:
    """Call ``wake()`` on the event loop's thread for every notification on ``channel`` until the block ends.

    :raises TransientStoreError: the listening connection could not be opened (or failed later)
    """
    listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
    # A limiter of its own: the listening thread lives as long as the block and must not hold one
    # of the default limiter's tokens, which the store's calls (and the application's) share.
    limiter = anyio.CapacityLimiter(1)
    try:
        if running_on_asyncio():
            connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] = await _listening_async(
                conninfo, options, listen
            )
        else:
            connection = await open_in_thread(
                functools.partial(_connect_and_listen, conninfo, options, listen), limiter=limiter
            )
    except psycopg.Error as error:
        raise translate(error, "LISTEN") from None
    try:
        stop = threading.Event()
        if isinstance(connection, psycopg.AsyncConnection):
            forward: Callable[[], Awaitable[None]] = functools.partial(_listen_async, connection, wake)
        else:
            forward = functools.partial(_listen_in_thread, connection, wake, stop, limiter)
        # beside: a listener that fails raises out of the block as itself (TransientStoreError), not in a group.
        async with beside(forward):
            try:
                yield
            finally:
                stop.set()  # the thread sees it within a round; a cancellation waits for that
    finally:
        with anyio.CancelScope(shield=True):
            await close_once(connection)


async def _listening_async(
    conninfo: str, options: Mapping[str, Any], listen: sql.Composed
) -> psycopg.AsyncConnection[Any]:
    settings: dict[str, Any] = {**options, "autocommit": True}
    connection = await psycopg.AsyncConnection.connect(conninfo, **settings)
    try:
        await connection.execute(listen)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await connection.close()
        raise
    return connection


def _connect_and_listen(conninfo: str, options: Mapping[str, Any], listen: sql.Composed) -> psycopg.Connection[Any]:
    settings: dict[str, Any] = {**options, "autocommit": True}
    connection = psycopg.Connection.connect(conninfo, **settings)
    try:
        connection.execute(listen)
    except BaseException:
        connection.close()
        raise
    return connection


async def _listen_async(connection: psycopg.AsyncConnection[Any], wake: Callable[[], None]) -> None:
    try:
        async for _ in connection.notifies():
            wake()
    except psycopg.Error as error:
        raise translate(error, "LISTEN") from None


async def _listen_in_thread(
    connection: psycopg.Connection[Any], wake: Callable[[], None], stop: threading.Event, limiter: anyio.CapacityLimiter
) -> None:
    def listen() -> None:
        while not stop.is_set():
            for _ in connection.notifies(timeout=_ROUND, stop_after=1):
                anyio.from_thread.run_sync(wake)

    try:
        # Not abandoned on cancel: `stop` ends the thread within a round, before the connection closes.
        await anyio.to_thread.run_sync(listen, limiter=limiter)
    except psycopg.Error as error:
        raise translate(error, "LISTEN") from None
