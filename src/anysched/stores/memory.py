"""MemoryStore: every job in one process's memory, claims in O(log n)."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import Counter
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from .._exceptions import DuplicateJobError, JobNotFoundError
from .._job import Job, JobStatus, claimed
from .._schedule import Schedule, check_schedule
from .._store import check_claim_arguments as _check_claim_arguments
from .._store import check_job as _check_job
from .._store import check_list_arguments as _check_list_arguments
from .._store import update_refused as _update_refused
from .._time import require_utc

__all__ = ("MemoryStore",)

T = TypeVar("T")

_COMPACT_SLACK = 1024
"""Superseded heap entries tolerated beyond the pending jobs before the heaps are rebuilt."""

_Entry = tuple[datetime, int, str]
"""A heap entry: (sort key, sequence number, job id). The sequence number breaks ties in
insertion order and says whether the entry is still the job's current one."""


class MemoryStore(Generic[T]):
    """An in-process job store: the embedded default for demos, tests and single processes.

    Jobs live in a dict; pending jobs are indexed by two heaps, so a claim costs O(log n)
    in the number of stored jobs and never scans them all:

    - *waiting*: pending jobs not yet claimable, keyed by the moment they become so (their
      due time, or their lease expiry if later);
    - *ready*: claimable jobs, keyed by due time, so the oldest due is claimed first. A
      caller whose clock runs behind the last one's may find an entry here not claimable
      yet: it goes back to *waiting*.

    A changed job gets a new entry and its old one is skipped when it surfaces (lazy
    deletion). Every method runs without awaiting, under a lock, so any number of tasks
    (and threads) may share one store. Jobs are lost when the process exits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job[T]] = {}
        self._waiting: list[_Entry] = []
        self._ready: list[_Entry] = []
        self._current_entry: dict[str, int] = {}
        self._sequence = itertools.count()
        self._counts: Counter[JobStatus] = Counter()
        self._schedules: dict[str, Schedule[T]] = {}
        self._schedules_marker = 0

    # -- the store contract ------------------------------------------------------------

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[T]]:
        """Lease up to ``limit`` due jobs, oldest due first (see :class:`~anysched.JobStore`)."""
        now = require_utc("now", now)
        _check_claim_arguments(limit, visibility_timeout)
        with self._lock:
            self._promote_claimable(now)
            leased: list[Job[T]] = []
            while self._ready and len(leased) < limit:
                _, sequence, job_id = heapq.heappop(self._ready)
                if self._current_entry.get(job_id) != sequence:
                    continue
                job = self._jobs[job_id]
                if job.is_due(now):
                    leased.append(self._claim(job, now, visibility_timeout))
                else:  # promoted by a caller whose clock runs ahead of this one's: not claimable yet
                    heapq.heappush(self._waiting, (_claimable_at(job), sequence, job_id))
            return leased

    async def update_job(self, job: Job[T]) -> None:
        """Store ``job`` while the stored copy is leased under ``job.lease`` (see :class:`~anysched.JobStore`)."""
        _check_job(job)
        with self._lock:
            stored = self._jobs.get(job.id)
            if stored is None or not stored.accepts_write_fenced_by(job.lease):
                raise _update_refused(job.id, exists=stored is not None)
            self._put(stored, job)

    async def add_job(self, job: Job[T]) -> None:
        """Insert ``job``; an existing id raises :class:`~anysched.DuplicateJobError`."""
        _check_job(job)
        with self._lock:
            if job.id in self._jobs:
                raise DuplicateJobError(job.id)
            self._put(None, job)

    async def next_due_time(self) -> datetime | None:
        """The earliest moment a pending job is claimable, or ``None`` when none is pending."""
        with self._lock:
            self._settle_ready_top()
            self._drop_stale_top(self._waiting)
            moments = [self._jobs[self._ready[0][2]].process_after] if self._ready else []
            if self._waiting:
                moments.append(self._waiting[0][0])
            return min(moments, default=None)

    # -- inspection (anysched.InspectsJobs) -----------------------------------------------

    async def get_job(self, job_id: str) -> Job[T]:
        """The stored job with this id. :raises JobNotFoundError: no such job"""
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise JobNotFoundError(job_id) from None

    async def count(self, status: JobStatus | None = None) -> int:
        """How many jobs have ``status`` (all jobs when ``None``), in O(1)."""
        return self._count(status)

    async def list_jobs(
        self, status: JobStatus | None = None, *, limit: int = 100, after: str | None = None
    ) -> list[Job[T]]:
        """Up to ``limit`` jobs with ``status`` (all when ``None``) whose ids sort after ``after``, by id.

        A scan of every job: O(n log limit) per page.
        """
        status = _check_list_arguments(status, limit, after)
        with self._lock:
            chosen = (
                job
                for job in self._jobs.values()
                if (status is None or job.status is status) and (after is None or job.id > after)
            )
            return heapq.nsmallest(limit, chosen, key=_job_id)

    async def purge(self, *, completed_before: datetime) -> int:
        """Delete completed jobs processed before ``completed_before``; return how many.

        Completed jobs are kept until purged, so a long-running process calls this now and
        then. Pending and failed jobs are never purged.
        """
        cutoff = require_utc("completed_before", completed_before)
        with self._lock:
            doomed = [
                job.id
                for job in self._jobs.values()
                if job.status is JobStatus.COMPLETED and job.processed_at is not None and job.processed_at < cutoff
            ]
            for job_id in doomed:
                del self._jobs[job_id]
            self._counts[JobStatus.COMPLETED] -= len(doomed)
            return len(doomed)

    # -- beyond inspection: go-sched's memory store, synchronous ------------------------------

    def jobs(self) -> list[Job[T]]:
        """A snapshot of every stored job (go-sched's ``GetJobs``), in insertion order."""
        with self._lock:
            return list(self._jobs.values())

    def __len__(self) -> int:
        return self._count(None)

    # -- schedules (anysched.StoresSchedules) -------------------------------------------------

    async def put_schedule(self, schedule: Schedule[T]) -> None:
        """Store ``schedule``, replacing the one with its id (see :class:`~anysched.StoresSchedules`)."""
        check_schedule(schedule)
        with self._lock:
            self._schedules[schedule.id] = schedule
            self._schedules_marker += 1

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Remove the schedule with this id; whether there was one."""
        with self._lock:
            found = self._schedules.pop(schedule_id, None) is not None
            self._schedules_marker += found
            return found

    async def list_schedules(self) -> list[Schedule[T]]:
        """Every stored schedule, by id."""
        with self._lock:
            return [self._schedules[schedule_id] for schedule_id in sorted(self._schedules)]

    async def schedules_marker(self) -> int:
        """A number that changes whenever a schedule is put or removed."""
        return self._schedules_marker

    # -- internals -----------------------------------------------------------------------

    def _count(self, status: JobStatus | None) -> int:
        with self._lock:
            return len(self._jobs) if status is None else self._counts[JobStatus(status)]

    def _claim(self, job: Job[T], now: datetime, visibility_timeout: timedelta) -> Job[T]:
        leased = claimed(job, now, visibility_timeout)
        self._put(job, leased)
        return leased

    def _put(self, old: Job[T] | None, new: Job[T]) -> None:
        """Store ``new`` in place of ``old`` and index it when it is pending."""
        self._jobs[new.id] = new
        if old is None or old.status is not new.status:  # a claim or a renewal changes no count
            if old is not None:
                self._counts[old.status] -= 1
            self._counts[new.status] += 1
        claimable_at = new.claimable_at
        if claimable_at is None:  # finished: never claimed again
            self._current_entry.pop(new.id, None)
            return
        sequence = next(self._sequence)
        self._current_entry[new.id] = sequence
        heapq.heappush(self._waiting, (claimable_at, sequence, new.id))
        if len(self._waiting) + len(self._ready) > 2 * len(self._current_entry) + _COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        """Drop superseded entries, so the heaps stay within twice the pending jobs.

        A finished or renewed job leaves its old entry behind until its lease time passes;
        at thousands of jobs a second and a long lease that is most of the heap.
        Amortised O(1) per update: a rebuild halves the heaps at least.
        """
        self._waiting = _live_heap(self._waiting, self._current_entry)
        self._ready = _live_heap(self._ready, self._current_entry)

    def _promote_claimable(self, now: datetime) -> None:
        """Move the entries of jobs that became claimable by ``now`` to the ready heap."""
        waiting, ready, current = self._waiting, self._ready, self._current_entry
        while waiting and waiting[0][0] <= now:
            _, sequence, job_id = heapq.heappop(waiting)
            if current.get(job_id) == sequence:
                heapq.heappush(ready, (self._jobs[job_id].process_after, sequence, job_id))

    def _drop_stale_top(self, heap: list[_Entry]) -> None:
        while heap and self._current_entry.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)

    def _settle_ready_top(self) -> None:
        """Leave on top of the ready heap a current entry that is claimable at its due time.

        A job whose lease outlasts its due time was promoted by a caller whose clock runs
        ahead, or its lease has expired: either way it goes back to waiting, keyed by the
        moment it is really claimable (a later fetch promotes it again). Any entry below the
        top then becomes claimable no earlier than the top's due time, so that time is the
        ready heap's earliest moment; reporting a lease-bound job's past due time instead
        would send the fetcher into a loop of empty claims.
        """
        ready = self._ready
        while ready:
            _, sequence, job_id = ready[0]
            if self._current_entry.get(job_id) != sequence:
                heapq.heappop(ready)
                continue
            job = self._jobs[job_id]
            claimable_at = _claimable_at(job)
            if claimable_at == job.process_after:
                return
            heapq.heappop(ready)
            heapq.heappush(self._waiting, (claimable_at, sequence, job_id))


def _claimable_at(job: Job[T]) -> datetime:
    """The moment an indexed (so pending) job becomes claimable."""
    moment = job.claimable_at
    assert moment is not None, "only pending jobs are indexed"
    return moment


def _job_id(job: Job[T]) -> str:
    return job.id


def _live_heap(heap: list[_Entry], current: dict[str, int]) -> list[_Entry]:
    live = [entry for entry in heap if current.get(entry[2]) == entry[1]]
    heapq.heapify(live)
    return live
