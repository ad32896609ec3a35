"""The store contract: three async methods, structural, so a custom store inherits nothing.

Also the optional capabilities (each its own small protocol) and the rules every store
applies the same way: argument checks, which error a refused update raises, and what a
job whose stored form cannot be decoded records as its ``last_error``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

from ._exceptions import JobNotFoundError, LeaseLostError, UndecodableDocumentError
from ._job import Job, JobStatus
from ._schedule import Schedule

T = TypeVar("T")


@runtime_checkable
class JobStore(Protocol[T]):
    """Where jobs live. The scheduler needs only these three methods.

    Stores signal a transient failure (an outage, a timeout) by raising
    :class:`~anysched.TransientStoreError`, ``ConnectionError`` or ``TimeoutError``: the
    scheduler retries those with backoff. Anything else is permanent and is not retried.
    """

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[T]]:
        """Atomically lease and return up to ``limit`` jobs that are pending, due and visible.

        Each returned job has ``visible_after = now + visibility_timeout``, a fresh ``lease``
        token and ``attempts`` one higher. Oldest due (``process_after``) first. Two callers
        never receive the same job while its lease holds.
        """
        ...

    async def update_job(self, job: Job[T]) -> None:
        """Replace the stored job with ``job``, only while the store holds ``job.lease``.

        The store holds it while the stored job is pending, leased (``visible_after`` set)
        and carries that token: :meth:`Job.accepts_write_fenced_by
        <anysched.Job.accepts_write_fenced_by>`. Check and write in one atomic step (one
        conditional update). An outcome (completed, failed, or pending with
        ``visible_after=None`` for a retry or a release) therefore ends the lease, and a
        write sent earlier with the same token that lands after it is refused.

        :raises LeaseLostError: the stored job is not leased under ``job.lease`` (another
            token, none, or an outcome already ended the lease); nothing was written
        :raises JobNotFoundError: no job has this id
        """
        ...

    async def add_job(self, job: Job[T]) -> None:
        """Insert a new job.

        :raises DuplicateJobError: a job with this id exists; nothing was written
        """
        ...


@runtime_checkable
class KnowsNextDueTime(Protocol):
    """Optional: a store that can say when its next job becomes due or visible.

    The scheduler then sleeps until that moment instead of a whole ``fetch_interval``.
    """

    async def next_due_time(self) -> datetime | None:
        """The earliest moment a pending job becomes claimable, or ``None`` if there is none."""
        ...


@runtime_checkable
class SendsWakeUps(Protocol):
    """Optional: a store that can tell a scheduler when another process may have made a job claimable.

    An idle fetcher sleeps until the next due time or ``fetch_interval``; a job added by another
    process would wait that long. A store with this capability listens to its database
    (PostgreSQL ``LISTEN/NOTIFY``, MongoDB change streams, SQLite's ``PRAGMA data_version``)
    and calls ``wake`` so the fetcher claims at once.

    Wake-ups are hints: a missed or spurious one costs at most a ``fetch_interval`` or one
    empty claim, never correctness.
    """

    def wake_ups(self, wake: Callable[[], None]) -> AbstractAsyncContextManager[None]:
        """Listen for the length of the ``async with`` block, calling ``wake()`` when a job may
        have become claimable (added, released, retried, or its due time moved).

        ``wake`` is cheap, synchronous, never raises and may be called from the event loop's
        thread only. Entering raises if the store cannot listen (say, a MongoDB server without
        change streams); a listener that fails later raises out of the block. The scheduler
        logs either (the error's type only: its message may name a host), polls meanwhile, and
        listens again after its store backoff. The block ends promptly when cancelled (the
        scheduler cancels it first when it stops): do not shield a wait in its exit, and let a
        thread that listens be abandoned or stop by itself within moments.
        """
        ...


@runtime_checkable
class StoresSchedules(Protocol[T]):
    """Optional: a store that keeps schedules, so any process can add, change, pause or remove one
    at run time and every scheduler on the store follows within its ``schedule_refresh``.

    A scheduler on such a store puts its declared schedules at start (each replaces the stored one
    with its id) and from then on ticks the stored ones, reading them again whenever
    :meth:`schedules_marker` changes. A slot's job id depends only on the schedule's id and the
    slot, so a change never makes a second job for a slot.
    """

    async def put_schedule(self, schedule: Schedule[T]) -> None:
        """Store ``schedule``, replacing the one with its id if there is one."""
        ...

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Remove the schedule with this id; whether there was one."""
        ...

    async def list_schedules(self) -> list[Schedule[T]]:
        """Every stored schedule (paused ones too), by id; one that cannot be read is logged and left out."""
        ...

    async def schedules_marker(self) -> int:
        """A number that changes whenever a schedule is put or removed (cheap to read)."""
        ...


@runtime_checkable
class InspectsJobs(Protocol[T]):
    """Optional: a store whose jobs can be read, counted, listed and purged, for tools and tests.

    Every anysched store implements it; the scheduler never needs it (it uses ``get_job``,
    when present, only to tell a lost ``add_job`` reply from a duplicate).
    :class:`anysched.testing.StoreContract` checks it on every store that has it.
    """

    async def get_job(self, job_id: str) -> Job[T]:
        """The stored job with this id.

        :raises JobNotFoundError: no job has this id
        """
        ...

    async def count(self, status: JobStatus | None = None) -> int:
        """How many jobs have ``status`` (every job when ``None``)."""
        ...

    async def list_jobs(
        self, status: JobStatus | None = None, *, limit: int = 100, after: str | None = None
    ) -> list[Job[T]]:
        """Up to ``limit`` jobs with ``status`` (every job when ``None``), by id, after id ``after``.

        Page through all of them by passing the last id of one page as ``after`` of the
        next; a job that exists throughout appears on exactly one page.

        :raises ValueError: ``limit`` is not an int >= 1
        """
        ...

    async def purge(self, *, completed_before: datetime) -> int:
        """Delete completed jobs processed before ``completed_before``; return how many.

        Pending and failed jobs are never purged.
        """
        ...


def check_claim_arguments(limit: int, visibility_timeout: timedelta) -> None:
    """What every store checks before a claim: a ``ValueError`` naming the bad argument."""
    if type(limit) is not int or limit < 0:
        raise ValueError(f"limit must be an int >= 0, got {limit!r}")
    if not isinstance(visibility_timeout, timedelta) or visibility_timeout <= timedelta(0):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"visibility_timeout must be a positive timedelta, got {visibility_timeout!r}")


def check_job(job: Job[T]) -> Job[T]:
    """``job``, if it is a :class:`~anysched.Job`; a ``TypeError`` otherwise."""
    if not isinstance(job, Job):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"job must be an anysched.Job, not {type(job).__name__}")
    return job


def check_list_arguments(status: JobStatus | None, limit: int, after: str | None) -> JobStatus | None:
    """What every store checks before :meth:`InspectsJobs.list_jobs`: the status, as a :class:`JobStatus`."""
    if type(limit) is not int or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    if after is not None and not isinstance(after, str):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"after must be a job id (a str) or None, not {type(after).__name__}")
    return None if status is None else JobStatus(status)


def update_refused(job_id: str, *, exists: bool) -> LeaseLostError | JobNotFoundError:
    """The error for an update a store did not apply: the lease is not held, or there is no such job.

    Raise it: ``raise update_refused(job.id, exists=...)``.
    """
    return LeaseLostError(job_id) if exists else JobNotFoundError(job_id)


def refused_by_job(fields: Mapping[str, Any]) -> str:
    """Which stored field ``Job`` refused: each one it checks is tried alone (on the failure path only)."""
    for name in ("id", "attempts", "max_attempts", "timeout"):
        try:
            Job(payload=None, **{name: fields[name]})
        except (TypeError, ValueError):
            return name
    return "job"


def undecodable_last_error(error: UndecodableDocumentError) -> str:
    """The ``last_error`` a store records when it marks an undecodable job failed."""
    return f"{type(error).__name__}: {error}"
