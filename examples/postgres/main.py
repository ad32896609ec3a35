"""go-sched's email example on anysched and PostgreSQL: typed email jobs, two workers, Ctrl+C to stop.

Run against the server at ANYSCHED_POSTGRES_URL (default postgresql://127.0.0.1:5432/test), on
asyncio (psycopg's async pool) or trio (its sync pool in worker threads)::

    python examples/postgres/main.py
    python examples/postgres/main.py --backend trio

It adds 20 email jobs due in 1 to 30 seconds, sends them with 2 workers (5% of sends fail on
purpose: those jobs end up failed, with the error stored), and stops gracefully on Ctrl+C.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import anyio

from anysched import Job, TransientStoreError, open_scheduler, shutdown_on_signals
from anysched.stores.postgres import PostgresStore, PostgresStoreError

FAILURE_RATE = 0.05
logger = logging.getLogger("email-example")


@dataclass(frozen=True)
class EmailJob:
    """The payload: stored as jsonb, given back to the handler as an EmailJob."""

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


async def main(schema: str) -> int:
    url = os.environ.get("ANYSCHED_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
    store = PostgresStore(url + ("&" if "?" in url else "?") + "connect_timeout=3", EmailJob, schema=schema)
    try:
        await store.open()
    except (TransientStoreError, PostgresStoreError) as error:  # their messages never hold the URL
        print(f"no PostgreSQL server answered at ANYSCHED_POSTGRES_URL: {error}", file=sys.stderr)
        return 1
    async with store, open_scheduler(store, send_email, workers=2) as scheduler:
        for job in email_jobs(datetime.now(timezone.utc)):
            await scheduler.add_job(job)
        logger.info("added 20 email jobs due in 1-30 s; press Ctrl+C to stop")
        await shutdown_on_signals(scheduler)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the email example on PostgreSQL")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--schema", default="anysched_example", help="the PostgreSQL schema of the jobs table")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(anyio.run(main, arguments.schema, backend=arguments.backend))
