"""The anysched demo: go-sched's email example on the in-memory store.

Adds 20 typed email jobs due over the next few seconds, runs them on 3 workers (one email
in ten fails), and stops when every job has run. Ctrl+C shuts down gracefully: running
jobs finish, the rest are handed back; a second Ctrl+C cancels the running ones too.

    python examples/simple/main.py [--backend trio] [--jobs 20] [--workers 3]
"""

from __future__ import annotations

import argparse
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import anyio

from anysched import Job, JobStatus, MemoryStore, open_scheduler, shutdown_on_signals


@dataclass(frozen=True)
class Email:
    to: str
    subject: str


class Mailer:
    """The handler: pretends to send an email, and tells when every job has run."""

    def __init__(self, expected: int, rng: random.Random) -> None:
        self.expected = expected
        self.finished = 0
        self.all_done = anyio.Event()
        self._rng = rng

    async def __call__(self, job: Job[Email]) -> None:
        try:
            await anyio.sleep(self._rng.uniform(0.1, 0.6))  # talking to the SMTP server
            if self._rng.random() < 0.1:
                raise ConnectionError(f"SMTP server refused mail to {job.payload.to}")
            print(f"sent {job.payload.subject!r} to {job.payload.to}")
        finally:
            self.finished += 1
            if self.finished == self.expected:
                self.all_done.set()


async def main(jobs: int, workers: int, seed: int) -> None:
    rng = random.Random(seed)
    store = MemoryStore[Email]()
    mailer = Mailer(jobs, rng)
    async with open_scheduler(store, mailer, workers=workers) as scheduler, anyio.create_task_group() as tg:
        tg.start_soon(shutdown_on_signals, scheduler)
        now = datetime.now(timezone.utc)
        for n in range(jobs):
            email = Email(to=f"user{n}@example.com", subject=f"Newsletter #{n}")
            due = now + timedelta(seconds=rng.uniform(0, 5))
            await scheduler.add_job(Job.create(email, process_after=due))
        print(f"added {jobs} jobs due within 5 s; {workers} workers; Ctrl+C to stop early")

        async def shutdown_when_all_done() -> None:
            await mailer.all_done.wait()
            scheduler.shutdown()

        tg.start_soon(shutdown_when_all_done)
        await scheduler.wait_stopped()  # all done, or Ctrl+C
        tg.cancel_scope.cancel()
    counts = {status.value: store.count(status) for status in JobStatus}
    print(f"done: {counts}")
    for job in store.jobs():
        if job.status is JobStatus.FAILED:
            print(f"  failed: {job.payload.to}: {job.last_error}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    anyio.run(main, args.jobs, args.workers, args.seed, backend=args.backend)


if __name__ == "__main__":
    cli()
