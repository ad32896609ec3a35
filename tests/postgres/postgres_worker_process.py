"""One worker process of ``test_postgres_processes``: a scheduler on a shared PostgreSQL table.

Usage: ``python postgres_worker_process.py URL SCHEMA LOG BACKEND VISIBILITY_TIMEOUT``. Runs jobs (payload: an
int) until no job is pending, then shuts down gracefully. Every run of a job appends
``start ID ATTEMPT LEASE PID TIME`` and, when the handler returns, ``done ID ATTEMPT LEASE PID TIME``
to LOG, with one unbuffered ``write`` each, so the lines survive a SIGKILL.
"""

from __future__ import annotations

import os
import random
import sys
import time

import anyio

from anysched import Backoff, Job, JobStatus, open_scheduler
from anysched.stores.postgres import PostgresStore


def record(fd: int, event: str, job: Job[int]) -> None:
    os.write(fd, f"{event} {job.id} {job.attempts} {job.lease} {os.getpid()} {time.time():.6f}\n".encode())


async def run(url: str, schema: str, fd: int, visibility_timeout: float) -> None:
    async def handler(job: Job[int]) -> None:
        record(fd, "start", job)
        await anyio.sleep(random.uniform(0.01, 0.03))  # long enough that a kill lands mid-job
        record(fd, "done", job)

    backoff = Backoff(initial=0.01, maximum=0.2, jitter=0.01)
    async with (
        PostgresStore(url, int, schema=schema) as store,
        open_scheduler(
            store,
            handler,
            workers=10,
            fetch_interval=0.05,
            visibility_timeout=visibility_timeout,
            store_backoff=backoff,
        ),
    ):
        # Other processes' progress shows only in the shared table, so poll it.
        while await store.count(JobStatus.PENDING):  # noqa: ASYNC110
            await anyio.sleep(0.05)


def main() -> None:
    url, schema, log, backend, visibility_timeout = sys.argv[1:6]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    anyio.run(run, url, schema, fd, float(visibility_timeout), backend=backend)


if __name__ == "__main__":
    main()
