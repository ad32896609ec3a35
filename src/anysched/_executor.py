"""The executor: runs one handler under its cancel scope, and says what its attempt came to.

The handler's scope carries the job's deadline (its timeout) and is cancelled by the lease keeper
when the lease is lost. Whatever the handler raises is that attempt's failure, except the
scheduler's own cancellation (:mod:`anysched._cancellation`), which propagates so that the worker
hands the job back. The decision itself is the pure outcome policy's (:mod:`anysched._outcome`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

from ._cancellation import being_cancelled, is_control_flow
from ._exceptions import JobTimeoutError
from ._holdings import Held, Holdings
from ._job import Job
from ._outcome import Outcome, decide
from ._settings import Settings

T = TypeVar("T")

Handler = Callable[[Job[T]], Awaitable[object]]
"""``async def handler(job: Job[T]) -> None``: returning completes the job, raising fails it
(retried while the retry policy allows; :class:`RetryJob` and :class:`FailJob` decide for it)."""

logger = logging.getLogger("anysched")


class Executor(Generic[T]):
    """Runs a scheduler's handler, one job at a time per worker.

    :param handler: the scheduler's handler
    :param settings: the scheduler's settings (the job timeout, the retry policy, the clock)
    :param holdings: the scheduler's shared state (the running jobs, for the lease keeper)
    """

    def __init__(self, handler: Handler[T], settings: Settings, holdings: Holdings[T]) -> None:
        self._handler = handler
        self._settings = settings
        self._holdings = holdings

    async def run(self, held: Held[T], begin: float) -> Outcome[T] | None:
        """Await the handler; the job's next state, or ``None`` if nothing may be written.

        :param begin: the monotonic time now, which the job's timeout runs from
        :raises: the scheduler's own cancellation (the caller hands the job back)
        """
        job, worker = held.job, held.worker
        timeout = self._settings.timeout_of(job.timeout)
        if timeout is not None:
            held.scope.deadline = begin + timeout
        self._holdings.running.add(held)
        logger.debug("job %s started on worker %d (attempt %d)", job.id, worker, job.attempts)
        error: BaseException | None = None
        try:
            with held.scope:
                await self._handler(job)
        except BaseException as raised:
            if is_control_flow(raised) or being_cancelled():
                await _propagate_cancellation(held, raised)
            error = raised
        finally:
            held.finished = True
            if held.renewal is not None:  # its answer no longer matters: the outcome's write ends the lease
                held.renewal.cancel()
            self._holdings.running.discard(held)
        return self._judge(held, error, begin)

    def _judge(self, held: Held[T], error: BaseException | None, begin: float) -> Outcome[T] | None:
        """The outcome to write for a finished handler, or ``None`` when none may be written.

        :param begin: when the handler started (monotonic); the clock is read again only for a
            log line that is emitted
        """
        job, worker = held.job, held.worker
        if held.refused or (held.in_doubt and (error is not None or held.scope.cancelled_caught)):
            # Refused: someone else may own the job. In doubt and cut off: it had no result;
            # the job runs again when its lease expires.
            duration = anyio.current_time() - begin
            logger.warning("job %s on worker %d: lease lost after %.3fs; result not recorded", job.id, worker, duration)
            return None
        if held.scope.cancel_called and not held.in_doubt:  # the job's deadline, even if the handler swallowed it
            timeout = self._settings.timeout_of(job.timeout)
            error = JobTimeoutError(f"the handler ran past the job's timeout of {timeout:g}s and was cancelled")
        outcome = decide(job, error, self._settings.retry, self._settings.now())
        _log_outcome(outcome, worker, begin, error)
        return outcome


async def _propagate_cancellation(held: Held[T], raised: BaseException) -> None:
    """Re-raise our cancellation, never a handler's error that came with it.

    A handler that raises while being cancelled (an error from its cleanup, its task group's
    exception group) must not crash the scheduler: the error is logged and the cancellation of
    the scope that is cancelling us is raised in its place, so that the caller hands the job
    back. Returns only if nothing is cancelling us after all: then ``raised`` is the attempt's
    failure.
    """
    if is_control_flow(raised) or isinstance(raised, anyio.get_cancelled_exc_class()):
        raise raised
    logger.warning(
        "job %s on worker %d: the handler raised while being cancelled; handing the job back",
        *(held.job.id, held.worker),
        exc_info=raised,
    )
    await anyio.lowlevel.checkpoint()  # raises the cancellation of the scope that is cancelling us


def _log_outcome(outcome: Outcome[T], worker: int, begin: float, error: BaseException | None) -> None:
    job = outcome.job
    if outcome.kind == "completed":
        if logger.isEnabledFor(logging.INFO):  # the common case: no clock read for a line nobody sees
            logger.info("job %s completed on worker %d in %.3fs", job.id, worker, anyio.current_time() - begin)
        return
    duration = anyio.current_time() - begin
    of_budget = "" if outcome.budget is None else f" of {outcome.budget}"
    if outcome.kind == "postponed":
        logger.info("job %s postponed by its handler (%s); due again in %.2fs", job.id, outcome.message, outcome.delay)
    elif outcome.kind == "retry":
        logger.warning(
            "job %s failed on worker %d after %.3fs (attempt %d%s); retrying in %.2fs",
            *(job.id, worker, duration, job.attempts, of_budget, outcome.delay),
            exc_info=error,
        )
    else:
        logger.error(
            "job %s failed for good on worker %d after %.3fs (attempt %d%s): %s",
            *(job.id, worker, duration, job.attempts, of_budget, outcome.message),
            exc_info=None if outcome.decided else error,  # a FailJob is a decision, not a crash: no traceback
        )
