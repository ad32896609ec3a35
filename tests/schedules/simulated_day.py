"""A simulated day of the schedule ticker: many seeded schedules, the ticker on trio's mock clock, every
slot checked (fired once, none missed). ``bench/schedules.py`` measures its CPU time; ``test_bench.py`` runs
a small one."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio

from anysched import Job, Schedule
from anysched._ticker import Ticker

EPOCH = datetime(2026, 3, 28, 12, tzinfo=timezone.utc)  # a day that crosses Europe's spring-forward change
ZONES = ["UTC", "Europe/Berlin", "Europe/Paris", "America/New_York", "Australia/Sydney", "Asia/Tokyo"]


def make_schedules(count: int, seed: int) -> tuple[Schedule[int], ...]:
    chooser = random.Random(seed)
    schedules: list[Schedule[int]] = []
    for number in range(count):
        kind = chooser.random()
        minute, hour, zone = chooser.randrange(60), chooser.randrange(24), chooser.choice(ZONES)
        options: dict[str, Any]
        if kind < 0.4:
            options = {"cron": f"{minute} * * * *", "zone": zone}
        elif kind < 0.7:
            options = {"cron": f"{minute} {hour} * * *", "zone": zone}
        elif kind < 0.8:
            options = {"cron": f"{minute} {hour} * * {chooser.randrange(7)}"}
        else:
            options = {"every": timedelta(minutes=chooser.randrange(5, 61))}
        schedules.append(Schedule(id=f"schedule-{number}", payload=number, **options))
    return tuple(schedules)


def expected_ids(schedules: tuple[Schedule[int], ...], start: datetime, end: datetime) -> set[str]:
    """Every slot's job id in ``(start, end)``, from the pure slot function, to check the ticker's work."""
    expected: set[str] = set()
    for schedule in schedules:
        for slot in schedule.slots_after(start):
            if slot >= end:
                break
            expected.add(schedule.job_for(slot).id)
    return expected


async def simulate(schedules: tuple[Schedule[int], ...], hours: float) -> dict[str, float]:
    fired = 0
    ids: set[str] = set()

    async def add(job: Job[int]) -> None:
        nonlocal fired
        fired += 1
        ids.add(job.id)

    origin = anyio.current_time()

    def clock() -> datetime:
        return EPOCH + timedelta(seconds=anyio.current_time() - origin)

    ticker = Ticker(schedules, add, clock)
    began = time.process_time()
    started: float | None = None  # bound before the block, which might swallow an exception to pyright
    at_start = 0
    async with anyio.create_task_group() as tg:
        await tg.start(ticker.run)
        await anyio.lowlevel.checkpoint()
        started = time.process_time()
        at_start = fired
        await anyio.sleep(hours * 3600)
        tg.cancel_scope.cancel()
    ended = time.process_time()
    assert started is not None, "the ticker never started"
    day = (ended - started) * 24 / hours
    expected = expected_ids(schedules, EPOCH, EPOCH + timedelta(hours=hours))
    assert ids >= expected, f"{len(expected - ids)} slot(s) never fired"
    assert len(ids) == fired, "a slot fired twice"
    return {
        "startup_s": started - began,
        "fired_at_start": at_start,
        "cpu_s": ended - started,
        "cpu_s_per_day": day,
        "fired": fired - at_start,
        "us_per_fire": (ended - started) / max(1, fired - at_start) * 1e6,
        "wakes": ticker.statistics.wakes,
    }
