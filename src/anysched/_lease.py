"""The lease keeper: renews the leases of running jobs, and of buffered jobs before they start.

A lease is stored in wall-clock time (``visible_after``), because every process that shares
the store compares it with its own clock. But when to renew it, and when to give up on it, this
process decides on the monotonic clock, measured from the call that set the lease
(:class:`~anysched._holdings.Held`): a step of the wall clock changes nothing here.

Only a refusal by the store is certain: the handler is cancelled and nothing is written. A
renewal that went unanswered until the lease ended may have landed: the handler is cancelled,
and one that still ends on its own has its outcome written, fenced by the lease token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from ._completer import Completer
from ._exceptions import JobNotFoundError, LeaseLostError
from ._holdings import Held, Holdings
from ._settings import Settings

T = TypeVar("T")

logger = logging.getLogger("anysched")

RENEW_WHEN_REMAINING = 2 / 3
"""Renew a lease once a third of the visibility timeout has passed, so two renewals can fail
before it runs out."""

CLOCK_STEP_WARNING = 1.0
"""Seconds by which the wall clock may drift from the monotonic clock between two rounds of the
lease keeper before it says, once per step, that the wall clock stepped."""


class LeaseKeeper(Generic[T]):
    """Keeps the leases of a scheduler's jobs.

    :param settings: the scheduler's settings (``visibility_timeout``, the clock)
    :param holdings: the scheduler's shared state (the running jobs)
    :param completer: writes the renewals
    """

    def __init__(self, settings: Settings, holdings: Holdings[T], completer: Completer[T]) -> None:
        self._settings = settings
        self._holdings = holdings
        self._completer = completer
        self._lease = settings.visibility_timeout

    async def keep(self, tg: TaskGroup) -> None:
        """Renew every running job's lease once a third of it has passed, in tasks of ``tg``; forever."""
        watch = _ClockWatch(self._settings.clock)
        while True:
            await anyio.sleep(self._lease.total_seconds() / 6)
            watch.check()
            now = anyio.current_time()
            for held in list(self._holdings.running):
                if held.renewal is not None or held.finished or held.in_doubt:
                    continue
                left = held.lease_left(self._lease, now)
                if left <= 0:  # every renewal failed (a permanent store error, say)
                    self._lose(held, "its lease ended without a renewal", refused=False)
                elif left < RENEW_WHEN_REMAINING:
                    held.renewal = anyio.CancelScope()
                    tg.start_soon(self._renew, held, held.renewal, name=f"anysched-renew-{held.job.id}")

    async def fresh_lease(self, held: Held[T]) -> float | None:
        """When a buffered job's handler may start: at once if its lease will outlast the first
        renewal, after renewing it if not; ``None`` if it may not run.

        A job that waited in the buffer may be near its lease's end; renewing it first means
        the handler never starts on a job someone else may already have claimed. Bounded like
        the renewals of running jobs (by the lease's end) and, once stopping, by the stop.

        :returns: the monotonic time to measure the handler's timeout from, or ``None``
        """
        now = anyio.current_time()  # read once per job: the executor's start too
        if held.lease_left(self._lease, now) >= RENEW_WHEN_REMAINING:
            return now
        renewed = held.renewed(now, self._lease, self._settings.now())
        why = "its lease ended before the store renewed it"
        try:
            with anyio.move_on_after(held.lease_end(self._lease) - now), self._completer.bounded_once_stopping():
                await self._completer.update(renewed, "renew lease")
                held.job, held.anchor = renewed, now
                return anyio.current_time()
        except (LeaseLostError, JobNotFoundError):
            why = "the store says its lease was lost"
        except Exception as error:  # a permanent store error: this job waits out its lease
            why = f"its lease could not be renewed: {error!r}"
        logger.warning("job %s waited for a worker and %s; not running it", held.job.id, why)
        return None

    async def _renew(self, held: Held[T], scope: anyio.CancelScope) -> None:
        now = anyio.current_time()
        renewed = held.renewed(now, self._lease, self._settings.now())
        try:
            with scope, anyio.move_on_after(held.lease_end(self._lease) - now) as lease_left:
                try:
                    await self._completer.update(renewed, "renew lease")
                except (LeaseLostError, JobNotFoundError):
                    if held.job.lease == renewed.lease:  # not re-leased by one of our own claims meanwhile
                        self._lose(held, "the store says its lease was lost", refused=True)
                except Exception as error:  # permanent: the keeper tries again, until the lease ends
                    logger.error("job %s: its lease could not be renewed: %r", held.job.id, error)
                else:
                    if held.job.lease == renewed.lease:
                        held.job, held.anchor = renewed, now
            if lease_left.cancelled_caught:
                self._lose(held, "its lease expired before the store could renew it", refused=False)
        finally:
            held.renewal = None

    @staticmethod
    def _lose(held: Held[T], why: str, *, refused: bool) -> None:
        """Stop a handler whose lease may be gone (certainly, when the store ``refused`` it)."""
        held.refused = held.refused or refused
        if held.finished:
            logger.debug("job %s: lease in doubt after its handler ended: %s", held.job.id, why)
            return
        held.in_doubt = True
        logger.warning("job %s on worker %d: cancelling the handler: %s", held.job.id, held.worker, why)
        held.scope.cancel()


class _ClockWatch:
    """Notices a step of the wall clock against the monotonic one, and says so once per step.

    Leases are stored in wall-clock time that every process sharing the store compares with its
    own: a process whose clock is off by more than a lease can claim jobs others still hold.
    Timing here does not depend on it; the log line is for the operator.
    """

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._wall, self._monotonic = clock(), anyio.current_time()

    def check(self) -> None:
        wall, monotonic = self._clock(), anyio.current_time()
        step = (wall - self._wall).total_seconds() - (monotonic - self._monotonic)
        if abs(step) > CLOCK_STEP_WARNING:
            logger.warning(
                "the wall clock stepped %s by %.1fs; leases keep their timing (monotonic), but processes "
                "sharing a store must agree on the time to well within visibility_timeout",
                "forward" if step > 0 else "back",
                abs(step),
            )
        self._wall, self._monotonic = wall, monotonic
