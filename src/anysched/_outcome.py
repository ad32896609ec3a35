"""The outcome policy: what an attempt leaves a job as. Pure: no I/O, no clock, no logging.

The scheduler asks two questions of it: may this claim run at all (:func:`out_of_attempts`),
and, once the handler is done, what is the job now (:func:`decide`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Generic, Literal, TypeVar

from ._exceptions import FailJob, RetryJob, decisive, describe
from ._job import Job, JobStatus, evolved
from ._retry import RetryPolicy

T = TypeVar("T")

OutcomeKind = Literal["completed", "retry", "postponed", "failed"]

DEFAULT_RETRY = RetryPolicy()
"""The backoff for a job that sets its own ``max_attempts`` on a scheduler without a policy."""


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """A job's next state, and why (for the log).

    :param job: the job to write, fenced by its lease token
    :param kind: completed, retry (a failed attempt with attempts left), postponed
        (:class:`~anysched.RetryJob`) or failed (for good)
    :param delay: seconds until a retried or postponed job is due again
    :param message: the error as ``last_error`` stores it
    :param budget: the job's attempt budget, ``None`` when unbounded
    :param decided: the handler decided it (:class:`~anysched.FailJob`): no crash to report
    """

    job: Job[T]
    kind: OutcomeKind
    delay: float | None = None
    message: str | None = None
    budget: int | None = None
    decided: bool = False


def max_attempts(job: Job[T], policy: RetryPolicy | None) -> int | None:
    """The job's attempt budget: its own, else the policy's, else unbounded (``None``)."""
    if job.max_attempts is not None:
        return job.max_attempts
    return None if policy is None else policy.max_attempts


def beyond_budget(job: Job[T], policy: RetryPolicy | None) -> bool:
    """Whether this claim of ``job`` is beyond its last attempt (then :func:`out_of_attempts` says what)."""
    budget = max_attempts(job, policy)
    return budget is not None and job.attempts > budget


def out_of_attempts(job: Job[T], policy: RetryPolicy | None, now: datetime) -> Outcome[T] | None:
    """The job failed for good, if this claim is beyond its last attempt; else ``None``.

    Attempts are counted at claim, so only a job whose earlier attempts never reported an
    outcome (their process died, their lease expired) gets here: a poison job.
    """
    budget = max_attempts(job, policy)
    if budget is None or job.attempts <= budget:
        return None
    message = (
        f"gave up after {budget} attempt(s): the last ended without an outcome (its process died or its lease expired)"
    )
    if job.last_error is not None:
        message += f"; last error: {job.last_error}"
    return Outcome(_finished(job, JobStatus.FAILED, now, message), "failed", message=message, budget=budget)


def decide(job: Job[T], error: BaseException | None, policy: RetryPolicy | None, now: datetime) -> Outcome[T]:
    """The job as an attempt that ended with ``error`` (``None``: success) leaves it.

    :class:`~anysched.RetryJob` postpones without using up the attempt; :class:`~anysched.FailJob`
    fails for good; any other error is a failed attempt, retried while the budget allows.
    """
    if error is None:
        return Outcome(_finished(job, JobStatus.COMPLETED, now, job.last_error), "completed")
    error = decisive(error)
    if isinstance(error, RetryJob):
        delay = retry_delay(job, policy) if error.delay is None else error.delay
        given_back = evolved(job, attempts=max(0, job.attempts - 1))
        return Outcome(_due_again(given_back, now, delay, error.reason), "postponed", delay, error.reason)
    message = error.reason if isinstance(error, FailJob) else describe_failure(error)
    budget = max_attempts(job, policy)
    if budget is not None and job.attempts < budget and not isinstance(error, FailJob):
        delay = retry_delay(job, policy)
        return Outcome(_due_again(job, now, delay, message), "retry", delay, message, budget)
    failed = _finished(job, JobStatus.FAILED, now, message)
    return Outcome(failed, "failed", message=message, budget=budget, decided=isinstance(error, FailJob))


def retry_delay(job: Job[T], policy: RetryPolicy | None) -> float:
    """Seconds before a failed (or postponed) job is due again: the policy's backoff."""
    return (policy or DEFAULT_RETRY).delay(max(1, job.attempts))


def describe_failure(error: BaseException) -> str:
    """``last_error`` for a failed attempt. A cancellation the handler raised itself says so:
    it is the handler's failure, not a cancellation by the scheduler."""
    text = describe(error)
    if not isinstance(error, Exception):
        text += " (raised by the handler, not a cancellation by anysched)"
    return text


def _finished(job: Job[T], status: JobStatus, now: datetime, last_error: str | None) -> Job[T]:
    return evolved(job, status=status, processed_at=now, visible_after=None, last_error=last_error)


def _due_again(job: Job[T], now: datetime, delay: float, why: str) -> Job[T]:
    """Pending again, due after ``delay`` (the end of time at most), lease ended."""
    try:
        due = now + timedelta(seconds=delay)
    except OverflowError:  # a delay of millennia: the job waits forever rather than crash the worker
        due = datetime.max.replace(tzinfo=timezone.utc)
    return evolved(job, process_after=due, visible_after=None, last_error=why)
