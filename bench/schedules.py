"""The schedule ticker's CPU time per simulated day, with many schedules.

A :class:`~anysched._ticker.Ticker` with ``--schedules`` schedules (10,000 by default) runs on
trio's ``MockClock(autojump_threshold=0)``: its sleeps until the next slot cost no real time, so
a whole simulated day passes in the CPU time the ticker itself needs. Its ``add`` is a no-op
that counts: the figure is the ticker's own cost (heap, slot arithmetic, cron evaluation, job
construction), not a store's.

The schedules are a mix, seeded:

- 40% hourly at a random minute (``M * * * *``) in one of six zones;
- 30% daily at a random time (``M H * * *``), one of six zones;
- 10% weekly (``M H * * D``), UTC;
- 20% fixed intervals of 5 to 60 minutes.

Printed: the start-up cost (each schedule's first look, with its misfire check), the CPU time of
the simulated day, the slots fired, and the CPU time per fire. It grows as O(log n) per fire.

Usage::

    python bench/schedules.py                      # 10,000 schedules, one day
    python bench/schedules.py --schedules 1000 --hours 6
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime, timedelta, timezone

import anyio
import trio.testing

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
        if kind < 0.4:
            options = {"cron": f"{minute} * * * *", "zone": zone}
        elif kind < 0.7:
            options = {"cron": f"{minute} {hour} * * *", "zone": zone}
        elif kind < 0.8:
            options = {"cron": f"{minute} {hour} * * {chooser.randrange(7)}"}
        else:
            options = {"every": timedelta(minutes=chooser.randrange(5, 61))}
        schedules.append(Schedule(id=f"schedule-{number}", payload=number, **options))  # type: ignore[arg-type]
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
    async with anyio.create_task_group() as tg:
        await tg.start(ticker.run)
        await anyio.lowlevel.checkpoint()
        started = time.process_time()
        at_start = fired
        await anyio.sleep(hours * 3600)
        tg.cancel_scope.cancel()
    ended = time.process_time()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    schedules = make_schedules(options.schedules, options.seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    result = anyio.run(simulate, schedules, options.hours, backend="trio", backend_options={"clock": clock})
    print(
        f"{options.schedules} schedules, {options.hours:g} simulated hours on trio's MockClock:\n"
        f"  start-up (first look at each schedule): {result['startup_s']:.2f} s CPU, "
        f"{result['fired_at_start']:.0f} slot(s) coalesced\n"
        f"  simulated run: {result['cpu_s']:.2f} s CPU for {result['fired']:.0f} slots fired "
        f"({result['us_per_fire']:.0f} us per fire, {result['wakes']:.0f} wakes)\n"
        f"  => {result['cpu_s_per_day']:.1f} s of ticker CPU per simulated day; every slot fired, none twice"
    )


if __name__ == "__main__":
    main()
