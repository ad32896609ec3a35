"""Shutdown and cancellation: running jobs finish or are handed back, buffered ones always are."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import datetime, timedelta

import anyio
import pytest

from anysched import DuplicateJobError, Job, JobStatus, MemoryStore, Scheduler, open_scheduler, shutdown_on_signals
from support import Recorder, WrappedStore, add_jobs, settled

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]


def spy_on_shutdown(scheduler: Scheduler[int]) -> list[anyio.Event]:
    """Events set by the first and second call of ``scheduler.shutdown``."""
    calls = [anyio.Event(), anyio.Event()]
    original = scheduler.shutdown

    def shutdown(*, cancel_running: bool = False) -> None:
        original(cancel_running=cancel_running)
        next(event for event in calls if not event.is_set()).set()

    scheduler.shutdown = shutdown  # type: ignore[method-assign]
    return calls


async def test_graceful_shutdown_finishes_running_jobs_and_hands_back_buffered_ones(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 10, due=clock())
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=2, buffer_size=3, clock=clock) as scheduler:
            await handler.wait_running(2)
            scheduler.shutdown()
            await anyio.wait_all_tasks_blocked()
            assert handler.running == 2  # shutdown waits for running handlers
            handler.gate.set()
    assert handler.finished == 2
    assert await store.count(JobStatus.COMPLETED) == 2
    assert await store.count(JobStatus.PENDING) == 8
    assert settled(store)
    assert all(job.attempts == 0 for job in store.jobs() if job.status is JobStatus.PENDING)


async def test_leaving_the_block_waits_for_running_handlers(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 3, due=clock())
    handler = Recorder[int]()
    gate = handler.gate = anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def open_later() -> None:
                await handler.wait_running(3)
                gate.set()

            tg.start_soon(open_later)
            async with open_scheduler(store, handler, workers=3, clock=clock):
                await handler.wait_running(3)
    assert await store.count(JobStatus.COMPLETED) == 3


async def test_cancellation_from_outside_hands_back_running_and_buffered_jobs(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 10, due=clock())
    handler = Recorder[int]()
    handler.gate = anyio.Event()  # never opened
    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            async with open_scheduler(store, handler, workers=3, buffer_size=2, clock=clock):
                await handler.wait_running(3)
                scope.cancel()
    assert scope.cancelled_caught
    assert await store.count(JobStatus.PENDING) == 10
    assert settled(store)
    # interrupted jobs did not fail: like unstarted ones, they get their attempt back
    assert all(job.attempts == 0 for job in store.jobs())


async def test_shutdown_with_cancel_running(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 4, due=clock())
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=2, clock=clock) as scheduler:
            await handler.wait_running(2)
            scheduler.shutdown(cancel_running=True)
    assert await store.count(JobStatus.PENDING) == 4
    assert settled(store)


async def test_an_error_in_the_block_cancels_the_handlers_and_hands_jobs_back(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 4, due=clock())
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    with anyio.fail_after(30), pytest.raises(KeyError) as raised:  # noqa: PT012 -- as itself, not in a group
        async with open_scheduler(store, handler, workers=2, clock=clock):
            await handler.wait_running(2)
            raise KeyError("the program failed")
    assert raised.value.args == ("the program failed",)
    assert settled(store)
    assert await store.count(JobStatus.PENDING) == 4


async def test_an_error_of_the_block_can_be_caught_as_itself(clock: Clock) -> None:
    """The first-hour trap: ``except DuplicateJobError`` around the block caught nothing."""
    store = MemoryStore[int]()
    await store.add_job(Job.create(1, id="same"))
    caught: list[DuplicateJobError] = []
    with anyio.fail_after(30):
        try:
            async with open_scheduler(store, Recorder[int](), clock=clock) as scheduler:
                await scheduler.add_job(Job.create(2, id="same"))
        except DuplicateJobError as error:
            caught.append(error)
    assert [error.job_id for error in caught] == ["same"]


async def test_the_schedulers_own_failure_still_comes_as_a_group(clock: Clock) -> None:
    """Only what the block raised is unwrapped: a failure of the scheduler's tasks keeps its group."""

    class Broken(MemoryStore[int]):
        async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[int]]:
            raise RuntimeError("the store is broken")

    with (
        anyio.fail_after(30),
        pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="broken"), flatten_subgroups=True),
    ):
        async with open_scheduler(Broken(), Recorder[int](), clock=clock):
            await anyio.sleep_forever()


async def test_hand_back_is_bounded_by_shutdown_timeout(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    store = WrappedStore[int]()
    await add_jobs(store.inner, 2, due=clock())
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    store.block["update_job"] = 1  # the first hand-back never returns
    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            async with open_scheduler(store, handler, workers=1, buffer_size=1, shutdown_timeout=0.2, clock=clock):
                await handler.wait_running(1)
                scope.cancel()
    # one hand-back hung until shutdown_timeout; that job reappears when its lease expires
    leased = [job for job in store.inner.jobs() if job.visible_after is not None]
    released = [job for job in store.inner.jobs() if job.visible_after is None]
    assert len(leased) == len(released) == 1
    vt = timedelta(seconds=30)
    assert [job.id for job in await store.inner.fetch_pending_jobs(clock(), 5, vt)] == [released[0].id]
    expiry = leased[0].visible_after
    assert expiry is not None
    assert [job.id for job in await store.inner.fetch_pending_jobs(expiry, 5, vt)] == [leased[0].id]
    assert any("not handed back within shutdown_timeout" in r.getMessage() for r in caplog.records)


async def test_first_signal_shuts_down_gracefully(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 3, due=clock())
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=1, clock=clock) as scheduler, anyio.create_task_group() as tg:
            first_shutdown, _ = spy_on_shutdown(scheduler)
            await tg.start(shutdown_on_signals, scheduler, signal.SIGUSR1)
            await handler.wait_running(1)
            os.kill(os.getpid(), signal.SIGUSR1)
            await first_shutdown.wait()
            handler.gate.set()
    assert await store.count(JobStatus.COMPLETED) == 1
    assert await store.count(JobStatus.PENDING) == 2
    assert settled(store)


async def test_second_signal_cancels_running_jobs(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 3, due=clock())
    handler = Recorder[int]()
    handler.gate = anyio.Event()  # never opened
    with anyio.fail_after(30):
        scheduler = Scheduler(store, handler, workers=1, clock=clock)
        async with anyio.create_task_group() as tg:
            first_shutdown, second_shutdown = spy_on_shutdown(scheduler)
            await tg.start(scheduler.run)
            await tg.start(shutdown_on_signals, scheduler, signal.SIGUSR1)
            await handler.wait_running(1)
            os.kill(os.getpid(), signal.SIGUSR1)
            await first_shutdown.wait()  # trio folds a signal sent twice before it is read
            os.kill(os.getpid(), signal.SIGUSR1)
            await second_shutdown.wait()
    assert await store.count(JobStatus.PENDING) == 3
    assert settled(store)
