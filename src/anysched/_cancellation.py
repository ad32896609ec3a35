"""Telling the scheduler's own cancellation from a cancellation a handler raises for its own reasons.

Only ours is a cancellation: shutdown with ``cancel_running``, a cancel from outside the
scheduler, the task group tearing down (and, inside the handler's own scope, a lost lease or a
timeout). A ``CancelledError`` that a handler raises because it awaited something that other code
cancelled, or an exception group its own task group raised, is that attempt's failure: treating
it as a cancellation would stop the whole scheduler, silently, and give the job its attempt back.
"""

from __future__ import annotations

import sys

import anyio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


def being_cancelled() -> bool:
    """Whether the current task is being cancelled by a scope around it, or by ``Task.cancel()``.

    Call it outside the handler's own cancel scope: what it sees are the scopes of the scheduler
    and of whoever runs it. anyio reports a cancelled scope as an effective deadline of ``-inf``;
    a scope whose deadline has passed is cancelled too. On asyncio, a native ``Task.cancel()``
    of the worker's task (no anyio scope involved) shows as ``Task.cancelling()`` (Python 3.11+),
    which anyio's own scopes reset when they absorb their cancellation.
    """
    if anyio.current_effective_deadline() <= anyio.current_time():
        return True
    return _native_cancel_requested()


def _native_cancel_requested() -> bool:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or anyio.get_cancelled_exc_class() is not asyncio.CancelledError:
        return False  # not running on asyncio
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return bool(cancelling is not None and cancelling())


def is_control_flow(error: BaseException) -> bool:
    """``KeyboardInterrupt``, ``SystemExit`` or ``GeneratorExit`` (in a group too): never a handler's failure."""
    if isinstance(error, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return True
    if isinstance(error, BaseExceptionGroup):
        inner: tuple[BaseException, ...] = error.exceptions  # pyright: ignore[reportUnknownMemberType,reportUnknownVariableType]
        return any(is_control_flow(leaf) for leaf in inner)
    return False
