"""The schedule ticker: enqueues each schedule's slots as they come, one job per slot.

It keeps the schedules in a heap by the moment each next needs a look (its next slot) and sleeps
until the first of them: O(log n) per slot with n schedules, nothing done between slots. At a
slot it adds the slot's job (:meth:`Schedule.job_for <anysched.Schedule.job_for>`) through the
scheduler's retried, idempotent ``add_job``. Every process that declares the schedule adds the
same id; the store's duplicate check lets one win, and for the others the slot is done: that is
how a slot runs once with no leader.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ._exceptions import DuplicateJobError
from ._job import Job
from ._schedule import Schedule

T = TypeVar("T")

logger = logging.getLogger("anysched")

LONGEST_NAP = 60.0
"""The longest the ticker sleeps before reading the wall clock again (seconds). It sleeps on the
event loop's monotonic clock; a wall clock stepped forward meanwhile delays a slot by at most this."""

YIELD_EVERY = 100
"""How many schedules the ticker looks at before it lets the other tasks run: its first look at
10,000 schedules costs seconds of CPU, which handlers and lease renewals must not wait for."""

WAKE_LATENESS = timedelta(seconds=1)
"""How late the ticker may wake for the slot it slept until and still count it on time, whatever the
schedule's ``misfire_grace``: a sleep ends after its deadline (the event loop's latency), so a grace
shorter than that, zero included, would otherwise skip every slot."""


@dataclass
class _Entry(Generic[T]):
    """A schedule and how far it was handled: every slot at or before ``handled`` was looked at.

    ``upcoming`` walks its slots after ``handled`` (the one in the heap was taken from it).
    """

    schedule: Schedule[T]
    handled: datetime | None = None
    upcoming: Iterator[datetime] | None = None
    active: bool = True  # false once replaced or removed: its heap item is dropped when it surfaces


@dataclass
class TickerStatistics:
    """What a ticker has done (for tests and tools).

    :param enqueued: slots whose job this ticker added
    :param taken: slots whose job was there already (another process, or an earlier run, added it)
    :param failed: slots whose job could not be added (a permanent store or payload error), and
        schedules dropped because their slots cannot be computed
    :param wakes: times the ticker woke to look at its heap
    """

    enqueued: int = 0
    taken: int = 0
    failed: int = 0
    wakes: int = 0


class Ticker(Generic[T]):
    """Adds each slot's job of ``schedules`` when the slot comes, through ``add``.

    :param schedules: the schedules, their ids unique
    :param add: adds a job, retrying transient errors; raises ``DuplicateJobError`` if its id exists
    :param now: the wall clock (timezone-aware UTC)
    :param follows_store: whether a store's schedules replace ``schedules`` (:meth:`replace_schedules`):
        then it keeps running with none
    """

    def __init__(
        self,
        schedules: tuple[Schedule[T], ...],
        add: Callable[[Job[T]], Awaitable[None]],
        now: Callable[[], datetime],
        *,
        follows_store: bool = False,
    ) -> None:
        self._schedules = schedules
        self._add = add
        self._now = now
        self._follows_store = follows_store
        self._heap: list[tuple[datetime, int, _Entry[T]]] = []
        self._entries: dict[str, _Entry[T]] = {}
        self._nap: anyio.CancelScope | None = None
        self._order = itertools.count()  # breaks ties between schedules due at the same moment
        self._scope: anyio.CancelScope | None = None
        self._stopped = False
        self.statistics = TickerStatistics()

    def __bool__(self) -> bool:
        """Whether there is anything to tick: a schedule, or a store's schedules to follow."""
        return bool(self._schedules) or self._follows_store

    def replace_schedules(self, schedules: list[Schedule[T]]) -> None:
        """Tick ``schedules`` from now on (paused ones not), instead of the current ones.

        An unchanged schedule keeps its place; a changed one starts again after the slots
        already handled; a new one looks back by its misfire policy, as at start. A slot's job
        id depends only on the schedule's id and the slot, so a change never makes a second job.
        """
        now = self._now()
        wanted = {schedule.id: schedule for schedule in schedules if not schedule.paused}
        handled: dict[str, datetime | None] = {}
        for schedule_id, entry in list(self._entries.items()):
            if wanted.get(schedule_id) != entry.schedule:
                entry.active = False
                del self._entries[schedule_id]
                handled[schedule_id] = entry.handled
        for schedule_id, schedule in wanted.items():
            if schedule_id not in self._entries:
                self._push(now, _Entry(schedule, handled=handled.get(schedule_id)))
        if self._nap is not None:
            self._nap.cancel()  # the first slot may now come sooner

    def stop(self) -> None:
        """Enqueue no more slots (a slot's add in flight is cancelled; its id lets a retry find it)."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick until :meth:`stop` or cancellation. Slots missed before it started are looked at
        first, by each schedule's misfire policy."""
        with anyio.CancelScope() as self._scope:
            if self._stopped:
                return
            if not self._follows_store:  # else the store's schedules come through replace_schedules
                now = self._now()
                for schedule in self._schedules:
                    self._push(now, _Entry(schedule))
            task_status.started()
            while self._heap or self._follows_store:
                await self._tick()

    async def _tick(self) -> None:
        """Handle every schedule whose moment has come, or sleep until the first one's."""
        self.statistics.wakes += 1
        now = self._now()
        looked = 0
        while self._heap and self._heap[0][0] <= now:
            looked += 1
            if looked % YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()
                continue  # the heap again: the schedules may have been replaced meanwhile
            when, _, entry = heapq.heappop(self._heap)
            if not entry.active:
                continue
            try:
                following = await self._enqueue_due(entry, when, now)
            except Exception as error:  # its slots overflow the calendar (say): the others must go on
                self.statistics.failed += 1
                logger.error(
                    "schedule %s: its slots cannot be computed, it is no longer ticked: %s",
                    entry.schedule.id,
                    type(error).__name__,
                )
                following = None
            if following is not None and entry.active:  # else it has ended or was replaced meanwhile
                self._push(following, entry)
            elif entry.active:
                del self._entries[entry.schedule.id]
        if not self._heap and not self._follows_store:
            return  # every schedule has ended
        wait = LONGEST_NAP if not self._heap else (self._heap[0][0] - self._now()).total_seconds()
        if wait > 0:
            with anyio.CancelScope() as self._nap:
                await anyio.sleep(min(wait, LONGEST_NAP))
            self._nap = None

    async def _enqueue_due(self, entry: _Entry[T], when: datetime, now: datetime) -> datetime | None:
        """Enqueue what is due of ``entry``'s schedule at ``now``; return when to look at it next."""
        schedule = entry.schedule
        following = None if entry.upcoming is None else next(entry.upcoming, None)
        if entry.upcoming is not None and (following is None or following > now):
            # On time: the slot it slept until is the only one due (the common case: O(1) slots).
            due = [when] if when >= now - schedule.misfire_grace - WAKE_LATENESS else []
        else:
            # Its first look, or late by a whole period or more (downtime, a store that was down,
            # a clock step): the misfire policy decides, and the walk restarts after now.
            due = schedule.due_slots(entry.handled, now)
            entry.upcoming = schedule.slots_after(now)
            following = next(entry.upcoming, None)
        for slot in due:
            await self._enqueue(schedule.job_for(slot))
        entry.handled = now
        return following

    async def _enqueue(self, job: Job[T]) -> None:
        try:
            await self._add(job)
        except DuplicateJobError:
            self.statistics.taken += 1
            logger.debug("job %s: another scheduler (or an earlier run) enqueued this slot", job.id)
        except Exception as error:  # a bad payload or a refusing store must not stop the other schedules
            self.statistics.failed += 1
            logger.error("job %s: could not enqueue this slot, skipped: %s", job.id, type(error).__name__)
        else:
            self.statistics.enqueued += 1

    def _push(self, when: datetime, entry: _Entry[T]) -> None:
        self._entries[entry.schedule.id] = entry
        heapq.heappush(self._heap, (when, next(self._order), entry))
