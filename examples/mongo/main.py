"""go-sched's email example on anysched and MongoDB: typed email jobs, two workers, Ctrl+C to stop.

Run against the server at MONGO_URI (default mongodb://localhost:27017)::

    python examples/mongo/main.py

It adds 20 email jobs due in 1 to 30 seconds, sends them with 2 workers (5% of sends fail on
purpose: those jobs end up failed, with the error stored), and stops gracefully on Ctrl+C.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import anyio
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from anysched import Job, open_scheduler, shutdown_on_signals
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


async def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uri = os.environ.get("MONGO_URI", "mongodb://localhost:27017")
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=3000)
    try:
        try:
            await client.admin.command("ping")
        except PyMongoError as error:  # the message names only the error class: a URI can hold a password
            print(
                f"no MongoDB server answered at MONGO_URI within 3 s ({type(error).__name__}); "
                "start one or set MONGO_URI",
                file=sys.stderr,
            )
            return 1
        store = MongoStore(client["anysched_example"]["email_jobs"], EmailJob)
        async with open_scheduler(store, send_email, workers=2) as scheduler:
            for job in email_jobs(datetime.now(timezone.utc)):
                await scheduler.add_job(job)
            logger.info("added 20 email jobs due in 1-30 s; press Ctrl+C to stop")
            await shutdown_on_signals(scheduler)
        return 0
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(anyio.run(main))
