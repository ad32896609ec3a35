"""Benchmark: PostgresStore on the local server (or ``ANYSCHED_POSTGRES_URL``), asyncio and trio.

Measures, in one run, each in a fresh schema dropped afterwards:

- claims/s: ``fetch_pending_jobs`` in a loop on a table preloaded with jobs, one job per
  claim and 20 per claim (no handler, no completion);
- end-to-end no-op jobs/s: a scheduler with 10 and with 100 workers runs preloaded no-op
  jobs, each claimed, run and marked completed in the table;
- wake-up latency: from calling ``add_job`` on one store to ``wake()`` in another store's
  ``wake_ups`` block (two connections, through the server's LISTEN/NOTIFY), p50 and p99.

Usage::

    python bench/postgres.py                      # the default run, about a minute
    python bench/postgres.py --jobs 20000 --backend trio

The peers (pgqueuer, procrastinate) have scripts of their own beside this one.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import datetime, timedelta, timezone

import anyio
import psycopg
from psycopg import sql

from anysched import Job, open_scheduler
from anysched.stores.postgres import PostgresStore

VT = timedelta(seconds=60)
URL = os.environ.get("ANYSCHED_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def job_batch(count: int) -> list[Job[int]]:
    now = datetime.now(timezone.utc)
    return [Job.create(n, process_after=now) for n in range(count)]


class FreshStore:
    """A store in a schema of its own, preloaded with ``jobs`` jobs; the schema is dropped on exit."""

    def __init__(self, jobs: int, max_connections: int = 10) -> None:
        self.schema = f"anysched_bench_{uuid.uuid4().hex[:10]}"
        self.store = PostgresStore(URL, int, schema=self.schema, max_connections=max_connections)
        self.jobs = jobs

    async def __aenter__(self) -> PostgresStore[int]:
        await self.store.open()
        batch = job_batch(self.jobs)
        for start in range(0, len(batch), 1000):
            await self.store.add_jobs(batch[start : start + 1000])
        # A table that has lived a while has statistics (autovacuum's ANALYZE); a fresh one would
        # be planned as empty until autovacuum's next round.
        with psycopg.connect(URL, autocommit=True) as connection:
            connection.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(self.schema, "jobs")))
        return self.store

    async def __aexit__(self, *exc_info: object) -> None:
        await self.store.aclose()
        with psycopg.connect(URL, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema)))


async def claims_per_second(jobs: int, batch: int) -> float:
    async with FreshStore(jobs) as store:
        now = datetime.now(timezone.utc) + timedelta(seconds=1)
        began = time.perf_counter()
        claimed = 0
        while found := await store.fetch_pending_jobs(now, batch, VT):
            claimed += len(found)
        elapsed = time.perf_counter() - began
    assert claimed == jobs, (claimed, jobs)
    return jobs / elapsed


async def jobs_per_second(jobs: int, workers: int) -> float:
    async with FreshStore(jobs, max_connections=min(workers, 20)) as store:
        left = jobs
        done = anyio.Event()

        async def noop(_: Job[int]) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                done.set()

        began = time.perf_counter()
        async with open_scheduler(store, noop, workers=workers, fetch_interval=0.05):
            with anyio.fail_after(600):
                await done.wait()
        return jobs / (time.perf_counter() - began)


async def wake_up_latency(samples: int) -> tuple[float, float]:
    """Seconds from calling ``add_job`` on one store to ``wake()`` in another's block: p50, p99."""
    fresh = FreshStore(0)
    latencies: list[float] = []
    async with fresh as listener:
        woken: list[float] = []
        arrived = anyio.Event()

        def wake() -> None:
            woken.append(time.perf_counter())
            arrived.set()

        async with PostgresStore(URL, int, schema=fresh.schema) as adder, listener.wake_ups(wake):
            for n in range(samples):
                arrived = anyio.Event()
                woken.clear()
                called = time.perf_counter()
                await adder.add_job(Job.create(n))
                with anyio.fail_after(10):
                    await arrived.wait()
                latencies.append(woken[0] - called)
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]


async def run(jobs: int, backend: str) -> None:
    one = await claims_per_second(min(jobs, 2000), 1)
    twenty = await claims_per_second(jobs, 20)
    print(
        f"{backend:8} claims/s   batch 1: {one:8.0f}   batch 20: {twenty:8.0f}   ratio {twenty / one:.1f}x", flush=True
    )
    rates = {workers: await jobs_per_second(jobs, workers) for workers in (10, 100)}
    print(
        f"{backend:8} no-op jobs/s   10 workers: {rates[10]:8.0f}   100 workers: {rates[100]:8.0f}"
        f"   ratio {rates[100] / rates[10]:.2f}x",
        flush=True,
    )
    p50, p99 = await wake_up_latency(200)
    print(
        f"{backend:8} add_job called to wake() elsewhere   p50 {p50 * 1000:.2f} ms   p99 {p99 * 1000:.2f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    arguments = parser.parse_args()
    server = psycopg.connect(URL).info.server_version
    print(f"PostgreSQL {server // 10000}.{server % 10000}, {arguments.jobs} jobs, psycopg {psycopg.__version__}")
    for backend in ("asyncio", "trio") if arguments.backend == "both" else (arguments.backend,):
        anyio.run(run, arguments.jobs, backend, backend=backend)


if __name__ == "__main__":
    main()
