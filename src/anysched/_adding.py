"""Adding a job through the scheduler: retried, and idempotent when a reply was lost.

A store may apply an insert and lose its reply (a dropped connection; a standalone mongod has
no retryable writes). The retry then finds the job and raises ``DuplicateJobError`` for the
caller's own insert. A retry that finds a job with the same id and the same content succeeds.
"""

from __future__ import annotations

import inspect
import logging
from datetime import timedelta
from typing import Any, TypeVar, cast

from ._exceptions import DuplicateJobError
from ._job import Job
from ._retry import Backoff, CountedCall, call_store
from ._store import JobStore

T = TypeVar("T")

logger = logging.getLogger("anysched")

_ROUNDING = timedelta(milliseconds=1)
"""How far a store may round a stored time (BSON dates keep milliseconds)."""


async def add_job_once(store: JobStore[T], job: Job[T], backoff: Backoff) -> None:
    """``store.add_job(job)``, retried on transient errors; a retry that finds ``job`` succeeds.

    :raises DuplicateJobError: another job with this id exists (or, on a store that cannot
        be read, a job with this id exists after a retry)
    """
    add = CountedCall(lambda: store.add_job(job))
    try:
        await call_store("add_job", job.id, add, backoff)
    except DuplicateJobError:
        if add.count == 1 or not await _holds_same_job(store, job):
            raise
        logger.info("job %s: add_job's reply was lost; the retry found the job it had added", job.id)


async def _holds_same_job(store: JobStore[T], job: Job[T]) -> bool:
    """Whether the store's job with ``job.id`` is ``job``, as the store keeps it.

    Same payload, limits and due time; a job claimed since (it carries a lease token) may have
    another due time: a retry or a postponement (:class:`~anysched.RetryJob`, which also gives the
    attempt back) moves it. It takes only ``get_job`` of :class:`~anysched.InspectsJobs` (a store may offer
    just that); a store without it cannot tell: the duplicate stands.
    """
    get_job: Any = getattr(store, "get_job", None)
    if not inspect.iscoroutinefunction(get_job):
        return False
    try:
        found: object = await get_job(job.id)
    except Exception as error:  # it exists, but cannot be read back now: the duplicate stands
        logger.warning("job %s: could not read it back to tell a lost reply from a duplicate: %r", job.id, error)
        return False
    if not isinstance(found, Job):  # a misbehaving store's answer: the duplicate stands
        return False
    stored = cast("Job[T]", found)
    same_due = abs(stored.process_after - job.process_after) <= _ROUNDING or stored.lease is not None
    return (
        stored.payload == job.payload
        and stored.max_attempts == job.max_attempts
        and stored.timeout == job.timeout
        and same_due
    )
