"""DictStore: a minimal custom job store, written against anysched's public API only.

Every job lives in one dict. It passes anysched's store contract suite (see
``test_dict_store.py``), but it is an example: use :class:`anysched.MemoryStore` for real work.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from anysched import DuplicateJobError, Job, JobNotFoundError, LeaseLostError

T = TypeVar("T")


class DictStore(Generic[T]):
    """Jobs in a dict, keyed by id.

    No method awaits in the middle of reading and writing the dict, so each one is atomic
    on its event loop and two tasks never claim the same job. A store that processes share
    needs the same from its database: one transaction, or a conditional update, per claim.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, Job[T]] = {}

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[T]]:
        """Lease up to ``limit`` due jobs, oldest due first."""
        if now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware, got {now!r}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        if visibility_timeout <= timedelta(0):
            raise ValueError(f"visibility_timeout must be positive, got {visibility_timeout!r}")
        # A scan of every job, O(n) per claim: fine for an example. MemoryStore is the real
        # one (two heaps, O(log n)); a database store runs an indexed query instead.
        due = [job for job in self._jobs.values() if job.is_due(now)]  # pending, due, not leased
        due.sort(key=lambda job: job.process_after)
        leased = [
            replace(job, visible_after=now + visibility_timeout, lease=secrets.token_hex(16), attempts=job.attempts + 1)
            for job in due[:limit]
        ]
        for job in leased:
            self._jobs[job.id] = job
        return leased

    async def update_job(self, job: Job[T]) -> None:
        """Replace the stored job, only while it is leased under ``job.lease`` (fencing)."""
        stored = self._jobs.get(job.id)
        if stored is None:
            raise JobNotFoundError(job.id)
        # Someone else may hold the job now (the lease expired), or an outcome (completed,
        # failed, retried, released) ended this lease: a renewal arriving late is refused.
        if not stored.accepts_write_fenced_by(job.lease):
            raise LeaseLostError(job.id)
        self._jobs[job.id] = job

    async def add_job(self, job: Job[T]) -> None:
        """Insert a new job; an existing id changes nothing."""
        if job.id in self._jobs:
            raise DuplicateJobError(job.id)
        self._jobs[job.id] = job
