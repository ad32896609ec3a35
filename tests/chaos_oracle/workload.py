"""The jobs and their handlers: the payload, and every behaviour a handler may draw (seeded per job and run)."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, cast

import anyio
import anyio.lowlevel

from anysched import FailJob, RetryJob

from .config import ChaosConfig

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

Action = Literal[
    "ok",
    "error",
    "retry",
    "fail",
    "timeout",
    "long",
    "kill",
    "foreign cancel",
    "group",
    "group with cancel",
    "error in cancel",
    "swallow cancel",
]
RunEnd = Literal["running", "completed", "error", "retry", "fail", "timeout", "interrupted", "died", "lost"]

FAIL_REASON = "chaos: the handler gave up (FailJob)"
ERROR_MESSAGE = "chaos: the handler raised"
POISON_OUTSIDE_CHAOS = "chaos: a poison job run outside the chaos phase"
FOREIGN_MESSAGE = "chaos: the handler's inner work was cancelled"
GROUP_MESSAGE = "chaos: a task in the handler's task group failed"
CLEANUP_MESSAGE = "chaos: the handler's clean-up failed while it was cancelled"


@dataclass(frozen=True)
class Work:
    """The payload of every chaos job."""

    n: int


@dataclass(eq=False)
class Attempt:
    """What a handler behaviour works with: the knobs, its own seeded draw, and a way to die (poison)."""

    config: ChaosConfig
    backend: str
    draw: random.Random
    die: Callable[[], Awaitable[None]]
    foreign: bool = False
    """Set just before the behaviour lets a cancellation of its own out (nobody cancelled the scheduler)."""


Behaviour = Callable[[Attempt], Awaitable[None]]


async def _quick(a: Attempt) -> None:
    await anyio.sleep(a.draw.uniform(0.0, a.config.quick_run))


async def _error(a: Attempt) -> None:
    await _quick(a)
    raise ValueError(ERROR_MESSAGE)


async def _retry(a: Attempt) -> None:
    await _quick(a)
    raise RetryJob("chaos: not now", delay=a.draw.uniform(0.001, a.config.retry_delay))


async def _fail(a: Attempt) -> None:
    await _quick(a)
    raise FailJob(FAIL_REASON)


async def _past_timeout(a: Attempt) -> None:
    await anyio.sleep(a.config.job_timeout * 3)


async def _long(a: Attempt) -> None:
    await anyio.sleep(a.draw.uniform(a.config.visibility_timeout * 1.2, a.config.job_timeout * 0.8))


async def _poison(a: Attempt) -> None:
    await a.die()


async def _foreign_cancel(a: Attempt) -> None:
    """asyncio: the handler cancels an inner task and awaits its result: ``CancelledError`` comes out
    though nobody cancelled the scheduler. trio has no such thing: the handler's inner nursery is
    cancelled (its own scope), then it raises an error."""
    await _quick(a)
    if a.backend == "asyncio":
        import asyncio

        inner = asyncio.ensure_future(asyncio.sleep(3600))
        inner.cancel()
        await asyncio.wait([inner])  # our own cancellation, if one comes, interrupts this wait
        a.foreign = True
        inner.result()  # raises the inner task's CancelledError
        raise AssertionError("unreachable: a cancelled task has no result")
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep_forever)
        await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    raise ValueError(FOREIGN_MESSAGE)


async def _raise(error: Exception) -> None:
    raise error


async def _group(a: Attempt) -> None:
    """The handler's own task group: two tasks raise at once (an ``ExceptionGroup`` of two)."""
    await _quick(a)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_raise, ValueError(GROUP_MESSAGE))
        tg.start_soon(_raise, KeyError(GROUP_MESSAGE))


async def _group_with_cancel(a: Attempt) -> None:
    """The handler's own task group: one task raises while its sibling is cancelled and cleans up."""

    async def sibling() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(a.config.quick_run)

    async def failing() -> None:
        await _quick(a)
        raise ValueError(GROUP_MESSAGE)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sibling)
        tg.start_soon(failing)


async def _error_in_cancel(a: Attempt) -> None:
    """Runs until we cancel it (timeout, lost lease, shutdown); its clean-up raises a ``ValueError``, a
    group of errors, or a group of an error and our own cancellation (a nursery in the clean-up)."""
    variant = a.draw.randrange(3)
    try:
        await anyio.sleep(a.config.job_timeout * 3)
    except anyio.get_cancelled_exc_class() as cancelled:
        if variant == 0:
            raise ValueError(CLEANUP_MESSAGE) from None
        if variant == 1:
            raise ExceptionGroup(CLEANUP_MESSAGE, [ValueError(CLEANUP_MESSAGE), KeyError(CLEANUP_MESSAGE)]) from None
        raise BaseExceptionGroup(CLEANUP_MESSAGE, [ValueError(CLEANUP_MESSAGE), cancelled]) from None


async def _swallow_cancel(a: Attempt) -> None:
    """Runs until we cancel it, catches the cancellation, waits a shielded moment, returns normally."""
    try:
        await anyio.sleep(a.config.job_timeout * 3)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await anyio.sleep(a.draw.uniform(0.0, a.config.quick_run))


HANDLERS: tuple[tuple[Action, str, Behaviour], ...] = (
    ("error", "p_error", _error),
    ("retry", "p_retry", _retry),
    ("fail", "p_fail", _fail),
    ("timeout", "p_timeout", _past_timeout),
    ("long", "p_long", _long),
    ("foreign cancel", "p_foreign_cancel", _foreign_cancel),
    ("group", "p_group", _group),
    ("group with cancel", "p_group_with_cancel", _group_with_cancel),
    ("error in cancel", "p_error_in_cancel", _error_in_cancel),
    ("swallow cancel", "p_swallow_cancel", _swallow_cancel),
)
"""Every behaviour a handler may draw: (action, the config knob of its chance, what it does)."""

BEHAVIOURS: dict[Action, Behaviour] = {"ok": _quick, "kill": _poison}
BEHAVIOURS.update((action, run) for action, _, run in HANDLERS)


def draw_action(config: ChaosConfig, job_id: str, run_number: int) -> Action:
    """What a job's handler does on its ``run_number``-th run (from 0): a seeded draw, the same every run."""
    draw = random.Random(f"{config.seed}/{job_id}/{run_number}").random()
    for action, knob, _ in HANDLERS:
        p: float = getattr(config, knob)
        if draw < p:
            return action
        draw -= p
    return "ok"


def cancel_requested() -> bool:
    """Whether a scope around us (the scheduler's: timeout, lost lease, shutdown, death) has been cancelled."""
    return anyio.current_effective_deadline() == -math.inf


def why_cancelled(*, dead: bool, cancelling: bool, deadline: float) -> RunEnd:
    """Why we cancelled a run: its process died, its instance was stopped, its timeout, or a lost lease."""
    if dead:
        return "died"
    if cancelling:
        return "interrupted"
    if anyio.current_time() >= deadline:
        return "timeout"
    return "lost"


def describe(error: BaseException) -> str:
    """An exception's type and message; a group's leaves too."""
    if isinstance(error, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", error)  # isinstance cannot tell the members' type
        leaves = ", ".join(describe(leaf) for leaf in group.exceptions)
        return f"{type(group).__name__}[{leaves}]"
    return f"{type(error).__name__}: {error}"
