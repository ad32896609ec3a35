"""The chaos run's clocks: the event loop's time as a wall clock, one instance's stepped clock, and a
heartbeat that measures how late the event loop runs."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import anyio

EPOCH = datetime(2030, 1, 1, tzinfo=timezone.utc)


def chaos_clock() -> datetime:
    """The event loop's clock as a UTC datetime, in whole milliseconds (as BSON dates keep them).

    Every scheduler and the store wrapper use it, so lease arithmetic follows trio's mock
    clock in tests, and a Mongo store compares exactly the instants the checker compares.
    """
    return EPOCH + timedelta(milliseconds=math.floor(anyio.current_time() * 1000))


STEPPED_SLOT = 0
"""The instance whose wall clock the controller steps."""


class SteppedClock:
    """The chaos clock plus an offset the controller steps (one scheduler instance's wall clock)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.steps: list[tuple[float, float]] = []
        """(event-loop time, new offset) of every step."""

    def __call__(self) -> datetime:
        return chaos_clock() + timedelta(seconds=self.offset)

    def step(self, offset: float) -> None:
        if offset != self.offset:
            self.offset = offset
            self.steps.append((anyio.current_time(), offset))


LAG_PERIOD = 0.01
"""The lag monitor's heartbeat: it sleeps this long, then records how late it woke."""

LAG_EXCUSE = 0.25
"""Lag that excuses a clock step's lost-lease cancellations: one stall of the event loop (a wake-up
this fraction of the visibility timeout late) within a lease either side of the step. Not the sum
of small delays: a loop merely busy (under coverage, every wake-up a few ms late) keeps its leases."""


class LagMonitor:
    """How late the event loop runs: a heartbeat sleeps ``LAG_PERIOD`` on the event loop's clock
    and records how much later than asked it woke (a loaded machine, coverage, a busy loop).

    On trio's mock clock there is no lag (every wake-up is on time), so every rule it excuses is
    enforced in full there.
    """

    def __init__(self) -> None:
        self.late: list[tuple[float, float]] = []
        """(event-loop time of the wake-up, seconds late) of every wake-up later than asked."""
        self.ticks = 0
        self._scope = anyio.CancelScope()

    async def run(self) -> None:
        with self._scope:
            while True:
                asked = anyio.current_time() + LAG_PERIOD
                await anyio.sleep(LAG_PERIOD)
                self.ticks += 1
                late = anyio.current_time() - asked
                if late > 0:
                    self.late.append((anyio.current_time(), late))

    def stop(self) -> None:
        self._scope.cancel()

    def lag(self, start: float, end: float) -> float:
        """Event-loop seconds lost to lag between ``start`` and ``end``: the lateness of every
        wake-up in that span (a stall that began before ``start`` counts in full)."""
        return sum(late for at, late in self.late if start <= at and at - late <= end)

    def longest(self, start: float, end: float) -> float:
        """The longest single stall of the event loop that overlaps ``start`` to ``end``."""
        return max((late for at, late in self.late if start <= at and at - late <= end), default=0.0)

    def max_late(self) -> float:
        return max((late for _, late in self.late), default=0.0)
