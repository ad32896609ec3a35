"""The store contract: three async methods, structural, so a custom store inherits nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol, TypeVar, runtime_checkable

from ._job import Job

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
