"""Shut a scheduler down on SIGINT/SIGTERM, for programs whose main job is the scheduler."""

from __future__ import annotations

import logging
import signal
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._scheduler import Scheduler

logger = logging.getLogger("anysched")


async def shutdown_on_signals(
    scheduler: Scheduler[Any], *signals: signal.Signals, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Return when ``scheduler`` stops; shut it down when a signal arrives.

    The first signal (SIGINT or SIGTERM unless ``signals`` are given) shuts the scheduler
    down gracefully: running handlers finish, unstarted jobs are handed back. A second one
    cancels the running handlers too (their jobs are handed back), for the impatient ^C.
    Signals can only be received in the main thread. ``await task_group.start(shutdown_on_signals,
    scheduler)`` returns once the signals are watched: a signal sent after it is never missed.
    """
    watched = signals or (signal.SIGINT, signal.SIGTERM)
    with anyio.open_signal_receiver(*watched) as received:
        async with anyio.create_task_group() as tg:

            async def stop_listening_when_stopped() -> None:
                await scheduler.wait_stopped()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_listening_when_stopped, name="anysched-signal-watch")
            task_status.started()
            graceful = True
            async for signum in received:
                name = signal.Signals(signum).name
                if graceful:
                    logger.warning("%s received: shutting down gracefully (again to cancel running jobs)", name)
                else:
                    logger.warning("%s received again: cancelling running jobs", name)
                scheduler.shutdown(cancel_running=not graceful)
                graceful = False
