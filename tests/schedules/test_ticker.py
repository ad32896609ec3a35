"""The ticker inside a scheduler: each slot's job enqueued once, when its slot comes, on every backend."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import anyio
import pytest

from anysched import Job, JobStatus, MemoryStore, Schedule, open_scheduler, slot_of
from anysched._schedule import slot_job_id
from anysched._ticker import Ticker
from support import Recorder, WrappedStore, until

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]
UTC = timezone.utc


def clock_from(base: datetime) -> Clock:
    """A wall clock that reads ``base`` now and then follows the event loop's clock."""
    origin = anyio.current_time()
    return lambda: base + timedelta(seconds=anyio.current_time() - origin)


def slots_of(jobs: list[Job[str]]) -> list[datetime]:
    found = [slot_of(job) for job in jobs]
    return [slot.slot for slot in found if slot is not None]


async def test_an_interval_schedule_enqueues_each_slot_once_as_it_comes(clock: Clock) -> None:
    start = clock()
    schedule = Schedule(id="tick", payload="p", every=timedelta(seconds=0.25), start=start)
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with open_scheduler(MemoryStore[str](), recorder, schedules=[schedule], clock=clock):
            await recorder.wait_finished(4)
    assert slots_of(recorder.started)[:4] == [start + k * timedelta(seconds=0.25) for k in range(4)]
    assert set(recorder.runs.values()) == {1}
    assert [job.payload for job in recorder.started] == ["p"] * len(recorder.started)
    for job in recorder.started:  # never enqueued before its slot came
        assert job.process_after <= clock()


async def test_two_schedulers_declaring_the_same_schedule_run_each_slot_once(clock: Clock) -> None:
    store = WrappedStore[str]()
    schedule = Schedule(id="tick", payload="p", every=timedelta(seconds=0.2), start=clock())
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with (
            open_scheduler(store, recorder, schedules=[schedule], clock=clock),
            open_scheduler(store, recorder, schedules=[schedule], clock=clock),
        ):
            await recorder.wait_finished(5)
    stored = await store.inner.list_jobs(limit=1000)
    assert set(recorder.runs.values()) == {1}
    assert {job.id for job in stored} >= set(recorder.runs)
    assert store.calls["add_job"] >= 2 * 5 - 1  # both tried each slot; the store let one win


async def test_after_downtime_the_missed_slots_coalesce_to_one_run(clock: Clock) -> None:
    now = clock()
    hourly = Schedule(id="hourly", payload="p", every=timedelta(hours=1))
    last_run = hourly.latest_slots(now, 6)[0]  # five slots were missed since it last ran
    store = WrappedStore[str]()
    await store.inner.add_job(replace(hourly.job_for(last_run), status=JobStatus.COMPLETED, processed_at=last_run))
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with open_scheduler(store, recorder, schedules=[hourly], clock=clock):
            await recorder.wait_finished(1)
            await until(lambda: store.calls["add_job"] >= 1)
    assert slots_of(recorder.started) == [hourly.latest_slot(now)]
    assert store.calls["add_job"] == 1


async def test_after_downtime_each_missed_slot_runs_within_the_limit(clock: Clock) -> None:
    now = clock()
    hourly = Schedule(id="hourly", payload="p", every=timedelta(hours=1), misfire="each", catch_up_limit=3)
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with open_scheduler(MemoryStore[str](), recorder, schedules=[hourly], clock=clock, workers=1):
            await recorder.wait_finished(3)
    assert slots_of(recorder.started) == hourly.latest_slots(now, 3)


async def test_a_restart_after_a_slot_ran_does_not_run_it_again(clock: Clock) -> None:
    hourly = Schedule(id="hourly", payload="p", every=timedelta(hours=1))
    store = WrappedStore[str]()
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with open_scheduler(store, recorder, schedules=[hourly], clock=clock):
            await recorder.wait_finished(1)
        async with open_scheduler(store, recorder, schedules=[hourly], clock=clock):
            await until(lambda: store.calls["add_job"] == 2)  # the second one tried, and found it
    assert list(recorder.runs.values()) == [1]
    assert await store.inner.count() == 1


async def test_a_daily_slot_in_the_spring_forward_gap_fires_once_after_it() -> None:
    # Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 never happens that day.
    clock = clock_from(datetime(2026, 3, 29, 0, 59, 59, 500000, tzinfo=UTC))  # 01:59:59.5 CET
    schedule = Schedule(id="daily", payload="p", cron="30 2 * * *", zone="Europe/Berlin", start=clock())
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with open_scheduler(MemoryStore[str](), recorder, schedules=[schedule], clock=clock):
            await recorder.wait_finished(1)
            ran_at = clock()
    three_cest = datetime(2026, 3, 29, 1, tzinfo=UTC)
    assert slots_of(recorder.started) == [three_cest]
    assert three_cest <= ran_at < three_cest + timedelta(seconds=5)


async def test_a_slot_that_cannot_be_enqueued_is_skipped_and_logged_and_the_rest_go_on(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    class RefusesFirstAdd(MemoryStore[str]):
        refused = False

        async def add_job(self, job: Job[str]) -> None:
            if not self.refused:
                self.refused = True
                raise ValueError("a permanent refusal")
            await super().add_job(job)

    start = clock()
    schedule = Schedule(id="tick", payload="secret-payload", every=timedelta(seconds=0.25), start=start)
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with open_scheduler(RefusesFirstAdd(), recorder, schedules=[schedule], clock=clock):
            await recorder.wait_finished(2)
    assert slots_of(recorder.started)[:2] == [start + timedelta(seconds=0.25), start + timedelta(seconds=0.5)]
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert [record.getMessage() for record in errors] == [
        f"job {slot_job_id('tick', start)}: could not enqueue this slot, skipped: ValueError"
    ]
    assert "secret-payload" not in caplog.text


async def test_the_ticker_sleeps_until_the_next_slot_and_does_not_poll(clock: Clock) -> None:
    added: list[Job[str]] = []

    async def add(job: Job[str]) -> None:
        added.append(job)

    start = clock()
    schedules = tuple(
        Schedule(id=f"s{n}", payload="p", every=timedelta(seconds=0.5), start=start + timedelta(seconds=0.1 * n))
        for n in range(3)
    )
    ticker = Ticker(schedules, add, clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(ticker.run)
            await until(lambda: len(added) >= 9)
            ticker.stop()
    assert len({job.id for job in added}) == len(added)
    # one wake per slot (three per interval), and a spare for an early timer on asyncio
    assert ticker.statistics.wakes <= 2 * len(added) + 2
    assert ticker.statistics.enqueued == len(added)


async def test_an_ended_schedule_leaves_the_ticker(clock: Clock) -> None:
    start = clock()
    schedule = Schedule(
        id="s", payload="p", every=timedelta(seconds=0.1), start=start, end=start + timedelta(seconds=0.3)
    )
    added: list[Job[str]] = []

    async def add(job: Job[str]) -> None:
        added.append(job)

    with anyio.fail_after(10):
        await Ticker((schedule,), add, clock).run()  # returns: nothing left to tick
    assert slots_of(added) == [start + k * timedelta(seconds=0.1) for k in range(4)]


@pytest.mark.parametrize(
    ("schedules", "error"),
    [
        ([Schedule(id="a", payload=1, cron="@daily"), Schedule(id="a", payload=2, cron="@hourly")], ValueError),
        ([1], TypeError),
        (5, TypeError),
    ],
)
def test_the_scheduler_refuses_bad_schedules_by_name(schedules: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="schedules"):
        open_scheduler(MemoryStore[int](), Recorder[int](), schedules=cast(Any, schedules))


async def test_replacing_schedules_keeps_what_was_handled_and_wakes_the_ticker(clock: Clock) -> None:
    added: list[Job[str]] = []

    async def add(job: Job[str]) -> None:
        added.append(job)

    hourly = Schedule(id="hourly", payload="p", every=timedelta(hours=1))
    ticker = Ticker((), add, clock, follows_store=True)
    start: datetime | None = None  # bound before the blocks, which might swallow an exception to pyright
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(ticker.run)
            ticker.replace_schedules([hourly])  # wakes the sleeping ticker: its latest slot, at once
            await until(lambda: len(added) == 1)
            for schedules in ([replace(hourly, payload="changed")], [replace(hourly, paused=True)], [], [hourly]):
                wakes = ticker.statistics.wakes
                ticker.replace_schedules(schedules)  # a changed one goes on after what was handled
                await until(lambda: ticker.statistics.wakes > wakes)  # noqa: B023 -- awaited in this round
            start = clock() + timedelta(seconds=0.2)
            soon = Schedule(id="soon", payload="s", every=timedelta(seconds=0.2), start=start)
            ticker.replace_schedules([soon])
            await until(lambda: len(added) >= 3)
            tg.cancel_scope.cancel()
    latest = hourly.latest_slot(added[0].process_after)
    # paused, removed and declared again, it looks back by its misfire policy: the same slot, the same id
    assert [slot_of(job) for job in added] == [("hourly", latest), ("hourly", latest), ("soon", start)]
