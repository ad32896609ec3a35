"""The exceptions anysched raises, one small hierarchy.

Each subclass also inherits the builtin error whose meaning it carries, so code that
already catches ``ValueError`` or ``RuntimeError`` keeps working.
"""

from __future__ import annotations


class AnyschedError(Exception):
    """Base class of every error raised by anysched."""


class DuplicateJobError(AnyschedError, ValueError):
    """A job with this id is already in the store; nothing was written."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"a job with id {job_id!r} already exists")
        self.job_id = job_id


class LeaseLostError(AnyschedError, RuntimeError):
    """The store no longer holds the caller's lease on this job.

    The lease expired (or the job was released) and someone else may own the job now, so
    the caller's update was refused and nothing was written.
    """

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the lease on job {job_id!r} was lost; the update was not written")
        self.job_id = job_id


class JobNotFoundError(AnyschedError, KeyError):
    """No job with this id is in the store."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job with id {self.job_id!r}"


class TransientStoreError(AnyschedError):
    """A store call failed for a reason that may go away by itself (an outage, a timeout).

    Stores translate their driver's transient errors into this one; the scheduler retries
    every store call that raises it (or a builtin ``ConnectionError`` or ``TimeoutError``)
    with exponential backoff.
    """


class PayloadError(AnyschedError, ValueError):
    """A payload could not be encoded for a store, or a stored one could not be decoded."""
