"""Jobs that survive a restart: the demo's jobs kept in a SQLite file.

Run it, stop it with Ctrl+C half-way, run it again: the jobs that had not run yet run now,
and the ones that had are not run again::

    python examples/sqlite/main.py --db demo.db     # Ctrl+C after a few jobs
    python examples/sqlite/main.py --db demo.db     # the rest run; then it exits

The first run of a new database file adds the jobs; later runs find them there.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import anyio

from anysched import Job, JobStatus, Scheduler, open_scheduler, shutdown_on_signals
from anysched.stores.sqlite import SQLiteStore


@dataclass(frozen=True)
class Greeting:
    """The payload: whom to greet. Stored as JSON in the database."""

    name: str
    number: int


async def greet(job: Job[Greeting]) -> None:
    await anyio.sleep(0.5)  # some real work
    print(f"  job {job.payload.number:2}: hello, {job.payload.name}! (attempt {job.attempts})", flush=True)


def jobs_to_add(count: int) -> list[Job[Greeting]]:
    """``count`` greetings, one due every 0.2 s from now."""
    now = datetime.now(timezone.utc)
    return [
        Job.create(Greeting(f"person {n}", n), process_after=now + timedelta(seconds=0.2 * n), id=f"greeting-{n}")
        for n in range(1, count + 1)
    ]


async def stop_when_done(store: SQLiteStore[Greeting], scheduler: Scheduler[Greeting]) -> None:
    """Shut the scheduler down once no job is pending."""
    while await store.count(JobStatus.PENDING):  # noqa: ASYNC110 -- the jobs' state lives in the file
        await anyio.sleep(0.2)
    scheduler.shutdown()


async def main(db: str, count: int) -> None:
    async with SQLiteStore(db, Greeting) as store:
        if await store.count() == 0:
            await store.add_jobs(jobs_to_add(count))  # one transaction: all of them or none
            print(f"new database {db}: added {count} jobs")
        pending, done = await store.count(JobStatus.PENDING), await store.count(JobStatus.COMPLETED)
        print(f"{done} job(s) done before, {pending} to go. Ctrl+C stops (jobs running now finish first).")
        async with (
            open_scheduler(store, greet, workers=3, fetch_interval=0.5) as scheduler,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(stop_when_done, store, scheduler)
            await shutdown_on_signals(scheduler)  # returns when the scheduler stops
            tg.cancel_scope.cancel()
        pending = await store.count(JobStatus.PENDING)
    print("all jobs done." if pending == 0 else f"stopped: {pending} job(s) left; run me again to finish them.")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", default="anysched-demo.db", help="the SQLite file (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=20, help="how many jobs a new database gets")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("-v", "--verbose", action="store_true", help="show anysched's log")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_arguments()
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING)
    anyio.run(main, arguments.db, arguments.jobs, backend=arguments.backend)
