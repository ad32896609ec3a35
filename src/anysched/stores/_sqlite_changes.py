"""SQLite's wake-ups: a thread that watches a database file for other connections' commits.

SQLite has no notifications across processes, but ``PRAGMA data_version`` is a cheap check (a
few microseconds, no lock, no read of the tables): its value on one connection changes when any
other connection commits a change to the file. A thread of its own polls it on a connection of
its own, and asks a caller's predicate (on that connection) whether the change is worth a wake-up.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from functools import partial

import anyio
import anyio.from_thread
import anyio.to_thread

from .._wake_ups import beside


@asynccontextmanager
async def watch_commits(
    connect: Callable[[], sqlite3.Connection],
    interval: float,
    worth_waking: Callable[[sqlite3.Connection], bool],
    wake: Callable[[], None],
) -> AsyncGenerator[None]:
    """Call ``wake`` (on the event loop) when another connection commits and ``worth_waking`` says so.

    The block ends within about ``interval`` of being cancelled: the thread checks a stop flag
    between polls. An error in the thread (the file went away, say) raises out of the block.

    :param connect: opens the watching connection (in a worker thread; its errors raise on entering)
    :param interval: seconds between two checks
    :param worth_waking: asked, in the thread, after each change another connection committed
    :param wake: the scheduler's wake-up
    """
    connection, version = await anyio.to_thread.run_sync(partial(_start, connect, worth_waking))
    stop = threading.Event()
    poll = partial(_poll, connection, version, interval, stop, worth_waking, wake)
    # A limiter of its own: the thread lives as long as the block, and must not hold one of the
    # default limiter's tokens that the store's own calls share.
    try:
        async with beside(partial(anyio.to_thread.run_sync, poll, limiter=anyio.CapacityLimiter(1))):
            try:
                yield
            finally:
                stop.set()  # before the thread is waited for: it ends at its next check
    finally:
        connection.close()


def _start(
    connect: Callable[[], sqlite3.Connection], worth_waking: Callable[[sqlite3.Connection], bool]
) -> tuple[sqlite3.Connection, int]:
    """The watching connection and the version every later one is compared with, taken before
    the block is entered: a commit made once it is entered is never missed."""
    connection = connect()
    try:
        version = _data_version(connection)
        worth_waking(connection)  # let it learn the state it compares later changes with
    except BaseException:
        connection.close()
        raise
    return connection, version


def _poll(
    connection: sqlite3.Connection,
    version: int,
    interval: float,
    stop: threading.Event,
    worth_waking: Callable[[sqlite3.Connection], bool],
    wake: Callable[[], None],
) -> None:
    while not stop.wait(interval):
        now = _data_version(connection)
        if now != version:
            version = now
            if worth_waking(connection) and not stop.is_set():
                anyio.from_thread.run_sync(wake)


def _data_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA data_version").fetchone()[0])
