"""The completer: writes outcomes and hand-backs to the store, fenced, retried, and bounded once stopping.

Every write goes through ``update_job`` with the job's lease token, so it lands only while the
lease is ours. A lost lease is logged, not raised: the job is someone else's now. Once the
scheduler is stopping, no write may hold the stop up: each is bounded by ``shutdown_timeout``,
and what could not be written is logged by id and reappears when its lease ends.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Generic, TypeVar

import anyio

from ._exceptions import JobNotFoundError, LeaseLostError
from ._holdings import Held, Holdings
from ._job import Job, JobStatus, evolved
from ._outcome import Outcome
from ._retry import CountedCall, call_store
from ._settings import Settings
from ._store import JobStore

T = TypeVar("T")

logger = logging.getLogger("anysched")

_STATUS_TEXT = {status: str(status) for status in JobStatus}
"""An outcome's status as the log names it, looked up: ``str()`` of an enum costs more, per job."""


class Completer(Generic[T]):
    """Writes what became of the jobs a scheduler held.

    :param store: where the jobs live
    :param settings: the scheduler's settings (``shutdown_timeout``, ``store_backoff``)
    :param holdings: the scheduler's shared state (whether it is stopping, and until when)
    """

    def __init__(self, store: JobStore[T], settings: Settings, holdings: Holdings[T]) -> None:
        self._store = store
        self._settings = settings
        self._holdings = holdings
        self._bounded: set[anyio.CancelScope] = set()

    def stop(self, deadline: float) -> None:
        """Bound the writes in flight by ``deadline``; later ones get ``shutdown_timeout`` each.

        :param deadline: on the monotonic clock
        """
        for scope in self._bounded:
            scope.deadline = min(scope.deadline, deadline)

    def worker_scope(self) -> anyio.CancelScope:
        """A scope for a worker's whole life, which :meth:`record` bounds once stopping.

        One scope per worker rather than one per write: entering and leaving a cancel scope
        costs more than the rest of a job's write to a memory store. Its deadline is set only
        while the worker writes an outcome and the scheduler is stopping; a write it cuts off
        ends the worker, which would stop after that write anyway.
        """
        return anyio.CancelScope()

    async def record(self, outcome: Outcome[T], worker: int, bound: anyio.CancelScope) -> None:
        """Write a finished job's outcome; once stopping, within ``shutdown_timeout``.

        ``bound`` is the worker's scope (:meth:`worker_scope`): a stop sets its deadline while
        the write is in flight, and a write that begins once stopping gets ``shutdown_timeout``.
        If cancelled otherwise meanwhile, try once more, shielded and bounded. A write that does
        not finish in time, or fails for good, leaves the job to run again when its lease
        expires: one job's write does not stop the scheduler.

        :raises: the stop's cancellation of ``bound`` (the worker ends), or any other cancellation
        """
        job = outcome.job
        self._bounded.add(bound)
        if self._holdings.stopping:
            bound.deadline = min(bound.deadline, anyio.current_time() + self._settings.shutdown_timeout)
        try:
            await self._write_logged(job, worker)
        except BaseException:
            if bound.cancel_called:  # the stop's bound: no time left for another try
                _log_unrecorded(job, worker)
                raise
            with anyio.move_on_after(self._settings.shutdown_timeout, shield=True) as retry:
                await self._write_logged(job, worker)
            if retry.cancelled_caught:
                _log_unrecorded(job, worker)
            raise
        finally:
            self._bounded.discard(bound)
            if bound.deadline != math.inf and not bound.cancel_called:  # the next write gets its own bound
                bound.deadline = math.inf

    async def hand_back(self, jobs: list[Held[T]], *, started: bool) -> None:
        """Release leased jobs so they are visible again at once, with their attempt given back.

        Shielded, and within ``shutdown_timeout`` in all (the stop's deadline, when stopping),
        whatever the store does: a job that cannot be handed back (the store fails, hangs, or
        refuses) is logged by id and runs again when its lease expires. A job the scheduler
        interrupts did not fail, so its attempt does not count against ``max_attempts`` either.
        """
        left = [held.job for held in jobs]
        deadline = anyio.current_time() + self._settings.shutdown_timeout
        if self._holdings.stop_deadline is not None:  # one bound for the whole stop
            deadline = min(deadline, self._holdings.stop_deadline)
        with anyio.CancelScope(deadline=deadline, shield=True):
            while left:
                job = left[0]
                released = evolved(job, visible_after=None, attempts=max(0, job.attempts - 1))
                try:
                    await self.write(released, "release")
                except Exception as error:  # a permanent store error: try the others all the same
                    logger.error("job %s: could not hand it back: %r", job.id, error)
                else:
                    logger.info("job %s handed back%s", job.id, " (interrupted)" if started else "")
                del left[0]
        if left:
            logger.error(
                "%d job(s) not handed back within shutdown_timeout (%s); they run again when their leases expire",
                len(left),
                ", ".join(job.id for job in left),
            )

    async def write(self, job: Job[T], why: str) -> None:
        """Update the job; a lost lease is logged, not raised: the job is someone else's now."""
        update = CountedCall(lambda: self._store.update_job(job))
        try:
            await call_store(f"update_job ({why})", job.id, update, self._settings.store_backoff)
        except (LeaseLostError, JobNotFoundError) as error:
            if update.count > 1:  # an earlier attempt may have landed, its reply lost, and ended the lease
                logger.info(
                    "job %s: update_job (%s) refused on retry; the attempt whose reply was lost "
                    "may have written it: %s",
                    *(job.id, why, error),
                )
            else:
                logger.warning("job %s: update_job (%s) not written: %s", job.id, why, error)

    async def update(self, job: Job[T], why: str) -> None:
        """Update the job; a lost lease is raised (:class:`~anysched.LeaseLostError`)."""
        await call_store(
            f"update_job ({why})", job.id, lambda: self._store.update_job(job), self._settings.store_backoff
        )

    def bounded_once_stopping(self) -> _Bounded:
        """A scope that a stop bounds by ``shutdown_timeout`` (bounded at once if stopping)."""
        scope = anyio.CancelScope()
        if self._holdings.stopping:
            scope.deadline = anyio.current_time() + self._settings.shutdown_timeout
        return _Bounded(scope, self._bounded)

    async def _write_logged(self, job: Job[T], worker: int) -> None:
        try:
            await self.write(job, _STATUS_TEXT[job.status])
        except Exception as error:
            logger.error(
                "job %s on worker %d: outcome not recorded: %r; it runs again when its lease expires",
                *(job.id, worker, error),
            )


class _Bounded:
    """Enters a write's scope and registers it with the stop, as a plain class: a
    ``@contextmanager`` generator costs noticeably on a path taken once per job."""

    __slots__ = ("_registry", "_scope")

    def __init__(self, scope: anyio.CancelScope, registry: set[anyio.CancelScope]) -> None:
        self._scope = scope
        self._registry = registry

    def __enter__(self) -> anyio.CancelScope:
        self._registry.add(self._scope)
        return self._scope.__enter__()

    def __exit__(self, *exc_info: Any) -> bool:
        self._registry.discard(self._scope)
        return bool(self._scope.__exit__(*exc_info))


def _log_unrecorded(job: Job[T], worker: int) -> None:
    logger.error(
        "job %s on worker %d: outcome not recorded within shutdown_timeout; it runs again when its lease expires",
        *(job.id, worker),
    )
