"""The anysched demo: go-sched's email example on the in-memory store.

Adds 20 typed email jobs due over the next few seconds and runs them on 3 workers. One
send in five meets a refusing SMTP server and is retried (3 attempts, backoff); mail to an
``invalid`` address fails for good at once. It stops when every job has finished. Ctrl+C
shuts down gracefully: running jobs finish, the rest are handed back; a second Ctrl+C
cancels the running ones too.

    python examples/simple/main.py [--backend trio] [--jobs 20] [--workers 3]
"""

from __future__ import annotations

import argparse
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import anyio

from anysched import Backoff, FailJob, Job, JobStatus, MemoryStore, RetryPolicy, open_scheduler, shutdown_on_signals

RETRY = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.5, maximum=2.0, jitter=0.2))


@dataclass(frozen=True)
class Email:
    to: str
    subject: str


class Mailer:
    """The handler: pretends to send an email, and tells when every job has finished for good."""

    def __init__(self, expected: int, rng: random.Random) -> None:
        self.expected = expected
        self.finished = 0
        self.all_done = anyio.Event()
        self._rng = rng

    async def __call__(self, job: Job[Email]) -> None:
        final = True  # does this run end the job, whatever happens?
        try:
            await anyio.sleep(self._rng.uniform(0.1, 0.6))  # talking to the SMTP server
            if job.payload.to.endswith(".invalid"):
                raise FailJob(f"no such domain: {job.payload.to}")  # retrying cannot help
            if self._rng.random() < 0.2:
                final = job.attempts >= RETRY.max_attempts
                raise ConnectionError(f"SMTP server refused mail to {job.payload.to} (attempt {job.attempts})")
            print(f"sent {job.payload.subject!r} to {job.payload.to} (attempt {job.attempts})")
        finally:
            self.finished += final
            if self.finished == self.expected:
                self.all_done.set()


async def main(jobs: int, workers: int, seed: int) -> None:
    rng = random.Random(seed)
    store = MemoryStore[Email]()
    mailer = Mailer(jobs, rng)
    async with (
        open_scheduler(store, mailer, workers=workers, retry=RETRY) as scheduler,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(shutdown_on_signals, scheduler)
        now = datetime.now(timezone.utc)
        for n in range(jobs):
            domain = "example.invalid" if n % 7 == 6 else "example.com"
            email = Email(to=f"user{n}@{domain}", subject=f"Newsletter #{n}")
            due = now + timedelta(seconds=rng.uniform(0, 5))
            await scheduler.add_job(Job.create(email, process_after=due))
        print(f"added {jobs} jobs due within 5 s; {workers} workers; Ctrl+C to stop early")

        async def shutdown_when_all_done() -> None:
            await mailer.all_done.wait()
            scheduler.shutdown()

        tg.start_soon(shutdown_when_all_done)
        await scheduler.wait_stopped()  # all done, or Ctrl+C
        tg.cancel_scope.cancel()
    counts = {status.value: await store.count(status) for status in JobStatus}
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
