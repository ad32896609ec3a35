"""SQLiteStore's wake-ups: another connection's commit that may make a job claimable wakes the listener.

Two store objects on one file stand for two processes (each has its own connection, which is
what ``PRAGMA data_version`` tells apart). Real clock, both backends: the store works in threads.
"""

# White-box: one test asks the store's private wake-up predicate (_EarliestClaimable) directly.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from anysched import Job, SendsWakeUps, open_scheduler
from anysched.stores.sqlite import SQLiteStore, _EarliestClaimable
from anysched.testing import Payload
from support import Recorder, until

pytestmark = pytest.mark.anyio

HOUR = 3600.0


def now() -> datetime:
    return datetime.now(timezone.utc)


class Wakes:
    """Counts wake-ups and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self.event = anyio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self) -> None:
        with anyio.fail_after(10):
            await self.event.wait()
        self.event = anyio.Event()


def test_the_store_sends_wake_ups(db: Path) -> None:
    assert isinstance(SQLiteStore(db, Payload), SendsWakeUps)


async def test_another_store_adding_a_due_job_wakes_the_listener(store: SQLiteStore[Payload], db: Path) -> None:
    wakes = Wakes()
    async with store.wake_ups(wakes), SQLiteStore(db, Payload) as other:
        await other.add_job(Job.create(Payload(1), id="due"))
        await wakes.next()
        await other.add_job(Job.create(Payload(2), id="later", process_after=now() + timedelta(hours=1)))
        await other.add_job(Job.create(Payload(3), id="sooner", process_after=now() + timedelta(minutes=1)))
        await wakes.next()  # "due" is still claimable: every change may matter to an idle fetcher
    assert wakes.count >= 2


async def test_only_a_change_that_may_make_a_job_claimable_is_worth_a_wake_up(
    store: SQLiteStore[Payload], raw: sqlite3.Connection
) -> None:
    """The predicate the watching thread asks after each change, on the state of the tables."""
    worth_waking = _EarliestClaimable()
    assert not worth_waking(raw)  # no job at all

    async def add(job_id: str, due: datetime) -> None:
        await store.add_job(Job.create(Payload(0), id=job_id, process_after=due))

    await add("in-an-hour", now() + timedelta(hours=1))
    assert worth_waking(raw)  # the first claimable moment there is
    await add("in-two-hours", now() + timedelta(hours=2))
    assert not worth_waking(raw)  # later than one already known: the fetcher wakes for the first anyway
    await add("in-a-minute", now() + timedelta(minutes=1))
    assert worth_waking(raw)  # earlier than the fetcher knew
    await add("due", now())
    assert worth_waking(raw)
    claimed = await store.fetch_pending_jobs(now(), 10, timedelta(minutes=10))
    assert [job.id for job in claimed] == ["due"]
    assert not worth_waking(raw)  # a claim only moves the earliest moment later: no wake-up for our own claims


async def test_a_scheduler_starts_a_job_another_store_adds_without_waiting_for_its_interval(
    store: SQLiteStore[Payload], db: Path
) -> None:
    handler = Recorder[Payload]()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, fetch_interval=HOUR) as scheduler, SQLiteStore(db, Payload) as other:
            await until(lambda: scheduler.statistics().listening)
            await other.add_job(Job.create(Payload(1), id="from-elsewhere"))
            await handler.wait_finished(1)  # an hour's fetch_interval: only a wake-up can start it in time
    assert handler.runs == {"from-elsewhere": 1}


async def test_a_lone_idle_scheduler_is_not_woken_by_its_own_writes(store: SQLiteStore[Payload]) -> None:
    claims = 0
    fetch = store.fetch_pending_jobs

    async def counting_fetch(now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[Payload]]:
        nonlocal claims
        claims += 1
        return await fetch(now, limit, visibility_timeout)

    store.fetch_pending_jobs = counting_fetch  # type: ignore[method-assign]
    handler = Recorder[Payload]()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, fetch_interval=HOUR) as scheduler:
            for n in range(5):
                await scheduler.add_job(Job.create(Payload(n), id=f"job-{n}"))
            await handler.wait_finished(5)
            await anyio.sleep(0.3)  # thirty polls: time for any wake-up the completions could cause
            settled = claims
            await anyio.sleep(0.3)
            assert claims == settled  # idle: no claim loop
    assert settled <= 5 + 5 + 2  # a claim per add_job's wake and per finished job at most, plus the first


async def test_a_private_memory_database_listens_to_nothing() -> None:
    wakes = Wakes()
    async with SQLiteStore(":memory:", Payload) as store, store.wake_ups(wakes):
        await store.add_job(Job.create(Payload(1)))
    assert wakes.count == 0


async def test_leaving_the_block_stops_the_thread_and_closes_its_connection(
    store: SQLiteStore[Payload], db: Path
) -> None:
    wakes = Wakes()
    with anyio.fail_after(10):
        async with store.wake_ups(wakes):
            pass
        with anyio.CancelScope() as scope:
            async with store.wake_ups(wakes):
                scope.cancel()
                await anyio.sleep_forever()
    async with SQLiteStore(db, Payload) as other:
        await other.add_job(Job.create(Payload(1)))
    await anyio.sleep(0.05)  # five polls, had a thread survived
    assert wakes.count == 0
