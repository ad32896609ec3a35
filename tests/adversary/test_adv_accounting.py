"""Accounting: statistics return to zero, claims stay within room, no job runs twice, none is lost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest
from adv_support import ScriptedStore, settled, tally, until

from anysched import Job, JobStatus, MemoryStore, Scheduler, open_scheduler

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]


async def test_held_returns_to_zero_after_graceful_stop_with_buffered_jobs(clock: Clock) -> None:
    store = MemoryStore[str]()
    for n in range(3):
        await store.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))
    gate, started = anyio.Event(), anyio.Event()

    async def handler(job: Job[str]) -> None:
        started.set()
        await gate.wait()

    scheduler = Scheduler(store, handler, workers=1, buffer_size=2, clock=clock, fetch_interval=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await started.wait()
            assert scheduler.statistics().held == 3
            scheduler.shutdown()
            gate.set()
        await scheduler.wait_stopped()
    assert settled(store)
    assert await store.count(JobStatus.COMPLETED) == 1
    assert scheduler.statistics() == type(scheduler.statistics())(0, 0, 0, 0)


async def test_held_returns_to_zero_after_cancellation_from_outside(clock: Clock) -> None:
    store = MemoryStore[str]()
    for n in range(3):
        await store.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))
    started = anyio.Event()

    async def handler(job: Job[str]) -> None:
        started.set()
        await anyio.sleep_forever()

    scheduler = Scheduler(store, handler, workers=1, buffer_size=2, clock=clock, fetch_interval=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await started.wait()
            tg.cancel_scope.cancel()
    assert settled(store)
    assert scheduler.statistics().held == 0


async def test_duplicates_in_one_claim_do_not_run_twice(clock: Clock) -> None:
    store = ScriptedStore()
    await store.inner.add_job(Job.create("dup", id="dup", process_after=clock()))
    store.claim_filter = lambda jobs: jobs + jobs  # a broken store: every job twice
    runs: Counter[str] = Counter()
    done = anyio.Event()

    async def handler(job: Job[str]) -> None:
        runs[job.id] += 1
        await anyio.sleep(0.05)  # both copies would be inside the handler at once
        done.set()

    with anyio.fail_after(10):
        async with open_scheduler(store, handler, workers=2, clock=clock, fetch_interval=0.05) as scheduler:
            await done.wait()
            await until(lambda: scheduler.statistics().held == 0)
    assert (await store.get_job("dup")).status is JobStatus.COMPLETED
    assert runs["dup"] == 1


async def test_more_jobs_than_asked_are_handed_back_and_none_lost(clock: Clock) -> None:
    """A store that ignores ``limit``: the excess is handed back, every job still runs once."""
    inner = MemoryStore[str]()
    store = ScriptedStore(inner)
    for n in range(8):
        await inner.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))
    original = inner.fetch_pending_jobs

    async def greedy(now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[str]]:
        return await original(now, limit + 5, visibility_timeout)

    inner.fetch_pending_jobs = greedy  # type: ignore[method-assign]
    runs: Counter[str] = Counter()

    async def handler(job: Job[str]) -> None:
        runs[job.id] += 1
        await anyio.lowlevel.checkpoint()

    with anyio.fail_after(20):
        async with open_scheduler(store, handler, workers=1, buffer_size=1, clock=clock, fetch_interval=0.05) as s:
            await until(lambda: tally(inner, JobStatus.COMPLETED) == 8)
            await until(lambda: s.statistics().held == 0)
            assert s.statistics().held <= 2
    assert set(runs.values()) == {1}
    assert settled(inner)


async def test_claims_never_exceed_the_room(clock: Clock) -> None:
    store = ScriptedStore()
    for n in range(30):
        await store.inner.add_job(Job.create(n, id=f"j{n}", process_after=clock()))
    over: list[tuple[int, int]] = []

    async def check(op: str, call: int, args: tuple[Any, ...]) -> None:
        room = 3 + 2 - scheduler.statistics().held
        if args[1] > room:
            over.append((args[1], room))

    store.before["fetch_pending_jobs"] = check

    async def handler(job: Job[int]) -> None:
        for _ in range(job.payload % 4):
            await anyio.lowlevel.checkpoint()
        if job.payload % 5 == 0:
            raise ValueError("boom")

    scheduler = Scheduler(store, handler, workers=3, buffer_size=2, clock=clock, fetch_interval=0.05)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await until(lambda: tally(store.inner, JobStatus.PENDING) == 0)
            scheduler.shutdown()
    assert not over
    assert scheduler.statistics() == type(scheduler.statistics())(0, 0, 0, 0)


async def test_claimed_jobs_without_visible_after_still_run_once_and_settle(clock: Clock) -> None:
    """A store handing out jobs with ``visible_after=None`` (its own lease kept elsewhere)."""
    store = ScriptedStore()
    for n in range(3):
        await store.inner.add_job(Job.create(n, id=f"j{n}", process_after=clock()))
    store.claim_filter = lambda jobs: [replace(job, visible_after=None) for job in jobs]
    runs: Counter[str] = Counter()

    async def handler(job: Job[int]) -> None:
        runs[job.id] += 1
        await anyio.sleep(1.0)  # past a renewal (visibility 1.5)

    with anyio.fail_after(20):
        async with open_scheduler(store, handler, workers=3, clock=clock, visibility_timeout=1.5, fetch_interval=0.05):
            await until(lambda: tally(store.inner, JobStatus.COMPLETED) == 3)
    assert set(runs.values()) == {1}
    assert settled(store.inner)
