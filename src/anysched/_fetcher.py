"""The fetcher: claims exactly as many due jobs as the scheduler has room for, and streams them to the workers.

Room is one job per worker plus the buffer, minus the jobs already held. No polling: with no
room it waits for a worker to finish a job; with nothing due it sleeps until the store's next due
time (when the store knows it), a job added through the scheduler, a retry, or ``fetch_interval``.
When it stops, it hands back what still waits in the buffer at once: nobody will run it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._completer import Completer
from ._holdings import Held, Holdings
from ._job import Job
from ._retry import call_store
from ._settings import Settings, next_due_time_of
from ._store import JobStore
from ._time import require_utc

T = TypeVar("T")

logger = logging.getLogger("anysched")


class Fetcher(Generic[T]):
    """Claims jobs for a scheduler.

    :param store: where the jobs live
    :param settings: the scheduler's settings
    :param holdings: the scheduler's shared state: what it holds, whether it is stopping
    :param completer: hands back what is claimed in excess or left in the buffer
    """

    def __init__(self, store: JobStore[T], settings: Settings, holdings: Holdings[T], completer: Completer[T]) -> None:
        self._store = store
        self._settings = settings
        self._holdings = holdings
        self._completer = completer
        self._next_due_time: Any = next_due_time_of(store)
        self._nudge = anyio.Event()
        self._waiting_for_space = False
        self._claiming = False
        self._idle_claims = 0
        """Claims in a row that found nothing although the store said a job was due: a store
        whose next due time is wrong must not make the fetcher spin."""
        self._scope = anyio.CancelScope()

    async def run(self, send: MemoryObjectSendStream[Held[T]], buffer: MemoryObjectReceiveStream[Held[T]]) -> None:
        """Claim and send jobs until stopped; then hand back what waits in ``buffer``."""
        try:
            with self._scope:
                while not self._holdings.stopping:
                    await self._fetch_once(send)
        finally:
            await self.hand_back_buffered(buffer, close=send)

    def stop(self) -> None:
        """Stop fetching: at once when idle; a claim in flight gets its answer until the stop's deadline.

        A claim in flight may have leased jobs: cutting it off would leave them leased to nobody
        until their lease ends (the stores hand back what a cancelled claim won, but not every
        store can). The stop's deadline bounds the wait, whatever the store does.
        """
        deadline = self._holdings.stop_deadline
        if self._claiming and deadline is not None:
            self._scope.deadline = min(self._scope.deadline, deadline)
        else:
            self._scope.cancel()
        self._nudge.set()

    def wake(self) -> None:
        """End the fetcher's idle sleep, so it looks again for the next due time."""
        if not self._waiting_for_space:
            self._nudge.set()

    def make_room(self) -> None:
        """Tell a fetcher that waits for room that a worker has finished a job."""
        if self._waiting_for_space:
            self._nudge.set()

    async def hand_back_buffered(
        self, buffer: MemoryObjectReceiveStream[Held[T]], *, close: MemoryObjectSendStream[Held[T]] | None = None
    ) -> None:
        """Hand back every job still waiting in the stream: nobody will run them.

        They are taken out before ``close`` (the send end) is closed, without awaiting, so no
        worker can take one meanwhile.
        """
        unstarted = _drain(buffer)
        for held in unstarted:
            self._holdings.take(held)
        if close is not None:
            buffer.close()
            close.close()
        await self._completer.hand_back(unstarted, started=False)

    async def _fetch_once(self, send: MemoryObjectSendStream[Held[T]]) -> None:
        self._nudge = anyio.Event()  # a nudge from now on ends the next wait at once
        free = self._settings.capacity - self._holdings.held
        if free == 0:
            await self._wait(math.inf, for_space=True)
            return
        anchor = anyio.current_time()  # before the claim: the lease cannot end earlier than this says
        self._claiming = True
        try:
            claimed = await call_store(
                "fetch_pending_jobs", None, partial(self._claim, free), self._settings.store_backoff
            )
        finally:
            self._claiming = False
        jobs = self._new_to_us(claimed, anchor)
        if len(jobs) > free:
            jobs = await self._hand_back_excess(jobs, free)
        self._holdings.held += len(jobs)
        for job in jobs:
            send.send_nowait(self._holdings.by_id[job.id])
        if len(claimed) < free and not self._holdings.stopping:
            await self._wait(await self._idle_delay(found=len(claimed)), for_space=False)

    def _claim(self, limit: int) -> Awaitable[list[Job[T]]]:
        return self._store.fetch_pending_jobs(self._settings.now(), limit, self._settings.visibility_timeout)

    def _new_to_us(self, claimed: list[Job[T]], anchor: float) -> list[Job[T]]:
        """The claimed jobs this scheduler does not hold yet.

        A store may hand out a job we hold: twice in one claim (a broken store), or again
        because our wall clock stepped forward and its lease looked expired. Running it twice
        at once is never right: the holder keeps the job, under the newer lease (the store
        knows only that one now); the attempt the claim added is undone by the holder's next write.
        """
        new: list[Job[T]] = []
        for job in claimed:
            holder = self._holdings.by_id.get(job.id)
            if holder is None:
                self._holdings.by_id[job.id] = Held(job, anchor)
                new.append(job)
                continue
            logger.warning("job %s: claimed again while this scheduler holds it; keeping one run", job.id)
            # Only the token changes hands: the lease's timing stays the holder's, so its next
            # renewal writes the end in the holder's time line, not in a stepped clock's.
            holder.job = replace(holder.job, lease=job.lease)
        return new

    async def _hand_back_excess(self, jobs: list[Job[T]], limit: int) -> list[Job[T]]:
        """A store that breaks the contract by returning more than ``limit`` jobs loses none."""
        logger.error("the store returned %d jobs for a limit of %d; handing the rest back", len(jobs), limit)
        excess = [self._holdings.by_id.pop(job.id) for job in jobs[limit:]]
        await self._completer.hand_back(excess, started=False)
        return jobs[:limit]

    async def _idle_delay(self, *, found: int) -> float:
        """Sleep ``fetch_interval``, or less if the store knows when its next job is due.

        A store that says a job is due, yet whose claims keep finding none, gets a wait that
        doubles from a millisecond: the fetcher never spins.
        """
        interval = self._settings.fetch_interval
        if self._next_due_time is None:
            return interval
        due: datetime | None = None
        try:
            with anyio.move_on_after(interval):  # no answer in time: the interval it is
                found_due = await self._next_due_time()
                due = None if found_due is None else require_utc("next_due_time()", found_due)
        except Exception as error:  # only an optimisation: the interval is a safe fallback
            logger.debug("next_due_time failed: %r; sleeping the whole fetch interval", error)
        if due is None:
            return interval
        delay = min(interval, (due - self._settings.now()).total_seconds())
        self._idle_claims = self._idle_claims + 1 if delay <= 0 and found == 0 else 0
        floor = 0.0 if self._idle_claims == 0 else 0.001 * 2.0 ** min(self._idle_claims - 1, 20)
        return min(interval, max(delay, floor))

    async def _wait(self, seconds: float, *, for_space: bool) -> None:
        """Wait for a nudge (a worker finished a job, a job was added, shutdown) or ``seconds``."""
        self._waiting_for_space = for_space
        try:
            if seconds == math.inf:  # no cancel scope for a wait without a deadline: it costs per job
                await self._nudge.wait()
            else:
                with anyio.move_on_after(seconds):
                    await self._nudge.wait()
        finally:
            self._waiting_for_space = False


def _drain(receive: MemoryObjectReceiveStream[Held[T]]) -> list[Held[T]]:
    """Every job waiting in the stream, without waiting."""
    drained: list[Held[T]] = []
    while True:
        try:
            drained.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return drained
