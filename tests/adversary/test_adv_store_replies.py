"""Lost and late replies: a write applied whose caller saw an error, or that lands after the caller gave up."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import pytest
from adv_support import ScriptedStore, leased, peek, until

from anysched import Backoff, Job, JobStatus, LeaseLostError, Scheduler, TransientStoreError, open_scheduler

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]
FAST = Backoff(initial=0.001, maximum=0.01, jitter=0.001)


async def test_add_job_applied_then_transient_error_succeeds_once(clock: Clock) -> None:
    store = ScriptedStore()

    async def lose_first_reply(op: str, call: int, args: tuple[Any, ...]) -> None:
        if call == 1:
            raise TransientStoreError("reply lost")

    store.after["add_job"] = lose_first_reply
    ran: list[str] = []

    async def handler(job: Job[str]) -> None:
        ran.append(job.id)

    with anyio.fail_after(10):
        async with open_scheduler(store, handler, clock=clock, store_backoff=FAST, fetch_interval=0.05) as s:
            await s.add_job(Job.create("x", id="x", process_after=clock()))
            await until(lambda: peek(store.inner, "x").status is JobStatus.COMPLETED)
    assert ran == ["x"]
    assert store.calls["add_job"] == 2


@pytest.mark.parametrize("fail", [False, True])
async def test_outcome_applied_then_transient_error_is_no_problem(fail: bool, clock: Clock) -> None:
    store = ScriptedStore()
    await store.inner.add_job(Job.create("x", id="x", process_after=clock()))

    async def lose_reply(op: str, call: int, args: tuple[Any, ...]) -> None:
        if args[0].visible_after is None and store.calls["update_job"] == 1:
            raise TransientStoreError("reply lost")

    store.after["update_job"] = lose_reply

    async def handler(job: Job[str]) -> None:
        if fail:
            raise ValueError("boom")

    scheduler = Scheduler(store, handler, clock=clock, store_backoff=FAST, fetch_interval=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await until(lambda: store.calls["update_job"] >= 2 and scheduler.statistics().held == 0)
            scheduler.shutdown()
    assert (await store.get_job("x")).status is (JobStatus.FAILED if fail else JobStatus.COMPLETED)


async def test_a_late_renewal_applied_after_the_outcome_is_refused(clock: Clock) -> None:
    """The renewal's reply never comes; a background task applies it after the outcome landed."""
    store = ScriptedStore()
    await store.inner.add_job(Job.create("x", id="x", process_after=clock()))
    renewal_sent, outcome_written = anyio.Event(), anyio.Event()
    late: list[BaseException | None] = []

    async with anyio.create_task_group() as background:

        async def apply_later(job: Job[Any]) -> None:
            await outcome_written.wait()
            try:
                await store.inner.update_job(job)
                late.append(None)
            except LeaseLostError as error:
                late.append(error)

        async def before_update(op: str, call: int, args: tuple[Any, ...]) -> None:
            job = args[0]
            if job.status is JobStatus.PENDING and job.visible_after is not None:  # a renewal
                background.start_soon(apply_later, job)
                renewal_sent.set()
                await anyio.sleep_forever()  # the reply never comes

        async def after_update(op: str, call: int, args: tuple[Any, ...]) -> None:
            if args[0].status is JobStatus.COMPLETED:
                outcome_written.set()

        store.before["update_job"] = before_update
        store.after["update_job"] = after_update

        async def handler(job: Job[str]) -> None:
            await renewal_sent.wait()

        with anyio.fail_after(10):
            async with open_scheduler(store, handler, clock=clock, visibility_timeout=0.6, store_backoff=FAST):
                await until(lambda: bool(late))
    assert isinstance(late[0], LeaseLostError)
    assert (await store.get_job("x")).status is JobStatus.COMPLETED


async def test_shutdown_during_a_slow_claim_leaves_no_job_leased_to_nobody(clock: Clock) -> None:
    """A store with some latency: the claim is applied, its reply is on its way when shutdown()
    comes. The scheduler stops within shutdown_timeout all the same, so it can wait for it."""
    store = ScriptedStore()
    for n in range(3):
        await store.inner.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))
    in_flight = anyio.Event()

    async def slow_reply(op: str, call: int, args: tuple[Any, ...]) -> None:
        if args[2]:  # the claim found jobs (and leased them): the reply takes a while
            in_flight.set()
            await anyio.sleep(0.1)

    store.after["fetch_pending_jobs"] = slow_reply

    async def handler(job: Job[str]) -> None:
        pass

    scheduler = Scheduler(store, handler, clock=clock, shutdown_timeout=1, fetch_interval=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await in_flight.wait()
            scheduler.shutdown()
    assert leased(store.inner) == []
    assert all(job.attempts == 0 for job in store.inner.jobs())


async def test_store_failing_transiently_forever_then_shutdown(clock: Clock) -> None:
    store = ScriptedStore()
    for n in range(3):
        await store.inner.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))
    started = anyio.Event()
    down = False

    async def maybe_down(op: str, call: int, args: tuple[Any, ...]) -> None:
        if down:
            raise TransientStoreError("down")

    for op in ("fetch_pending_jobs", "update_job", "next_due_time"):
        store.before[op] = maybe_down

    async def handler(job: Job[str]) -> None:
        nonlocal down
        down = True
        started.set()
        await anyio.sleep(0.5)  # past a renewal that fails

    scheduler = Scheduler(
        store,
        handler,
        workers=3,
        clock=clock,
        visibility_timeout=0.6,
        shutdown_timeout=0.3,
        fetch_interval=0.05,
        store_backoff=FAST,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        with anyio.fail_after(10):
            await started.wait()
        scheduler.shutdown()
        with anyio.fail_after(0.5 + 0.3 + 1):
            await scheduler.wait_stopped()
    assert scheduler.statistics().held == 0
    assert all(job.status is JobStatus.PENDING for job in store.inner.jobs())  # none written: all reappear later
