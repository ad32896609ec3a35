"""The wake-up listener: while the scheduler runs, the store tells its fetcher when another process
may have made a job claimable (:class:`~anysched.SendsWakeUps`), so an idle fetcher claims at once
instead of sleeping out ``fetch_interval``.

Wake-ups are hints. A listener that cannot start or fails later is logged (once per kind of
failure), the fetcher polls as it would without one, and the listener tries again after the
store backoff, for as long as the scheduler runs. It never stops the scheduler, and the
scheduler cancels it first when it stops, so it never delays a shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from ._retry import Backoff
from ._store import SendsWakeUps
from ._time import to_seconds

logger = logging.getLogger("anysched")


def wake_ups_of(store: object, *, enabled: bool) -> SendsWakeUps | None:
    """The store, if it has the wake-up capability and the scheduler wants it."""
    return store if enabled and isinstance(store, SendsWakeUps) else None


class WakeUpListener:
    """Listens to a store's wake-ups for the scheduler's life.

    :param store: the store that sends them
    :param wake: called for each one (the fetcher's ``wake``)
    :param backoff: the delay before listening again after a failure (the store backoff)
    """

    def __init__(self, store: SendsWakeUps, wake: Callable[[], None], backoff: Backoff) -> None:
        self._store = store
        self._wake = wake
        self._backoff = backoff
        self._scope = anyio.CancelScope()
        self._logged: set[type[BaseException]] = set()
        self.listening = False
        """Whether the store's listener is up right now."""
        self.failures = 0
        """How many times entering or listening failed, in all."""

    async def run(self) -> None:
        """Listen, and listen again after each failure, until :meth:`stop`."""
        failed_in_a_row = 0
        with self._scope:
            while True:
                listened_since = await self._listen_once()
                # A listener that held for a while failed for a new reason: start the backoff over.
                if listened_since is not None and anyio.current_time() - listened_since >= self._long_enough():
                    failed_in_a_row = 0
                failed_in_a_row += 1
                await anyio.sleep(self._backoff.delay(failed_in_a_row))

    def stop(self) -> None:
        """Stop listening at once (the store's block ends promptly when cancelled)."""
        self._scope.cancel()

    async def _listen_once(self) -> float | None:
        """Listen until the store's listener fails; return when it started listening, if it did."""
        started: float | None = None
        try:
            async with self._store.wake_ups(self._wake):
                started = anyio.current_time()
                self.listening = True
                logger.debug("listening for the store's wake-ups")
                await anyio.sleep_forever()
        except Exception as error:  # a hint source: whatever it raises, the fetcher polls meanwhile
            self._failed(error, entering=started is None)
        finally:
            self.listening = False
        return started

    def _failed(self, error: Exception, *, entering: bool) -> None:
        self.failures += 1
        # The error's type only: a driver's message may name hosts, users or connection strings.
        level = logging.DEBUG if type(error) in self._logged else logging.WARNING
        self._logged.add(type(error))
        logger.log(
            level,
            "the store's wake-ups %s (%s); the scheduler polls every fetch_interval and listens again later",
            "could not start" if entering else "stopped",
            type(error).__name__,
        )

    def _long_enough(self) -> float:
        return to_seconds("store_backoff.maximum", self._backoff.maximum)


@asynccontextmanager
async def beside(listen: Callable[[], Awaitable[None]]) -> AsyncGenerator[None]:
    """Run ``listen`` in a task for the length of the block: for a store's ``wake_ups``.

    If it fails, the block is cancelled and the error raises out of it as itself, not inside an
    exception group, so the scheduler's log can name it. When the block ends, the task is cancelled.
    """
    failure: list[Exception] = []

    async def guarded() -> None:
        try:
            await listen()
        except Exception as error:
            failure.append(error)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(guarded)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
