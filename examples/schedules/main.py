"""Recurring schedules: send the weekly digest every Monday at 08:00 Paris time.

Two schedules on a SQLite file: the weekly digest (cron ``0 8 * * MON`` in ``Europe/Paris``) and a
heartbeat every second. So that the digest's slot comes within the demo, the scheduler's wall
clock starts at ``--start`` (by default Monday 2026-06-01 07:59:58 in Paris, two seconds before
the slot) and then runs at real speed. Run it twice at once on the same ``--db``: each slot
still runs once, in one of the two processes.

    python examples/schedules/main.py [--backend trio] [--seconds 4] [--db schedules.db]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import anyio

from anysched import Job, Schedule, open_scheduler, slot_of
from anysched.stores.sqlite import SQLiteStore

PARIS = ZoneInfo("Europe/Paris")

SCHEDULES = [
    Schedule(id="weekly-digest", payload="digest", cron="0 8 * * MON", zone="Europe/Paris", max_attempts=3),
    Schedule(id="heartbeat", payload="heartbeat", every=timedelta(seconds=1)),
]


async def handler(job: Job[str]) -> None:
    slot = slot_of(job)  # which run this is: the schedule and its slot
    assert slot is not None
    print(f"{job.payload} for slot {slot.slot.astimezone(PARIS):%Y-%m-%d %H:%M:%S %Z} (job {job.id})", flush=True)


def clock_from(start: datetime) -> Callable[[], datetime]:
    """A wall clock that reads ``start`` now and runs at real speed."""
    origin = anyio.current_time()
    return lambda: start + timedelta(seconds=anyio.current_time() - origin)


async def main(db: str, start: datetime, seconds: float) -> None:
    async with (
        SQLiteStore(db, str) as store,
        open_scheduler(store, handler, schedules=SCHEDULES, clock=clock_from(start), fetch_interval=0.2),
    ):
        await anyio.sleep(seconds)
    print("done", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--start", type=datetime.fromisoformat, default=datetime(2026, 6, 1, 7, 59, 58, tzinfo=PARIS))
    parser.add_argument("--db", default=os.path.join(tempfile.mkdtemp(prefix="anysched-"), "schedules.db"))
    options = parser.parse_args()
    anyio.run(main, options.db, options.start, options.seconds, backend=options.backend)
