"""Stops: bounded whatever the store does; nothing ends leased to nobody."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import pytest
from adv_support import ScriptedStore, leased, peek, settled, tally, until

from anysched import Backoff, Job, JobStatus, Scheduler, TransientStoreError, open_scheduler

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]
FAST = Backoff(initial=0.001, maximum=0.01, jitter=0.001)


async def hang(*_: Any) -> None:
    await anyio.sleep_forever()


async def transient(*_: Any) -> None:
    raise TransientStoreError("down")


def is_renewal_of(job_id: str) -> Callable[[Job[Any]], bool]:
    return lambda job: job.id == job_id and job.status is JobStatus.PENDING and job.visible_after is not None


@pytest.mark.parametrize("failure", ["hang", "transient"])
async def test_graceful_shutdown_bounded_while_a_buffered_jobs_renewal_hangs(failure: str, clock: Clock) -> None:
    store = ScriptedStore()
    await store.inner.add_job(Job.create("A", id="A", process_after=clock()))
    await store.inner.add_job(Job.create("B", id="B", process_after=clock()))
    blocked = anyio.Event()

    async def before_update(op: str, call: int, args: tuple[Any, ...]) -> None:
        if is_renewal_of("B")(args[0]):
            blocked.set()
            await (hang() if failure == "hang" else transient())

    store.before["update_job"] = before_update

    async def handler(job: Job[str]) -> None:
        if job.id == "A":
            await anyio.sleep(0.3)  # B waits in the buffer past a third of its lease

    scheduler = Scheduler(
        store,
        handler,
        workers=1,
        buffer_size=1,
        clock=clock,
        visibility_timeout=0.6,
        shutdown_timeout=0.5,
        fetch_interval=0.05,
        store_backoff=FAST,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        with anyio.fail_after(10):
            await blocked.wait()
        scheduler.shutdown()
        with anyio.fail_after(3):  # shutdown_timeout 0.5 and no handler running
            await scheduler.wait_stopped()
    assert (await store.get_job("A")).status is JobStatus.COMPLETED


@pytest.mark.parametrize("failure", ["hang", "transient"])
@pytest.mark.parametrize("operation", ["fetch_pending_jobs", "next_due_time"])
async def test_graceful_shutdown_bounded_while_claims_fail(operation: str, failure: str, clock: Clock) -> None:
    store = ScriptedStore()
    started = anyio.Event()

    async def before(op: str, call: int, args: tuple[Any, ...]) -> None:
        if call >= 2:
            started.set()
            await (hang() if failure == "hang" else transient())

    store.before[operation] = before

    async def handler(job: Job[str]) -> None:
        pass

    with anyio.fail_after(5):
        async with open_scheduler(
            store, handler, clock=clock, fetch_interval=0.01, shutdown_timeout=0.5, store_backoff=FAST
        ):
            await started.wait()


@pytest.mark.parametrize("failure", ["hang", "transient"])
async def test_graceful_shutdown_bounded_while_outcome_and_hand_back_fail(failure: str, clock: Clock) -> None:
    """Running handler finishes after shutdown; its outcome write and the buffered hand-back fail."""
    store = ScriptedStore()
    for n in range(4):
        await store.inner.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))
    started, release = anyio.Event(), anyio.Event()
    broken = False

    async def before_update(op: str, call: int, args: tuple[Any, ...]) -> None:
        if broken:
            await (hang() if failure == "hang" else transient())

    store.before["update_job"] = before_update

    async def handler(job: Job[str]) -> None:
        started.set()
        await release.wait()

    scheduler = Scheduler(
        store,
        handler,
        workers=2,
        buffer_size=2,
        clock=clock,
        shutdown_timeout=0.5,
        fetch_interval=0.05,
        store_backoff=FAST,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        with anyio.fail_after(10):
            await started.wait()
            await until(lambda: scheduler.statistics().running == 2)
        broken = True
        scheduler.shutdown()
        scheduler.shutdown()  # twice: harmless
        release.set()
        with anyio.fail_after(3):
            await scheduler.wait_stopped()
    # what could not be written stays leased, to reappear when the lease ends: no job lost
    assert all(job.status is JobStatus.PENDING for job in store.inner.jobs())


async def test_shutdown_before_run_starts_nothing(clock: Clock) -> None:
    store = ScriptedStore()
    await store.inner.add_job(Job.create("a", id="a", process_after=clock()))

    async def handler(job: Job[str]) -> None:
        raise AssertionError("must not run")

    scheduler = Scheduler(store, handler, clock=clock)
    scheduler.shutdown()
    with anyio.fail_after(5):
        await scheduler.run()
        await scheduler.wait_stopped()
    assert settled(store.inner)
    assert (await store.get_job("a")).attempts == 0


@pytest.mark.parametrize("cancel_running", [False, True])
async def test_handler_calling_shutdown_itself(cancel_running: bool, clock: Clock) -> None:
    store = ScriptedStore()
    for n in range(4):
        await store.inner.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))
    scheduler: Scheduler[str]

    async def handler(job: Job[str]) -> None:
        if job.id == "j0":
            scheduler.shutdown(cancel_running=cancel_running)
            await anyio.lowlevel.checkpoint()
            scheduler.shutdown(cancel_running=cancel_running)

    scheduler = Scheduler(store, handler, workers=1, buffer_size=3, clock=clock)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await scheduler.wait_stopped()
    assert settled(store.inner)
    j0 = await store.get_job("j0")
    if cancel_running:
        assert (j0.status, j0.attempts) == (JobStatus.PENDING, 0)
    else:
        assert j0.status is JobStatus.COMPLETED
    assert all(peek(store.inner, f"j{n}").attempts == 0 for n in (1, 2, 3))


async def test_cancel_running_during_an_outcome_write_still_writes_it(clock: Clock) -> None:
    store = ScriptedStore()
    await store.inner.add_job(Job.create("a", id="a", process_after=clock()))
    writing = anyio.Event()
    slow = True

    async def before_update(op: str, call: int, args: tuple[Any, ...]) -> None:
        job = args[0]
        if slow and job.status is JobStatus.COMPLETED:
            writing.set()
            await anyio.sleep(0.2)  # a slow but working store

    store.before["update_job"] = before_update

    async def handler(job: Job[str]) -> None:
        pass

    scheduler = Scheduler(store, handler, clock=clock, shutdown_timeout=2)
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        with anyio.fail_after(5):
            await writing.wait()
            scheduler.shutdown(cancel_running=True)
            await scheduler.wait_stopped()
    assert (await store.get_job("a")).status is JobStatus.COMPLETED


async def test_permanent_claim_error_stops_cleanly_and_wait_stopped_returns(clock: Clock) -> None:
    """A plain RuntimeError from a claim: run raises it, wait_stopped returns, nothing left leased."""
    store = ScriptedStore()
    for n in range(4):
        await store.inner.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))

    async def before(op: str, call: int, args: tuple[Any, ...]) -> None:
        if call >= 2:
            raise RuntimeError("disk on fire")

    store.before["fetch_pending_jobs"] = before

    async def handler(job: Job[str]) -> None:
        await anyio.sleep(0.05)

    scheduler = Scheduler(store, handler, workers=2, buffer_size=0, clock=clock, fetch_interval=0.01)
    with anyio.fail_after(5):
        with pytest.raises(BaseExceptionGroup):
            async with anyio.create_task_group() as tg:
                await tg.start(scheduler.run)
        await scheduler.wait_stopped()
    assert settled(store.inner)
    assert scheduler.statistics().held == 0


async def test_permanent_outcome_write_error_loses_no_job(clock: Clock) -> None:
    """A plain RuntimeError writing one outcome: that job reappears when its lease ends, the
    others are unaffected (whether or not the scheduler stops for it)."""
    store = ScriptedStore()
    for n in range(4):
        await store.inner.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))

    async def before(op: str, call: int, args: tuple[Any, ...]) -> None:
        if call == 1:
            raise RuntimeError("disk on fire")

    store.before["update_job"] = before

    async def handler(job: Job[str]) -> None:
        await anyio.sleep(0.05)

    scheduler = Scheduler(store, handler, workers=2, buffer_size=0, clock=clock, fetch_interval=0.01)
    with anyio.fail_after(5):
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(scheduler.run)
                await until(
                    lambda: (
                        len(leased(store.inner)) + tally(store.inner, JobStatus.COMPLETED) == 4
                        and scheduler.statistics().running == 0
                    )
                )
                scheduler.shutdown()
        except BaseExceptionGroup:
            pass
        await scheduler.wait_stopped()
    assert len(leased(store.inner)) <= 1
    assert scheduler.statistics().held == 0
