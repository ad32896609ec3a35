"""Slots of a schedule, a pure function of time: tables across real daylight-saving changes."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from anysched import Job, Schedule, slot_of

UTC = timezone.utc


def local(zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)


def slots_between(schedule: Schedule[int], start: datetime, end: datetime) -> list[datetime]:
    found: list[datetime] = []
    slot = schedule.next_slot(start)
    while slot is not None and slot < end:
        found.append(slot)
        slot = schedule.next_slot(slot)
    return found


def day_of(zone: str, year: int, month: int, day: int, *, offset: int = 0) -> tuple[datetime, datetime]:
    """The UTC span of one local calendar day in ``zone`` (23, 24, 24.5 or 25 hours long),
    ``offset`` days after the one given."""
    first = date(year, month, day) + timedelta(days=offset)
    second = first + timedelta(days=1)
    return (
        local(zone, first.year, first.month, first.day) - timedelta(microseconds=1),
        local(zone, second.year, second.month, second.day),
    )


# zone, the day of the change, the daily time asked for, the one local moment it must fire at
DAILY_ON_CHANGE_DAYS = [
    # spring forward: 02:30 does not exist; it fires at the first valid moment after the gap
    ("Europe/Berlin", (2026, 3, 29), "30 2 * * *", (2026, 3, 29, 3, 0)),
    ("America/New_York", (2026, 3, 8), "30 2 * * *", (2026, 3, 8, 3, 0)),
    ("Australia/Sydney", (2026, 10, 4), "30 2 * * *", (2026, 10, 4, 3, 0)),
    ("Australia/Lord_Howe", (2026, 10, 4), "15 2 * * *", (2026, 10, 4, 2, 30)),  # a 30-minute gap
    # fall back: 02:30 (01:30 in New York, 01:45 on Lord Howe) happens twice; it fires once, the first time
    ("Europe/Berlin", (2026, 10, 25), "30 2 * * *", (2026, 10, 25, 2, 30)),
    ("America/New_York", (2026, 11, 1), "30 1 * * *", (2026, 11, 1, 1, 30)),
    ("Australia/Sydney", (2026, 4, 5), "30 2 * * *", (2026, 4, 5, 2, 30)),
    ("Australia/Lord_Howe", (2026, 4, 5), "45 1 * * *", (2026, 4, 5, 1, 45)),
]


@pytest.mark.parametrize(("zone", "day", "cron", "fires_at"), DAILY_ON_CHANGE_DAYS)
def test_a_daily_schedule_fires_exactly_once_on_a_change_day(
    zone: str, day: tuple[int, int, int], cron: str, fires_at: tuple[int, ...]
) -> None:
    schedule = Schedule(id="daily", payload=0, cron=cron, zone=zone)
    assert slots_between(schedule, *day_of(zone, *day)) == [local(zone, *fires_at)]


@pytest.mark.parametrize(("zone", "day", "cron", "fires_at"), DAILY_ON_CHANGE_DAYS)
def test_the_days_around_a_change_fire_once_each_at_their_time(
    zone: str, day: tuple[int, int, int], cron: str, fires_at: tuple[int, ...]
) -> None:
    schedule = Schedule(id="daily", payload=0, cron=cron, zone=zone)
    minute, hour = (int(part) for part in cron.split()[:2])
    for offset in (-1, 1):
        start, end = day_of(zone, *day, offset=offset)
        other_day = (start + timedelta(microseconds=1)).astimezone(ZoneInfo(zone))
        expected = local(zone, other_day.year, other_day.month, other_day.day, hour, minute)
        assert slots_between(schedule, start, end) == [expected]


# zone, a change's day, how many hourly slots that local day holds
HOURLY = [
    ("Europe/Berlin", (2026, 3, 29), 23),
    ("Europe/Berlin", (2026, 10, 25), 25),
    ("America/New_York", (2026, 3, 8), 23),
    ("America/New_York", (2026, 11, 1), 25),
    ("Australia/Sydney", (2026, 10, 4), 23),
    ("Australia/Sydney", (2026, 4, 5), 25),
]


@pytest.mark.parametrize(("zone", "day", "count"), HOURLY)
def test_an_hourly_schedule_keeps_real_hours_across_a_change(zone: str, day: tuple[int, int, int], count: int) -> None:
    schedule = Schedule(id="hourly", payload=0, cron="@hourly", zone=zone)
    start, end = day_of(zone, *day)
    slots = slots_between(schedule, start - timedelta(hours=2), end + timedelta(hours=2))
    assert all(later - earlier == timedelta(hours=1) for earlier, later in itertools.pairwise(slots))
    assert len([slot for slot in slots if start < slot < end]) == count


def test_an_hourly_schedule_in_a_half_hour_shift_zone_follows_the_local_hour() -> None:
    # Lord Howe moves 30 minutes: local hh:00 is once a real hour, except across the change
    # (02:00 does not exist on the spring day; the slot after 01:00 is 03:00, 90 minutes later).
    zone = "Australia/Lord_Howe"
    schedule = Schedule(id="hourly", payload=0, cron="0 * * * *", zone=zone)
    slots = slots_between(schedule, *day_of(zone, 2026, 10, 4))
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert gaps.count(timedelta(minutes=90)) == 1
    assert all(gap == timedelta(hours=1) for gap in gaps if gap != timedelta(minutes=90))
    assert [slot.astimezone(ZoneInfo(zone)).minute for slot in slots] == [0] * len(slots)


def test_an_interval_counts_real_elapsed_time_across_a_change() -> None:
    schedule = Schedule(id="every", payload=0, every=timedelta(minutes=45), start=local("Europe/Berlin", 2026, 3, 29))
    slots = slots_between(schedule, *day_of("Europe/Berlin", 2026, 3, 29))
    assert slots[0] == local("Europe/Berlin", 2026, 3, 29)
    assert all(later - earlier == timedelta(minutes=45) for earlier, later in itertools.pairwise(slots))
    assert len(slots) == 23 * 60 // 45 + 1  # a 23-hour day


CHANGES = [(zone, day) for zone, day, _, _ in DAILY_ON_CHANGE_DAYS]
CRONS = ["30 2 * * *", "45 1 * * *", "0 * * * *", "*/20 1-3 * * *", "0 8 * * MON"]


@pytest.mark.parametrize(("zone", "day"), CHANGES)
def test_latest_slots_agree_with_next_slot_every_ten_minutes_around_a_change(
    zone: str, day: tuple[int, int, int]
) -> None:
    start, end = day_of(zone, *day)
    for cron in CRONS:
        schedule = Schedule(id="s", payload=0, cron=cron, zone=zone)
        slots = slots_between(schedule, start - timedelta(days=30), end + timedelta(days=1))
        moment = start - timedelta(days=1)
        while moment < end + timedelta(days=1):
            expected = [slot for slot in slots if slot <= moment][-3:]
            assert schedule.latest_slots(moment, 3) == expected, (cron, moment)
            moment += timedelta(minutes=10)


def test_a_slot_on_the_moment_is_the_latest_and_not_the_next() -> None:
    schedule = Schedule(id="s", payload=0, cron="0 8 * * *")
    eight = datetime(2026, 6, 1, 8, tzinfo=UTC)
    assert schedule.latest_slot(eight) == eight
    assert schedule.next_slot(eight) == eight + timedelta(days=1)
    assert schedule.next_slot(eight - timedelta(microseconds=1)) == eight


def test_start_and_end_bound_the_slots() -> None:
    start, end = datetime(2026, 6, 1, 10, 30, tzinfo=UTC), datetime(2026, 6, 1, 13, tzinfo=UTC)
    schedule = Schedule(id="s", payload=0, cron="@hourly", start=start, end=end)
    assert slots_between(schedule, start - timedelta(days=1), end + timedelta(days=1)) == [
        datetime(2026, 6, 1, hour, tzinfo=UTC) for hour in (11, 12, 13)
    ]
    assert schedule.latest_slot(start) is None
    assert schedule.latest_slot(end + timedelta(days=3)) == end


def test_an_interval_without_start_counts_from_the_epoch_so_every_process_agrees() -> None:
    schedule = Schedule(id="s", payload=0, every=timedelta(hours=7))
    slot = schedule.next_slot(datetime(2026, 6, 1, tzinfo=UTC))
    assert slot is not None
    assert (slot - datetime(1970, 1, 1, tzinfo=UTC)) % timedelta(hours=7) == timedelta(0)


@pytest.mark.parametrize(
    ("misfire", "after", "expected"),
    [
        ("coalesce", None, [12]),  # the latest slot within the grace, once
        ("coalesce", 12, []),  # already handled
        ("each", None, [9, 10, 11, 12]),  # catch_up_limit of them
        ("each", 10, [11, 12]),
        ("each", 12, []),
    ],
)
def test_missed_slots_coalesce_or_each_within_grace_and_limit(
    misfire: Any, after: int | None, expected: list[int]
) -> None:
    schedule = Schedule(
        id="s", payload=0, cron="@hourly", misfire=misfire, misfire_grace=timedelta(hours=5), catch_up_limit=4
    )
    now = datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
    handled = None if after is None else now.replace(hour=after, minute=0)
    assert schedule.due_slots(handled, now) == [now.replace(hour=hour, minute=0) for hour in expected]


def test_a_slot_older_than_the_grace_is_skipped() -> None:
    schedule = Schedule(id="s", payload=0, cron="0 0 * * *", misfire_grace=timedelta(hours=1))
    assert schedule.due_slots(None, datetime(2026, 6, 1, 3, tzinfo=UTC)) == []
    assert schedule.due_slots(None, datetime(2026, 6, 1, 0, 59, tzinfo=UTC)) == [datetime(2026, 6, 1, tzinfo=UTC)]


def test_the_job_for_a_slot_names_it_and_is_the_same_in_every_process() -> None:
    schedule = Schedule(
        id="digest", payload={"list": "weekly"}, cron="0 8 * * MON", zone="Europe/Paris",
        jitter=timedelta(minutes=5), max_attempts=3, timeout=60,
    )  # fmt: skip
    slot = datetime(2026, 6, 1, 6, tzinfo=UTC)
    job = schedule.job_for(slot)
    assert job == schedule.job_for(slot)
    assert job.id == "schedule:digest@2026-06-01T06:00:00Z"
    assert slot <= job.process_after < slot + timedelta(minutes=5)
    assert (job.payload, job.max_attempts, job.timeout) == ({"list": "weekly"}, 3, 60.0)
    assert slot_of(job) == ("digest", slot)
    other = schedule.job_for(slot + timedelta(days=7))
    assert other.process_after - (slot + timedelta(days=7)) != job.process_after - slot  # spread


def test_slot_of_a_job_no_schedule_made_is_none() -> None:
    assert slot_of(Job.create(1)) is None
    assert slot_of(Job.create(1, id="schedule:x@not-a-time")) is None
    assert slot_of(Job.create(1, id="schedule:@2026-06-01T06:00:00Z")) is None
    assert slot_of(Job.create(1, id="schedule:a@b@2026-06-01T06:00:00Z")) == (
        "a@b",
        datetime(2026, 6, 1, 6, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({}, ValueError, "exactly one of cron and every"),
        ({"cron": "@daily", "every": timedelta(hours=1)}, ValueError, "exactly one of cron and every"),
        ({"cron": "61 * * * *"}, ValueError, "cron"),
        ({"cron": "* * * *"}, ValueError, "cron"),
        ({"cron": "@fortnightly"}, ValueError, "cron"),
        ({"cron": "@daily", "zone": "Mars/Olympus"}, ValueError, "zone"),
        ({"every": timedelta(0)}, ValueError, "every"),
        ({"every": 60}, TypeError, "every"),
        ({"cron": "@daily", "start": datetime(2026, 1, 1)}, ValueError, "start"),
        (
            {"cron": "@daily", "start": datetime(2026, 2, 1, tzinfo=UTC), "end": datetime(2026, 1, 1, tzinfo=UTC)},
            ValueError,
            "end",
        ),
        ({"cron": "@daily", "jitter": timedelta(seconds=-1)}, ValueError, "jitter"),
        ({"cron": "@daily", "max_attempts": 0}, ValueError, "max_attempts"),
        ({"cron": "@daily", "timeout": -1}, ValueError, "timeout"),
        ({"cron": "@daily", "misfire": "burst"}, ValueError, "misfire"),
        ({"cron": "@daily", "misfire_grace": timedelta(seconds=-1)}, ValueError, "misfire_grace"),
        ({"cron": "@daily", "catch_up_limit": 0}, ValueError, "catch_up_limit"),
        ({"cron": "@daily", "id": ""}, ValueError, "id"),
    ],
)
def test_a_bad_option_is_refused_by_name(options: dict[str, Any], error: type[Exception], names: str) -> None:
    fields: dict[str, Any] = {"id": "s", "payload": 0, **options}  # an "id" in options replaces this one
    with pytest.raises(error, match=names):
        Schedule(**fields)


def test_the_names_mean_the_usual_expressions() -> None:
    monday = datetime(2026, 6, 1, 0, 0, 1, tzinfo=UTC)  # a Monday
    expected = {
        "@hourly": datetime(2026, 6, 1, 1, tzinfo=UTC),
        "@daily": datetime(2026, 6, 2, tzinfo=UTC),
        "@midnight": datetime(2026, 6, 2, tzinfo=UTC),
        "@weekly": datetime(2026, 6, 7, tzinfo=UTC),
        "@monthly": datetime(2026, 7, 1, tzinfo=UTC),
        "@yearly": datetime(2027, 1, 1, tzinfo=UTC),
        "@annually": datetime(2027, 1, 1, tzinfo=UTC),
    }
    assert {name: Schedule(id="s", payload=0, cron=name).next_slot(monday) for name in expected} == expected
