"""The bound on outcome writes: one cancel scope per worker, bounded by a stop only while it writes.

Whether a write began before the stop or after it, a graceful stop returns within
``shutdown_timeout`` while the store hangs, and a worker that wrote its outcome while no stop
was under way runs the next job unbounded.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import anyio
import pytest

from anysched import Job, JobStatus, open_scheduler
from support import Recorder, WrappedStore, add_jobs, peek, tally, until

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]


@pytest.mark.parametrize("cancel_running", [False, True])
async def test_a_stop_bounds_an_outcome_write_already_in_flight(
    cancel_running: bool, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = WrappedStore[int]()
    store.block["update_job"] = 1  # the first job's outcome; every later write lands
    handler = Recorder[int]()
    jobs = await add_jobs(store.inner, 1, due=clock())
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=1, clock=clock, shutdown_timeout=2) as scheduler:
            await store.blocked.wait()  # the write hangs before anyone stops the scheduler
            begin = anyio.current_time()
            scheduler.shutdown(cancel_running=cancel_running)
        stopped_in = anyio.current_time() - begin
    if cancel_running:  # cut off at once; one more try, shielded and bounded, lands
        assert stopped_in < 1.5
        assert peek(store.inner, jobs[0].id).status is JobStatus.COMPLETED
    else:  # the stop's deadline cuts the write off: it is not tried again
        assert 1.5 < stopped_in < 3
        assert "outcome not recorded within shutdown_timeout" in caplog.text
        assert peek(store.inner, jobs[0].id).visible_after is not None  # leased until its lease ends
    assert store.calls["update_job"] == (2 if cancel_running else 1)


async def test_a_write_without_a_stop_leaves_the_worker_unbounded(clock: Clock) -> None:
    store = WrappedStore[int]()

    async def slow(job: Job[int]) -> None:
        await anyio.sleep(0.4)  # the job's own work; four of them outlast shutdown_timeout

    jobs = await add_jobs(store.inner, 4, due=clock())
    with anyio.fail_after(30):
        async with open_scheduler(store, slow, workers=1, clock=clock, shutdown_timeout=1) as scheduler:
            await until(lambda: tally(store.inner, JobStatus.COMPLETED) == len(jobs))
            scheduler.shutdown()
    assert store.calls["update_job"] == len(jobs)  # no write cut off, no handler cut off
