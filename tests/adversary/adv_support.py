"""Test doubles for the adversarial review: a store whose every call can be scripted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from anysched import Job, JobStatus, MemoryStore
from support import peek as peek
from support import tally as tally
from support import until as until  # one polling helper for every test

Hook = Callable[[str, int, tuple[Any, ...]], Awaitable[None]]
"""``await hook(operation, call_number, args)``: may hang, raise, or return."""


class ScriptedStore:
    """A MemoryStore whose calls pass through ``before`` and ``after`` hooks (per operation).

    ``before[op]`` runs before the inner call (raise: the call did not happen), ``after[op]``
    after it (raise: the call happened but the reply was lost). ``claim_filter`` rewrites what a
    claim returns (duplicates, extras, stripped leases).
    """

    def __init__(self, inner: MemoryStore[Any] | None = None) -> None:
        self.inner: MemoryStore[Any] = inner if inner is not None else MemoryStore()
        self.calls: Counter[str] = Counter()
        self.before: dict[str, Hook] = {}
        self.after: dict[str, Hook] = {}
        self.claim_filter: Callable[[list[Job[Any]]], list[Job[Any]]] | None = None
        self.limits: list[int] = []
        self.updates: list[Job[Any]] = []

    async def _hook(self, table: dict[str, Hook], op: str, args: tuple[Any, ...]) -> None:
        hook = table.get(op)
        if hook is not None:
            await hook(op, self.calls[op], args)

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[Any]]:
        self.calls["fetch_pending_jobs"] += 1
        self.limits.append(limit)
        await self._hook(self.before, "fetch_pending_jobs", (now, limit))
        jobs = await self.inner.fetch_pending_jobs(now, limit, visibility_timeout)
        await self._hook(self.after, "fetch_pending_jobs", (now, limit, jobs))
        if self.claim_filter is not None:
            jobs = self.claim_filter(jobs)
        return jobs

    async def update_job(self, job: Job[Any]) -> None:
        self.calls["update_job"] += 1
        await self._hook(self.before, "update_job", (job,))
        await self.inner.update_job(job)
        self.updates.append(job)
        await self._hook(self.after, "update_job", (job,))

    async def add_job(self, job: Job[Any]) -> None:
        self.calls["add_job"] += 1
        await self._hook(self.before, "add_job", (job,))
        await self.inner.add_job(job)
        await self._hook(self.after, "add_job", (job,))

    async def next_due_time(self) -> datetime | None:
        self.calls["next_due_time"] += 1
        await self._hook(self.before, "next_due_time", ())
        return await self.inner.next_due_time()

    # inspection (anysched.InspectsJobs), straight through: the scheduler reads a job back with it

    async def get_job(self, job_id: str) -> Job[Any]:
        return await self.inner.get_job(job_id)

    async def count(self, status: JobStatus | None = None) -> int:
        return await self.inner.count(status)

    async def list_jobs(
        self, status: JobStatus | None = None, *, limit: int = 100, after: str | None = None
    ) -> list[Job[Any]]:
        return await self.inner.list_jobs(status, limit=limit, after=after)

    async def purge(self, *, completed_before: datetime) -> int:
        return await self.inner.purge(completed_before=completed_before)


def settled(store: MemoryStore[Any]) -> bool:
    """Every job finished, or pending and unleased."""
    return all(job.status is not JobStatus.PENDING or job.visible_after is None for job in store.jobs())


def leased(store: MemoryStore[Any]) -> list[str]:
    return [job.id for job in store.jobs() if job.status is JobStatus.PENDING and job.visible_after is not None]
