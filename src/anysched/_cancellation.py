"""Telling the scheduler's own cancellation from a cancellation a handler raises for its own reasons.

Only ours is a cancellation: shutdown with ``cancel_running``, a cancel from outside the
scheduler, the task group tearing down (and, inside the handler's own scope, a lost lease or a
timeout). A ``CancelledError`` that a handler raises because it awaited something that other code
cancelled, or an exception group its own task group raised, is that attempt's failure: treating
it as a cancellation would stop the whole scheduler, silently, and give the job its attempt back.
"""

from __future__ import annotations

import anyio

from ._exceptions import leaves


def being_cancelled() -> bool:
    """Whether a cancel scope around the current task has been cancelled (or its deadline passed).

    Call it outside the handler's own cancel scope: what it sees are the scopes of the scheduler
    and of whoever runs it. anyio reports a cancelled scope as an effective deadline of ``-inf``.

    A native ``Task.cancel()`` of a worker's task on asyncio is not taken for ours: anyio's task
    groups turn a cancel from outside into a scope cancellation, and a handler can leave its own
    task's cancel count raised (``Task.cancelling()``), which would otherwise make every later
    failure on that worker look like a cancellation and stop the scheduler silently.
    """
    return anyio.current_effective_deadline() <= anyio.current_time()


def is_control_flow(error: BaseException) -> bool:
    """``KeyboardInterrupt``, ``SystemExit`` or ``GeneratorExit`` (in a group too): never a handler's failure."""
    return any(isinstance(leaf, (KeyboardInterrupt, SystemExit, GeneratorExit)) for leaf in leaves(error))
