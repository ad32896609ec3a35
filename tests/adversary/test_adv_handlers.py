"""Hostile handlers: the scheduler keeps running, and every job is accounted for."""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
import pytest
from adv_support import peek, settled, until

from anysched import Job, JobStatus, MemoryStore, Scheduler, open_scheduler
from support import RunOptions, foreign_cancellation

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing has it from Python 3.11

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]
Handler = Callable[[Job[str]], Awaitable[None]]


async def run_all(
    store: MemoryStore[str], handler: Handler, clock: Clock, ids: list[str], **options: Unpack[RunOptions]
) -> Scheduler[str]:
    for job_id in ids:
        await store.add_job(Job.create(job_id, id=job_id, process_after=clock()))
    scheduler = Scheduler(store, handler, clock=clock, fetch_interval=0.05, **options)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await until(lambda: all(peek(store, i).status is not JobStatus.PENDING for i in ids))
            scheduler.shutdown()
    return scheduler


async def test_a_cancellation_captured_in_one_job_raised_in_later_jobs(clock: Clock) -> None:
    store = MemoryStore[str]()
    kept: list[BaseException] = []

    async def handler(job: Job[str]) -> None:
        if not kept:
            kept.append(await foreign_cancellation())
        if job.payload.startswith("bad"):
            raise kept[0]  # the same exception object, raised again and again

    ids = [f"bad{n}" for n in range(3)] + ["good"]
    scheduler = await run_all(store, handler, clock, ids, workers=1)
    assert [(await store.get_job(i)).status for i in ids] == [JobStatus.FAILED] * 3 + [JobStatus.COMPLETED]
    assert settled(store)
    assert scheduler.statistics().held == 0


async def test_nested_groups_with_a_cancellation_deep_inside_are_failures(clock: Clock) -> None:
    store = MemoryStore[str]()

    async def handler(job: Job[str]) -> None:
        cancel = await foreign_cancellation()
        raise BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [cancel, ValueError("x")]), KeyError("k")])

    await run_all(store, handler, clock, ["g"], workers=1)
    assert (await store.get_job("g")).status is JobStatus.FAILED


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
async def test_control_flow_in_a_group_stops_the_scheduler_and_hands_every_job_back(kind: type, clock: Clock) -> None:
    store = MemoryStore[str]()
    started = anyio.Event()
    for n in range(4):
        await store.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))

    async def handler(job: Job[str]) -> None:
        if job.id == "j0":
            await started.wait()
            raise BaseExceptionGroup("g", [ValueError("v"), ExceptionGroup("h", [KeyError("k")]), kind()])
        if job.id == "j1":
            started.set()
        await anyio.sleep_forever()

    scheduler = Scheduler(store, handler, workers=2, buffer_size=2, clock=clock)
    with anyio.fail_after(10):
        with pytest.raises(BaseExceptionGroup) as raised:
            async with anyio.create_task_group() as tg:
                await tg.start(scheduler.run)
        await scheduler.wait_stopped()
    assert raised.group_contains(kind)
    assert settled(store)
    assert all(job.attempts == 0 for job in store.jobs())  # every attempt given back
    assert scheduler.statistics().held == 0


async def test_an_error_raised_while_timing_out_is_a_timeout(clock: Clock) -> None:
    store = MemoryStore[str]()

    async def handler(job: Job[str]) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            raise ExceptionGroup("cleanup", [ValueError("cleanup failed")])

    await run_all(store, handler, clock, ["t", "u"], workers=1, job_timeout=0.05)
    for job_id in ("t", "u"):
        job = await store.get_job(job_id)
        assert job.status is JobStatus.FAILED
        assert job.last_error is not None
        assert "JobTimeoutError" in job.last_error


async def test_a_handler_that_never_awaits_does_not_starve_the_scheduler(clock: Clock) -> None:
    store = MemoryStore[str]()
    runs: Counter[str] = Counter()

    async def handler(job: Job[str]) -> None:
        runs[job.id] += 1

    ids = [f"n{n}" for n in range(200)]
    scheduler = await run_all(store, handler, clock, ids, workers=3, buffer_size=5)
    assert set(runs.values()) == {1}
    assert scheduler.statistics().held == 0


async def test_a_handler_swallowing_cancel_running_and_returning(clock: Clock) -> None:
    """cancel_running: a handler that swallows its cancellation and returns. Its job must not end
    leased to nobody (it completed, or it was handed back)."""
    store = MemoryStore[str]()
    started = anyio.Event()
    await store.add_job(Job.create("s", id="s", process_after=clock()))

    async def handler(job: Job[str]) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            return

    scheduler = Scheduler(store, handler, clock=clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await started.wait()
            scheduler.shutdown(cancel_running=True)
    assert settled(store)
    assert scheduler.statistics().held == 0


async def test_a_handler_raising_while_the_whole_scheduler_is_cancelled_from_a_deadline(clock: Clock) -> None:
    store = MemoryStore[str]()
    started = anyio.Event()
    for n in range(3):
        await store.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))

    async def handler(job: Job[str]) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
            raise RuntimeError("cleanup failed")

    with anyio.fail_after(10):
        with anyio.move_on_after(0.2) as outside:
            async with open_scheduler(store, handler, workers=2, buffer_size=1, clock=clock):
                await anyio.sleep_forever()
    assert outside.cancelled_caught
    assert settled(store)
    assert all(job.attempts == 0 for job in store.jobs())


async def stops_silently(scheduler: Scheduler[str], store: MemoryStore[str], job_id: str) -> bool:
    """Run ``scheduler`` until ``job_id`` is no longer pending; ``True`` if ``run()`` instead
    *returned*, without an error, before anyone called ``shutdown()`` (or stalled for 3 s)."""
    returned = anyio.Event()

    async def run() -> None:
        try:
            await scheduler.run()
        except Exception:
            return
        returned.set()

    silent = False  # bound here too: a type checker cannot tell that a task group never swallows errors
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.move_on_after(3) as stall:
                await until(lambda: returned.is_set() or peek(store, job_id).status is not JobStatus.PENDING)
            silent = returned.is_set() or stall.cancelled_caught
            scheduler.shutdown()
    return silent


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio has no Task.cancel()
async def test_asyncio_a_handler_cancelling_its_own_task_does_not_stop_the_scheduler_silently(clock: Clock) -> None:
    """A handler calls Task.cancel() on its own task (or a library does on its behalf) and lets the
    CancelledError out. Nobody cancelled the scheduler: it is the attempt's failure (or at least an
    error out of run()), never a silent, successful return of run() as if shutdown() was called."""
    import asyncio

    store = MemoryStore[str]()

    async def handler(job: Job[str]) -> None:
        if job.id == "self":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)

    for job_id in ("self", "after"):
        await store.add_job(Job.create(job_id, id=job_id, process_after=clock()))
    scheduler = Scheduler(store, handler, workers=1, clock=clock, fetch_interval=0.05)
    assert not await stops_silently(scheduler, store, "after")
    assert settled(store)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio has no Task.cancel()
async def test_asyncio_a_leaked_cancel_request_does_not_turn_later_failures_into_cancellations(clock: Clock) -> None:
    """A handler cancels its own task and swallows the CancelledError without uncancel(): the task's
    cancelling() count stays 1. The next job's ordinary ValueError is that job's failure."""
    import asyncio

    store = MemoryStore[str]()

    async def handler(job: Job[str]) -> None:
        if job.id == "leak":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # swallowed, not uncancelled
                await asyncio.sleep(0)
            return
        raise ValueError("an ordinary failure")

    for job_id in ("leak", "fails"):
        await store.add_job(Job.create(job_id, id=job_id, process_after=clock()))
    scheduler = Scheduler(store, handler, workers=1, clock=clock, fetch_interval=0.05)
    assert not await stops_silently(scheduler, store, "fails")
    assert (await store.get_job("leak")).status is JobStatus.COMPLETED
    assert (await store.get_job("fails")).status is JobStatus.FAILED
