"""The exceptions anysched raises, one small hierarchy.

Each subclass also inherits the builtin error whose meaning it carries, so code that
already catches ``ValueError`` or ``RuntimeError`` keeps working.
"""

from __future__ import annotations

import sys
import traceback
from typing import cast

from ._time import Seconds, to_seconds

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


class AnyschedError(Exception):
    """Base class of every error raised by anysched."""


class DuplicateJobError(AnyschedError, ValueError):
    """A job with this id is already in the store; nothing was written."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"a job with id {job_id!r} already exists")
        self.job_id = job_id

    def __reduce__(self) -> tuple[type[AnyschedError], tuple[str]]:
        return type(self), (self.job_id,)  # rebuilt from the id, not from the message built from it


class LeaseLostError(AnyschedError, RuntimeError):
    """The store no longer holds the caller's lease on this job.

    The lease expired (or the job was released) and someone else may own the job now, so
    the caller's update was refused and nothing was written.
    """

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the lease on job {job_id!r} was lost; the update was not written")
        self.job_id = job_id

    def __reduce__(self) -> tuple[type[AnyschedError], tuple[str]]:
        return type(self), (self.job_id,)  # rebuilt from the id, not from the message built from it


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


class UndecodableDocumentError(AnyschedError, ValueError):
    """A stored job that cannot be decoded: names the field and the error's type.

    Never the stored value, nor the underlying error's message (which may quote it), except
    a :class:`PayloadError`'s, which names fields and kinds of failure only: payloads may
    hold secrets. A store that claims such a job marks it failed with this error as its
    ``last_error``.
    """

    def __init__(self, field: str, error: Exception | str) -> None:
        if isinstance(error, Exception):
            kind = type(error).__name__
            error = f"{kind}: {error}" if isinstance(error, PayloadError) else kind
        super().__init__(f"stored field {field!r} cannot be decoded ({error})")
        self.field = field
        self.why = error
        """The error's type, and a :class:`PayloadError`'s message."""

    def __reduce__(self) -> tuple[type[AnyschedError], tuple[str, str]]:
        return type(self), (self.field, self.why)


class RetryJob(AnyschedError):
    """Raised by a handler: run this job again later, whatever the retry policy says.

    The job goes back to pending, due after ``delay`` (the retry policy's backoff when
    ``None``). An explicit retry is a postponement, not a failure: it does not use up one
    of the job's ``max_attempts``, so a handler that always raises it runs forever.

    :param delay: seconds (or a ``timedelta``) to wait before the job is due again
    :param reason: why; stored as the job's ``last_error``
    """

    def __init__(self, reason: str = "the handler asked for a retry", *, delay: Seconds | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay: float | None = None if delay is None else to_seconds("delay", delay, allow_zero=True)


class FailJob(AnyschedError):
    """Raised by a handler: this job failed for good; do not retry it, whatever the policy says.

    :param reason: why; stored as the job's ``last_error``
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobTimeoutError(AnyschedError, TimeoutError):
    """A handler ran past its job's timeout and was cancelled; the attempt counts as failed."""


def decisive(error: BaseException) -> BaseException:
    """What decides a failed attempt's fate, when the handler's own task group wrapped it.

    A ``FailJob`` anywhere in an exception group fails the job for good; a group of nothing
    but ``RetryJob`` s is the first of them; anything else stays the group (a failed attempt).
    """
    if not isinstance(error, BaseExceptionGroup):
        return error
    group = cast("BaseExceptionGroup[BaseException]", error)
    found = leaves(group)
    for leaf in found:
        if isinstance(leaf, FailJob):
            return leaf
    if all(isinstance(leaf, RetryJob) for leaf in found):
        return found[0]
    return group


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in ``error``, however deep its exception groups nest (``[error]`` for one)."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    group = cast("BaseExceptionGroup[BaseException]", error)
    return [leaf for member in group.exceptions for leaf in leaves(member)]


def describe(error: BaseException) -> str:
    """An error as ``last_error`` stores it: ``TypeName: message``."""
    return "".join(traceback.format_exception_only(type(error), error)).strip()
