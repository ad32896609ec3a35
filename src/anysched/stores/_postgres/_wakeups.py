"""Wake-ups over LISTEN/NOTIFY: one listening connection per ``wake_ups`` block.

Inserts, releases and retries ``NOTIFY`` the table's channel in their own transaction, so a
notification arrives only for a change that committed. On asyncio the listener awaits
psycopg's async ``notifies()``; elsewhere (trio) a worker thread waits on the sync
``notifies(timeout=…)`` in short rounds, so it notices within one round that the block ended.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import psycopg
from psycopg import sql

from ._connections import close_once, connect_once, translate

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
    try:
        connection = await connect_once(conninfo, options)
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
        if isinstance(connection, psycopg.AsyncConnection):
            await connection.execute(listen)
        else:
            await anyio.to_thread.run_sync(connection.execute, listen)
    except psycopg.Error as error:
        raise translate(error, "LISTEN") from None
    try:
        stop = threading.Event()
        async with anyio.create_task_group() as tg:
            if isinstance(connection, psycopg.AsyncConnection):
                tg.start_soon(_listen_async, connection, wake, name="anysched-postgres-listener")
            else:
                tg.start_soon(_listen_in_thread, connection, wake, stop, name="anysched-postgres-listener")
            try:
                yield
            finally:
                stop.set()  # the thread sees it within a round; a cancellation waits for that
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await close_once(connection)


async def _listen_async(connection: psycopg.AsyncConnection[Any], wake: Callable[[], None]) -> None:
    try:
        async for _ in connection.notifies():
            wake()
    except psycopg.Error as error:
        raise translate(error, "LISTEN") from None


async def _listen_in_thread(
    connection: psycopg.Connection[Any], wake: Callable[[], None], stop: threading.Event
) -> None:
    def listen() -> None:
        while not stop.is_set():
            for _ in connection.notifies(timeout=_ROUND, stop_after=1):
                anyio.from_thread.run_sync(wake)

    try:
        # Not abandoned on cancel: `stop` ends the thread within a round, before the connection closes.
        await anyio.to_thread.run_sync(listen)
    except psycopg.Error as error:
        raise translate(error, "LISTEN") from None
