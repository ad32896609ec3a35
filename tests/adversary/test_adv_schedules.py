"""An outside reviewer's attacks on the recurring schedules: each test is a defect found (and fixed),
or a probe that held. The Berlin, Dublin (negative DST) and Sao Paulo (a change at midnight) cases
use real transitions of the zone database."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import anyio
import anyio.lowlevel
import pytest

from anysched import Job, MemoryStore, Schedule, TransientStoreError, open_scheduler, slot_of
from anysched._ticker import Ticker
from anysched.stores.sqlite import SQLiteStore
from support import FAST_RETRY, Recorder, WrappedStore

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]
UTC = timezone.utc


def clock_from(base: datetime) -> Clock:
    """A wall clock that reads ``base`` now and then follows the event loop's clock."""
    origin = anyio.current_time()
    return lambda: base + timedelta(seconds=anyio.current_time() - origin)


def slots_of(jobs: list[Job[str]], schedule_id: str) -> list[datetime]:
    found = [slot_of(job) for job in jobs]
    return [slot.slot for slot in found if slot is not None and slot.schedule_id == schedule_id]


# -- the hour repeated at fall-back: a "next" slot that lies in the past -------------------------

REPEATED_HOURS = [
    # zone, cron, a moment in the second pass of the repeated hour, before the cron's wall time
    ("Europe/Berlin", "15 2 * * *", datetime(2026, 10, 25, 1, 0, 7, tzinfo=UTC)),  # 02:00:07 CET
    ("Europe/Dublin", "30 1 * * *", datetime(2026, 10, 25, 1, 0, 7, tzinfo=UTC)),  # 01:00:07 GMT
    ("America/Sao_Paulo", "45 23 * * *", datetime(2018, 2, 18, 2, 0, 7, tzinfo=UTC)),  # 23:00:07 BRT
]


@pytest.mark.parametrize(("zone", "cron", "at"), REPEATED_HOURS)
def test_the_next_slot_in_the_second_pass_of_a_repeated_hour_is_after_it(zone: str, cron: str, at: datetime) -> None:
    schedule = Schedule(id="daily", payload=0, cron=cron, zone=zone)
    following = schedule.next_slot(at)
    assert following is not None
    assert following > at
    assert following - at > timedelta(hours=20)  # the repeated time ran once, in the first pass: tomorrow's
    assert all(slot > at for _, slot in zip(range(3), schedule.slots_after(at), strict=False))


@pytest.mark.parametrize(("zone", "cron", "at"), REPEATED_HOURS)
def test_a_schedule_starting_in_a_repeated_hour_has_no_slot_before_its_start(
    zone: str, cron: str, at: datetime
) -> None:
    schedule = Schedule(id="daily", payload=0, cron=cron, zone=zone, start=at)
    following = schedule.next_slot(at - timedelta(days=1))
    assert following is not None
    assert following >= at


async def test_a_schedule_started_in_a_repeated_hour_does_not_enqueue_a_slot_before_its_start() -> None:
    zone, cron, at = REPEATED_HOURS[0]
    clock = clock_from(at)
    daily = Schedule(id="daily", payload="p", cron=cron, zone=zone, start=at)
    witness = Schedule(id="witness", payload="p", every=timedelta(seconds=0.25), start=at)
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with open_scheduler(MemoryStore[str](), recorder, schedules=[daily, witness], clock=clock, workers=1):
            await recorder.wait_finished(3)  # a slot enqueued at start would have run by the witness's third
    assert slots_of(recorder.started, "daily") == []


def _transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """The moments (UTC, to the quarter hour) when ``zone``'s offset changed in ``year``."""
    found: list[datetime] = []
    moment = datetime(year, 1, 1, tzinfo=UTC)
    offset = moment.astimezone(zone).utcoffset()
    while moment.year == year:
        moment += timedelta(minutes=15)
        if moment.astimezone(zone).utcoffset() != offset:
            offset = moment.astimezone(zone).utcoffset()
            found.append(moment)
    return found


@pytest.mark.parametrize(
    ("zone", "year"),
    [
        ("Australia/Lord_Howe", 2026),  # 30-minute changes
        ("Europe/Dublin", 2026),  # negative DST in the zone database
        ("America/Sao_Paulo", 2018),  # changes at midnight (DST ended in 2019)
        ("America/Havana", 2026),  # spring forward at midnight
        ("Asia/Beirut", 2026),  # spring forward at midnight
        ("Europe/Berlin", 2026),
    ],
)
@pytest.mark.parametrize("cron", ["0 0 * * *", "30 1 * * *", "15 2 * * *", "45 23 * * *", "*/30 * * * *"])
def test_around_every_transition_the_next_latest_and_due_slots_agree_with_one_forward_walk(
    zone: str, year: int, cron: str
) -> None:
    schedule = Schedule(id="s", payload=0, cron=cron, zone=zone)
    local = ZoneInfo(zone)
    changes = _transitions(local, year)
    assert changes
    for change in changes:
        walk: list[datetime] = []  # three days before the change, two after, in one forward walk
        for slot in schedule.slots_after(change - timedelta(days=3)):
            if slot > change + timedelta(days=2):
                break
            walk.append(slot)
        assert walk == sorted(set(walk))
        if cron.split()[1] != "*":  # a fixed hour: exactly one slot on each local day around the change
            days = [slot.astimezone(local).date() for slot in walk]
            inner = days[1:-1]  # the walk's first and last days may be cut
            assert len(inner) == len(set(inner))
        for minutes in range(-150, 150, 20):
            at = change + timedelta(minutes=minutes, seconds=7)
            upto = bisect.bisect_right(walk, at)  # walk[:upto] are the slots at or before ``at``
            assert schedule.next_slot(at) == walk[upto]
            assert schedule.latest_slots(at, 2) == walk[max(upto - 2, 0) : upto]
            handled = at - timedelta(minutes=10)
            due = walk[bisect.bisect_right(walk, handled) : upto][-1:]
            assert schedule.due_slots(handled, at) == due


# -- misfire grace at its bound ------------------------------------------------------------------


async def test_a_zero_misfire_grace_still_runs_the_slots_that_come_while_the_scheduler_runs(clock: Clock) -> None:
    start = clock()
    schedule = Schedule(id="tick", payload="p", every=timedelta(seconds=0.25), start=start, misfire_grace=timedelta(0))
    recorder = Recorder[str]()
    with anyio.fail_after(5):
        async with open_scheduler(MemoryStore[str](), recorder, schedules=[schedule], clock=clock):
            await recorder.wait_finished(3)
    ran = slots_of(recorder.started, "tick")
    assert {start + timedelta(seconds=0.25), start + timedelta(seconds=0.5)} <= set(ran)  # (trio starts on a slot)


async def test_a_zero_misfire_grace_runs_no_slot_missed_before_the_start() -> None:
    clock = clock_from(datetime(2030, 1, 1, 0, 30, tzinfo=UTC))  # the hourly slot was half an hour ago
    now = clock()
    hourly = Schedule(id="hourly", payload="p", every=timedelta(hours=1), misfire_grace=timedelta(0))
    witness = Schedule(id="witness", payload="p", every=timedelta(seconds=0.25), start=now)
    recorder = Recorder[str]()
    with anyio.fail_after(5):
        async with open_scheduler(MemoryStore[str](), recorder, schedules=[hourly, witness], clock=clock, workers=1):
            await recorder.wait_finished(3)
    assert slots_of(recorder.started, "hourly") == []


# -- one schedule whose slots cannot be computed ----------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        Schedule(id="bad", payload="secret-payload", every=timedelta(days=999_999_999)),  # its next slot: year 2.7M
        Schedule(id="bad", payload="secret-payload", every=timedelta(seconds=0.25), jitter=timedelta.max),
    ],
    ids=["every", "jitter"],
)
async def test_a_schedule_whose_slots_overflow_the_calendar_does_not_stop_the_others(
    bad: Schedule[str], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    witness = Schedule(id="witness", payload="p", every=timedelta(seconds=0.25), start=clock())
    recorder = Recorder[str]()
    with anyio.fail_after(5):
        async with open_scheduler(MemoryStore[str](), recorder, schedules=[bad, witness], clock=clock, workers=1):
            await recorder.wait_finished(3)
    assert len(slots_of(recorder.started, "witness")) == 3
    assert "bad" in caplog.text
    assert "OverflowError" in caplog.text
    assert "secret-payload" not in caplog.text


# -- one stored schedule that does not decode ------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])  # real time: SQLite works in threads
async def test_a_stored_schedule_that_no_longer_decodes_does_not_hide_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "jobs.db"
    async with SQLiteStore(db, str) as old_code:  # the payload type before a deploy changed it
        await old_code.put_schedule(Schedule(id="legacy", payload="secret-payload", every=timedelta(hours=1)))
    witness = Schedule(id="witness", payload=7, every=timedelta(seconds=0.1))
    ran: list[Job[int]] = []
    three = anyio.Event()

    async def handler(job: Job[int]) -> None:
        ran.append(job)
        if len(ran) >= 3:
            three.set()

    with anyio.fail_after(10):
        async with (
            SQLiteStore(db, int) as store,
            open_scheduler(store, handler, schedules=[witness], schedule_refresh=0.05, fetch_interval=0.05),
        ):
            await three.wait()
    assert {found.schedule_id for found in map(slot_of, ran) if found is not None} == {"witness"}
    assert "legacy" in caplog.text
    assert "secret-payload" not in caplog.text


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])  # real time: SQLite works in threads
async def test_a_declared_schedule_the_store_cannot_keep_does_not_stop_the_scheduler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unfit = Schedule(id="unfit", payload=cast(Any, "secret-payload"), every=timedelta(hours=1))  # not an int
    witness = Schedule(id="witness", payload=7, every=timedelta(seconds=0.1))
    ran: list[Job[int]] = []
    three = anyio.Event()

    async def handler(job: Job[int]) -> None:
        ran.append(job)
        if len(ran) >= 3:
            three.set()

    with anyio.fail_after(10):
        async with (
            SQLiteStore(tmp_path / "jobs.db", int) as store,
            open_scheduler(store, handler, schedules=[unfit, witness], schedule_refresh=0.05, fetch_interval=0.05),
        ):
            await three.wait()
    assert {found.schedule_id for found in map(slot_of, ran) if found is not None} == {"witness"}
    assert "unfit" in caplog.text
    assert "secret-payload" not in caplog.text


# -- many schedules ------------------------------------------------------------------------------


async def test_the_ticker_lets_other_tasks_run_while_it_looks_at_many_schedules(clock: Clock) -> None:
    # Its first look at 10,000 schedules takes seconds of CPU: handlers, lease renewals and the
    # fetcher must not wait for the end of it. An add that never yields stands for MemoryStore's.
    now = clock()
    count = 1000
    schedules = tuple(
        Schedule(id=f"s{n}", payload="p", every=timedelta(hours=1), start=now - timedelta(minutes=1))
        for n in range(count)
    )
    rounds = 0  # how often another task ran
    seen: list[int] = []
    all_added = anyio.Event()

    async def add(job: Job[str]) -> None:
        seen.append(rounds)
        if len(seen) == count:
            all_added.set()

    async def other_task() -> None:
        nonlocal rounds
        while True:
            await anyio.lowlevel.checkpoint()
            rounds += 1

    ticker = Ticker(schedules, add, clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_task)
            await tg.start(ticker.run)
            await all_added.wait()
            tg.cancel_scope.cancel()
    assert seen[-1] - seen[0] >= count // 200  # the others ran during the look (never, before the fix)


# -- probes that held (kept as regressions) ---------------------------------------------------------


async def test_a_slot_whose_add_reply_was_lost_is_enqueued_once_and_runs_once(clock: Clock) -> None:
    class LosesFirstReply(MemoryStore[str]):
        lost = 0

        async def add_job(self, job: Job[str]) -> None:
            await super().add_job(job)
            if not self.lost:
                self.lost += 1
                raise TransientStoreError("the reply was lost")

    store = LosesFirstReply()
    start = clock()
    schedule = Schedule(id="tick", payload="p", every=timedelta(seconds=0.25), start=start)
    recorder = Recorder[str]()
    with anyio.fail_after(5):
        async with open_scheduler(store, recorder, schedules=[schedule], clock=clock, store_backoff=FAST_RETRY):
            await recorder.wait_finished(3)
    assert store.lost == 1
    assert set(recorder.runs.values()) == {1}
    assert start in slots_of(recorder.started, "tick")  # the slot whose reply was lost ran, once


async def test_a_wall_clock_stepped_back_over_handled_slots_adds_none_of_them_again() -> None:
    offset = timedelta(0)
    origin = anyio.current_time()
    base = datetime(2030, 1, 1, tzinfo=UTC)

    def clock() -> datetime:
        return base + timedelta(seconds=anyio.current_time() - origin) + offset

    schedule = Schedule(id="tick", payload="p", every=timedelta(seconds=0.25), start=base)
    store = WrappedStore[str]()
    recorder = Recorder[str]()
    with anyio.fail_after(10):
        async with open_scheduler(store, recorder, schedules=[schedule], clock=clock, workers=1):
            await recorder.wait_finished(3)
            offset = -timedelta(seconds=1)  # back over the slots just handled
            await recorder.wait_finished(5)
    assert set(recorder.runs.values()) == {1}
    # no handled slot was tried again (the four the step went back over); one may be on its way at the exit
    assert store.calls["add_job"] <= len(recorder.runs) + 1
