"""One life of one scheduler instance (its process, its cancel scope, its fate), and how a handler run
on it is performed and recorded."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from anysched import FailJob, RetryJob, Scheduler

from .clock import chaos_clock
from .proxy import Process
from .records import Run, StopRequest
from .workload import BEHAVIOURS, Attempt, RunEnd, Work, cancel_requested, why_cancelled


@dataclass(eq=False)
class Incarnation:
    """One life of one scheduler instance: its process proxy, its cancel scope, its fate."""

    slot: int
    number: int
    process: Process
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    scheduler: Scheduler[Work] | None = None
    cancelling: bool = False
    graceful: bool = False
    dead: bool = False
    drain: bool = False
    running: set[Run] = field(default_factory=set[Run])
    stops: list[StopRequest] = field(default_factory=list[StopRequest])
    stopped: anyio.Event = field(default_factory=anyio.Event)
    stopped_at: float | None = None

    @property
    def name(self) -> str:
        return "drain" if self.drain else f"i{self.slot}.{self.number}"

    @property
    def alive(self) -> bool:
        """Not dead, not asked to stop."""
        return not (self.dead or self.cancelling or self.graceful)

    def why_cancelled(self, deadline: float) -> RunEnd:
        """Why a run of this incarnation was cancelled, given its job timeout's ``deadline``."""
        return why_cancelled(dead=self.dead, cancelling=self.cancelling, deadline=deadline)


async def perform(run: Run, attempt: Attempt, incarnation: Incarnation, deadline: float) -> None:
    """Run ``run``'s drawn behaviour and record how it ended (and, if we cancelled it, why).

    :param deadline: the scheduler's job-timeout deadline, exactly, as the handler found it: a
        cancellation at or past it is the timeout
    """
    incarnation.running.add(run)
    try:
        await BEHAVIOURS[run.action](attempt)
        run.kind = "completed"
    except anyio.get_cancelled_exc_class():
        foreign = attempt.foreign and not cancel_requested()
        run.kind = "error" if foreign else incarnation.why_cancelled(deadline)
        raise
    except BaseException as error:  # errors and groups, some with our cancellation inside
        run.kind = "retry" if isinstance(error, RetryJob) else "fail" if isinstance(error, FailJob) else "error"
        if cancel_requested():
            run.kind, run.after_cancel = incarnation.why_cancelled(deadline), "raised"
        raise
    else:
        if cancel_requested():
            run.kind, run.after_cancel = incarnation.why_cancelled(deadline), "swallowed"
    finally:
        run.end, run.ended = chaos_clock(), anyio.current_time()
        incarnation.running.discard(run)
