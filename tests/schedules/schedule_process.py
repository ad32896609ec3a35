"""One process of ``test_schedule_processes``: a scheduler with one fast interval schedule on a shared store.

Usage: ``python schedule_process.py LOG BACKEND UNTIL sqlite PATH`` or
``python schedule_process.py LOG BACKEND UNTIL mongo URI DATABASE COLLECTION`` (sync PyMongo, which
MongoStore runs in worker threads on either backend) or
``python schedule_process.py LOG BACKEND UNTIL postgres URL SCHEMA`` (PostgresStore's own pool).
Declares the schedule every process declares (a slot every ``INTERVAL`` seconds), runs its slots'
jobs until the wall clock reads UNTIL (seconds since the epoch), then shuts down gracefully. Every run appends
``start ID LEASE PID`` and, when the handler returns, ``done ID LEASE PID`` to LOG, with one
unbuffered ``write`` each, so the lines survive a SIGKILL.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio

from anysched import Backoff, Job, JobStore, Schedule, open_scheduler

INTERVAL = timedelta(seconds=0.1)
SCHEDULE = Schedule(
    id="every-100ms",
    payload=0,
    every=INTERVAL,
    misfire="each",
    misfire_grace=timedelta(seconds=10),
    catch_up_limit=100,
)
"""Missed slots each run (within ten seconds), so a slot no process was alive for still counts."""


def record(fd: int, event: str, job: Job[int]) -> None:
    os.write(fd, f"{event} {job.id} {job.lease} {os.getpid()}\n".encode())


@asynccontextmanager
async def open_store(kind: str, target: list[str]) -> AsyncGenerator[JobStore[int]]:
    if kind == "sqlite":
        from anysched.stores.sqlite import SQLiteStore

        async with SQLiteStore(target[0], int, busy_timeout=10) as store:
            yield store
    elif kind == "postgres":
        from anysched.stores.postgres import PostgresStore

        url, schema = target
        async with PostgresStore(url, int, schema=schema) as store:
            yield store
    else:
        import pymongo

        from anysched.stores.mongo import MongoStore

        uri, database, collection = target
        client: pymongo.MongoClient[dict[str, Any]]
        client = pymongo.MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=10_000)
        with client:
            yield MongoStore(client[database][collection], int)


async def run(fd: int, until: float, kind: str, target: list[str]) -> None:
    async def handler(job: Job[int]) -> None:
        record(fd, "start", job)
        await anyio.sleep(random.uniform(0.01, 0.05))  # long enough that a kill lands mid-job
        record(fd, "done", job)

    backoff = Backoff(initial=0.01, maximum=0.2, jitter=0.01)
    async with (
        open_store(kind, target) as store,
        open_scheduler(
            store, handler, schedules=[SCHEDULE], fetch_interval=0.05, visibility_timeout=1.0, store_backoff=backoff
        ),
    ):
        await anyio.sleep(max(0.0, until - time.time()))


def main() -> None:
    log, backend, until, kind, *target = sys.argv[1:]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    anyio.run(run, fd, float(until), kind, target, backend=backend)


if __name__ == "__main__":
    main()
