"""Cancel the scheduler at every await point: no job may stay leased, none may run twice.

Two sweeps. One makes the k-th call of each store operation block until cancelled, then
cancels the scheduler there. The other cancels after n checkpoints of the test body, so
the cancellation lands at whatever await the scheduler's tasks are at by then.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import anyio
import pytest

from anysched import Job, open_scheduler
from support import FAST_RETRY, Recorder, WrappedStore, add_jobs, checkpoints, settled

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]


class CheckpointingHandler(Recorder[int]):
    """Awaits a few times inside the handler, so cancellations land mid-handler too."""

    async def __call__(self, job: Job[int]) -> None:
        await checkpoints(job.payload % 3)
        await super().__call__(job)


@pytest.mark.parametrize("call", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("operation", ["fetch_pending_jobs", "update_job", "add_job"])
async def test_cancelled_while_a_store_call_blocks(operation: str, call: int, clock: Clock) -> None:
    store = WrappedStore[int]()
    await add_jobs(store.inner, 10, due=clock())
    store.block[operation] = call
    handler = CheckpointingHandler()
    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            async with (
                open_scheduler(
                    store,
                    handler,
                    workers=2,
                    buffer_size=1,
                    fetch_interval=0.01,
                    visibility_timeout=0.6,
                    store_backoff=FAST_RETRY,
                    clock=clock,
                ) as scheduler,
                anyio.create_task_group() as tg,
            ):

                async def add_more() -> None:
                    for n in range(10, 20):
                        await scheduler.add_job(Job.create(n, process_after=clock(), id=f"added-{n}"))

                tg.start_soon(add_more)
                await store.blocked.wait()
                scope.cancel()
    assert store.blocked.is_set()
    assert settled(store.inner)
    assert set(handler.runs.values()) <= {1}


@pytest.mark.parametrize("after", range(0, 64, 3))
async def test_cancelled_at_any_moment(after: int, clock: Clock) -> None:
    store = WrappedStore[int]()
    await add_jobs(store.inner, 12, due=clock())
    handler = CheckpointingHandler(fail=lambda job: job.payload % 4 == 0)
    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            async with open_scheduler(store, handler, workers=3, buffer_size=2, clock=clock):
                await checkpoints(after)
                scope.cancel()
    assert settled(store.inner)
    assert set(handler.runs.values()) <= {1}
    finished = sum(1 for job in store.inner.jobs() if job.processed_at is not None)
    assert finished <= handler.finished
