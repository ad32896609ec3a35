"""Wall clocks that step, and clocks that are not UTC."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

import anyio
import pytest
from adv_support import peek, settled, tally, until

from anysched import Job, JobStatus, MemoryStore, open_scheduler
from conftest import EPOCH

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio


class SteppingClock:
    """The event loop's clock plus an offset the test steps."""

    def __init__(self, tz: timezone = timezone.utc) -> None:
        self.offset = timedelta()
        self.tz = tz

    def __call__(self) -> datetime:
        return (EPOCH + timedelta(seconds=anyio.current_time()) + self.offset).astimezone(self.tz)


async def test_forward_step_while_a_handler_runs_does_not_run_it_twice() -> None:
    store = MemoryStore[str]()
    clock = SteppingClock()
    await store.add_job(Job.create("long", id="long", process_after=clock()))
    runs: Counter[str] = Counter()
    started, release = anyio.Event(), anyio.Event()

    async def handler(job: Job[str]) -> None:
        runs[job.id] += 1
        started.set()
        if job.id == "long":
            await release.wait()

    with anyio.fail_after(20):
        async with open_scheduler(
            store, handler, workers=2, clock=clock, visibility_timeout=0.6, fetch_interval=0.05
        ) as s:
            await started.wait()
            clock.offset = timedelta(hours=3)  # NTP steps the clock forward
            await s.add_job(Job.create("nudge", id="nudge", process_after=clock()))  # wakes the fetcher
            await until(lambda: peek(store, "nudge").status is JobStatus.COMPLETED)
            await anyio.sleep(0.5)  # a few lease-keeper rounds, fetches
            release.set()
    assert runs["long"] == 1
    assert (await store.get_job("long")).status is JobStatus.COMPLETED


async def test_backward_step_while_handlers_run_keeps_leases_and_finishes() -> None:
    store = MemoryStore[str]()
    clock = SteppingClock()
    for n in range(3):
        await store.add_job(Job.create(f"j{n}", id=f"j{n}", process_after=clock()))
    runs: Counter[str] = Counter()
    started = anyio.Event()

    async def handler(job: Job[str]) -> None:
        runs[job.id] += 1
        if len(runs) == 3:
            started.set()
        await anyio.sleep(2.0)  # several lease lengths: renewals must keep it

    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=3, clock=clock, visibility_timeout=0.6, fetch_interval=0.05):
            await started.wait()
            clock.offset = -timedelta(hours=5)
            await until(lambda: tally(store, JobStatus.COMPLETED) == 3)
    assert set(runs.values()) == {1}
    assert settled(store)


async def test_non_utc_clock_is_converted() -> None:
    store = MemoryStore[str]()
    clock = SteppingClock(timezone(timedelta(hours=-7)))
    await store.add_job(Job.create("a", id="a", process_after=clock()))

    async def handler(job: Job[str]) -> None:
        await anyio.lowlevel.checkpoint()

    with anyio.fail_after(10):
        async with open_scheduler(store, handler, clock=clock, fetch_interval=0.05):
            await until(lambda: peek(store, "a").status is JobStatus.COMPLETED)
    job = await store.get_job("a")
    assert job.processed_at is not None
    assert job.processed_at.tzinfo is timezone.utc


async def test_naive_clock_is_refused_without_losing_a_job() -> None:
    """A clock returning naive datetimes: a clear ValueError, and nothing left leased."""
    store = MemoryStore[str]()
    await store.add_job(Job.create("a", id="a", process_after=EPOCH))

    async def handler(job: Job[str]) -> None:
        await anyio.lowlevel.checkpoint()

    def naive() -> datetime:
        return (EPOCH + timedelta(seconds=anyio.current_time())).replace(tzinfo=None)

    with anyio.fail_after(10):
        with pytest.raises((ValueError, BaseExceptionGroup)) as raised:
            async with open_scheduler(store, handler, clock=naive, fetch_interval=0.05):
                await anyio.sleep(1)
    text = repr(raised.value) + "".join(repr(e) for e in getattr(raised.value, "exceptions", ()))
    assert "timezone-aware" in text
    assert settled(store)
