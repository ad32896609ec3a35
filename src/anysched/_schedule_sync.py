"""Following a store's schedules: the ticker ticks what the store holds, read again when it changes.

At start the scheduler's declared schedules are put into the store (each replaces the stored one
with its id); from then on the store is the truth, so any process can add, change, pause or
remove a schedule and every scheduler on the store follows within ``refresh`` seconds. Reading
the store's change marker is one cheap call per refresh; the schedules are read only when it moved.
"""

from __future__ import annotations

import functools
import logging
from typing import Generic, TypeVar

import anyio

from ._exceptions import PayloadError
from ._retry import Backoff, call_store
from ._schedule import Schedule
from ._store import StoresSchedules
from ._ticker import Ticker

T = TypeVar("T")

logger = logging.getLogger("anysched")


class ScheduleSync(Generic[T]):
    """Puts ``declared`` into ``store``, then keeps ``ticker`` on the store's schedules.

    :param refresh: seconds between looks at the store's change marker
    :param backoff: the backoff between retries of a failed put at start
    """

    def __init__(
        self,
        store: StoresSchedules[T],
        declared: tuple[Schedule[T], ...],
        ticker: Ticker[T],
        *,
        refresh: float,
        backoff: Backoff,
    ) -> None:
        self._store = store
        self._declared = declared
        self._ticker = ticker
        self._refresh = refresh
        self._backoff = backoff

    async def run(self) -> None:
        """Put the declared schedules, then follow the store until cancelled."""
        for schedule in self._declared:
            put = functools.partial(self._store.put_schedule, schedule)
            try:
                await call_store("put_schedule", None, put, self._backoff)
            except Exception as error:  # permanent (a payload the store cannot encode): skip it, not all
                # A PayloadError's text names no payload value; another error's might: its type only.
                detail = f": {error}" if isinstance(error, PayloadError) else ""
                logger.error(
                    "schedule %s: the store cannot keep it, so it is not ticked: %s%s",
                    schedule.id,
                    type(error).__name__,
                    detail,
                )
        marker: int | None = None
        while True:
            marker = await self._follow(marker)
            await anyio.sleep(self._refresh)

    async def _follow(self, marker: int | None) -> int | None:
        """Read the schedules again if the store's marker moved; return the marker they match."""
        try:
            current = await self._store.schedules_marker()
            if current == marker:
                return marker
            schedules = await self._store.list_schedules()
        except Exception as error:  # keep ticking what we have; look again at the next refresh
            logger.warning("could not read the stored schedules (ticking the ones read before): %r", error)
            return marker
        self._ticker.replace_schedules(schedules)
        logger.debug("ticking %d stored schedule(s)", len(schedules))
        return current
