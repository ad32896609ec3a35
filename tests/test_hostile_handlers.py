"""Handlers that raise what a scheduler might take for its own cancellation: the scheduler survives.

Only the scheduler's own cancellation (shutdown, a lost lease, a timeout, a cancel from outside)
is a cancellation. A cancellation exception a handler raises for its own reasons, an exception
group, an error raised while being cancelled: each is that attempt's failure or, while the
scheduler cancels the handler, logged and replaced by the cancellation. The scheduler never stops
because of a handler, and every job is accounted for.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from anysched import Job, JobStatus, MemoryStore, RetryPolicy, open_scheduler
from support import FAST_RETRY, RunOptions, WrappedStore, foreign_cancellation, peek, settled, until

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing has it from Python 3.11

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]
Handler = Callable[[Job[str]], Awaitable[None]]


async def run_jobs(
    store: MemoryStore[str], handler: Handler, clock: Clock, *ids: str, **options: Unpack[RunOptions]
) -> None:
    """Add ``ids`` (due now) and run a scheduler until every one of them is finished, then stop it."""
    for job_id in ids:
        await store.add_job(Job.create(job_id, id=job_id, process_after=clock()))
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, clock=clock, fetch_interval=0.05, **options) as scheduler:
            await until(lambda: not (any(peek(store, job_id).status is JobStatus.PENDING for job_id in ids)))
            assert scheduler.statistics().running == 0


async def test_a_foreign_cancellation_is_the_attempts_failure(clock: Clock) -> None:
    store = MemoryStore[str]()

    async def handler(job: Job[str]) -> None:
        if job.payload == "hostile":
            raise await foreign_cancellation()

    await run_jobs(store, handler, clock, "hostile", "fine")
    hostile = await store.get_job("hostile")
    assert hostile.status is JobStatus.FAILED
    assert hostile.attempts == 1  # it used its attempt: a restart does not loop on it forever
    assert hostile.last_error is not None
    assert "not a cancellation by anysched" in hostile.last_error
    assert (await store.get_job("fine")).status is JobStatus.COMPLETED
    assert settled(store)


async def test_a_foreign_cancellation_is_retried_by_the_policy(clock: Clock) -> None:
    store = MemoryStore[str]()
    runs: list[int] = []

    async def handler(job: Job[str]) -> None:
        runs.append(job.attempts)
        if job.attempts == 1:
            raise await foreign_cancellation()

    policy = RetryPolicy(max_attempts=2, backoff=FAST_RETRY)
    await run_jobs(store, handler, clock, "flaky", retry=policy)
    assert runs == [1, 2]
    assert (await store.get_job("flaky")).status is JobStatus.COMPLETED


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_a_cancelled_task_awaited_by_the_handler_does_not_stop_the_scheduler(clock: Clock) -> None:
    """The review's case: the handler awaits a task that other code cancelled."""
    import asyncio

    store = MemoryStore[str]()

    async def handler(job: Job[str]) -> None:
        if job.payload == "hostile":
            task = asyncio.ensure_future(asyncio.sleep(3600))
            await asyncio.sleep(0)
            task.cancel()
            await task

    await run_jobs(store, handler, clock, "hostile", "fine")
    assert (await store.get_job("hostile")).status is JobStatus.FAILED
    assert (await store.get_job("fine")).status is JobStatus.COMPLETED


async def test_exception_groups_with_and_without_a_cancellation_inside_are_failures(clock: Clock) -> None:
    store = MemoryStore[str]()

    async def handler(job: Job[str]) -> None:
        if job.payload == "group":
            raise ExceptionGroup("two", [ValueError("a"), KeyError("b")])
        if job.payload == "group-with-cancel":
            raise BaseExceptionGroup("mixed", [ValueError("a"), await foreign_cancellation()])

    await run_jobs(store, handler, clock, "group", "group-with-cancel", "fine")
    for job_id in ("group", "group-with-cancel"):
        job = await store.get_job(job_id)
        assert job.status is JobStatus.FAILED
        assert job.last_error is not None
        assert "Group" in job.last_error
    assert (await store.get_job("fine")).status is JobStatus.COMPLETED


def raising_on_cancel(started: anyio.Event) -> Handler:
    """A handler whose own task group raises while the scheduler cancels it."""

    async def child() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            raise ValueError("cleanup failed")

    async def handler(job: Job[str]) -> None:
        if job.payload != "hostile":
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
            tg.start_soon(child)
            started.set()

    return handler


async def test_a_handler_raising_while_its_lease_is_lost_does_not_crash_the_scheduler(clock: Clock) -> None:
    """The review's trio case: the handler's task group raises as we cancel it for a lost lease."""
    store = WrappedStore[str]()
    started = anyio.Event()
    await store.add_job(Job.create("hostile", id="hostile", process_after=clock()))
    with anyio.fail_after(30):
        async with open_scheduler(
            store, raising_on_cancel(started), clock=clock, visibility_timeout=0.3, store_backoff=FAST_RETRY
        ) as scheduler:
            await started.wait()
            # Another process claims the job (its lease has expired in that process's eyes): the
            # next renewal is refused and the handler cancelled.
            [thief] = await store.inner.fetch_pending_jobs(clock() + timedelta(hours=1), 1, timedelta(hours=2))
            await until(lambda: not (scheduler.statistics().running))
            await store.add_job(Job.create("fine", id="fine", process_after=clock()))
            await until(lambda: peek(store.inner, "fine").status is not JobStatus.PENDING)
    # The thief's lease is untouched: nothing of the cancelled run was written.
    assert (await store.inner.get_job("hostile")).lease == thief.lease
    assert (await store.inner.get_job("hostile")).status is JobStatus.PENDING
    assert (await store.inner.get_job("fine")).status is JobStatus.COMPLETED


async def test_a_handler_raising_while_cancelled_at_shutdown_leaves_the_block_cleanly(clock: Clock) -> None:
    store = MemoryStore[str]()
    started = anyio.Event()
    await store.add_job(Job.create("hostile", id="hostile", process_after=clock()))
    with anyio.fail_after(30):
        async with open_scheduler(store, raising_on_cancel(started), clock=clock) as scheduler:
            await started.wait()
            scheduler.shutdown(cancel_running=True)
    job = await store.get_job("hostile")
    assert (job.status, job.attempts, job.visible_after) == (JobStatus.PENDING, 0, None)  # handed back


async def test_a_handler_raising_while_the_scheduler_is_cancelled_from_outside(clock: Clock) -> None:
    store = MemoryStore[str]()
    started = anyio.Event()
    await store.add_job(Job.create("hostile", id="hostile", process_after=clock()))
    with anyio.fail_after(30):
        with anyio.CancelScope() as outside:
            async with open_scheduler(store, raising_on_cancel(started), clock=clock):
                await started.wait()
                outside.cancel()
    assert outside.cancelled_caught  # a cancellation, not the handler's ValueError, left the block
    job = await store.get_job("hostile")
    assert (job.status, job.attempts, job.visible_after) == (JobStatus.PENDING, 0, None)


async def test_a_handler_that_swallows_its_timeout_has_timed_out(clock: Clock) -> None:
    store = MemoryStore[str]()

    async def handler(job: Job[str]) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            pass  # swallowed: returns "normally" after its deadline

    await run_jobs(store, handler, clock, "stubborn", job_timeout=0.05)
    job = await store.get_job("stubborn")
    assert job.status is JobStatus.FAILED
    assert job.last_error is not None
    assert job.last_error.startswith("anysched.JobTimeoutError")
