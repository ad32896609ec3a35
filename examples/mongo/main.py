"""go-sched's email example on anysched and MongoDB: typed email jobs, two workers.

Run it against the MongoDB at ANYSCHED_MONGODB_URL, or with that unset against a test server it
starts and stops itself (see server.py)::

    python3 -m nox -s example -- mongo              # installs the test server the first time
    ANYSCHED_MONGODB_URL="mongodb://localhost:27017" python examples/mongo/main.py

It adds 20 email jobs due in 1 to 30 seconds, sends them with 2 workers (5% of sends fail on
purpose: those jobs end up failed, with the error stored), and stops when no job is pending,
or gracefully on Ctrl+C.
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import anyio
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from server import URL_ENV, mongodb_url

from anysched import Job, JobStatus, Scheduler, open_scheduler, shutdown_on_signals
from anysched.stores.mongo import MongoStore

FAILURE_RATE = 0.05
logger = logging.getLogger("email-example")


@dataclass(frozen=True)
class EmailJob:
    """The payload: stored as a nested document, given back to the handler as an EmailJob."""

    to: str
    subject: str
    body: str


async def send_email(job: Job[EmailJob]) -> None:
    """The handler: pretend to send, fail now and then as a real mail server would."""
    email = job.payload
    await anyio.sleep(random.uniform(0.05, 0.3))
    if random.random() < FAILURE_RATE:
        raise ConnectionError(f"SMTP server refused mail to {email.to}")
    logger.info("sent %r to %s (job %s, attempt %d)", email.subject, email.to, job.id, job.attempts)


def email_jobs(now: datetime, count: int = 20) -> list[Job[EmailJob]]:
    return [
        Job.create(
            EmailJob(to=f"user{n}@example.com", subject=f"Welcome #{n}", body="Hello from anysched!"),
            process_after=now + timedelta(seconds=random.uniform(1, 30)),
        )
        for n in range(count)
    ]


async def stop_when_done(store: MongoStore[EmailJob], scheduler: Scheduler[EmailJob]) -> None:
    """Shut the scheduler down once no job is pending (here or in another copy of the example)."""
    while await store.count(JobStatus.PENDING):  # noqa: ASYNC110 -- the jobs' state lives in the database
        await anyio.sleep(1)
    scheduler.shutdown()


async def main(url: str) -> int:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url, tz_aware=True, serverSelectionTimeoutMS=3000)
    try:
        try:
            await client.admin.command("ping")
        except PyMongoError as error:  # the message names only the error class: a URI can hold a password
            print(
                f"no MongoDB server answered at {URL_ENV} within 3 s ({type(error).__name__}); "
                f"start one or set {URL_ENV}",
                file=sys.stderr,
            )
            return 1
        store = MongoStore(client["anysched_example"]["email_jobs"], EmailJob)
        async with (
            open_scheduler(store, send_email, workers=2) as scheduler,
            anyio.create_task_group() as tg,
        ):
            for job in email_jobs(datetime.now(timezone.utc)):
                await scheduler.add_job(job)
            logger.info("added 20 email jobs due in 1-30 s; press Ctrl+C to stop early")
            tg.start_soon(stop_when_done, store, scheduler)
            await shutdown_on_signals(scheduler)  # returns when the scheduler stops
            tg.cancel_scope.cancel()
        return 0
    finally:
        await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with mongodb_url() as url:
        status = anyio.run(main, url)
    sys.exit(status)
