"""The Postgres peers, measured the way ``bench/postgres.py`` measures anysched: N no-op jobs, put in
the queue before timing starts, drained by a worker of W concurrent slots; jobs per second.

- **pgqueuer** (asyncpg): a ``QueueManager`` with one entrypoint whose ``concurrency_limit`` is W,
  dequeuing batches of W, run in ``drain`` mode (it returns once the queue is empty and the last
  job is done).
- **procrastinate** (psycopg 3): ``run_worker_async(concurrency=W, wait=False)`` (it returns once no
  job is left).

Each peer gets a database of its own (``anysched_bench_pgqueuer``, ``anysched_bench_procrastinate``),
created on the server of ``ANYSCHED_POSTGRES_URL`` (default ``postgresql://127.0.0.1:5432/test``) and
emptied before each run. Both are asyncio-only. They are not dependencies of anysched: install them
into the bench's virtualenv with ``pip install pgqueuer procrastinate``; without one, its rows say so.

Usage::

    python bench/postgres_peers.py --jobs 5000 --workers 10 100
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

DEFAULT_URL = "postgresql://127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("ANYSCHED_POSTGRES_URL", DEFAULT_URL)


def database_url(base: str, name: str) -> str:
    """``base`` (a ``postgresql://`` URL) with its database replaced by ``name``, created if need be."""
    with psycopg.connect(base, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            connection.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


async def pgqueuer_rate(base: str, jobs: int, workers: int) -> float | None:
    """No-op jobs per second through pgqueuer with ``workers`` concurrent slots; ``None`` if not installed."""
    try:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no types shipped
        from pgqueuer import AsyncpgDriver, QueueManager
        from pgqueuer.queries import Queries
        from pgqueuer.types import QueueExecutionMode
    except ImportError:
        return None
    url = database_url(base, "anysched_bench_pgqueuer")
    connection = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(connection))
        if not await queries.has_table("pgqueuer"):
            await queries.install()
        await queries.clear_queue()
        await queries.clear_queue_log()
        for start in range(0, jobs, 1000):
            batch = min(1000, jobs - start)
            await queries.enqueue(["noop"] * batch, [None] * batch, [0] * batch)
        manager = QueueManager(queries)

        @manager.entrypoint("noop", concurrency_limit=workers)
        async def noop(job: Any) -> None:
            pass

        begin = time.perf_counter()
        await manager.run(
            batch_size=workers,
            max_concurrent_tasks=2 * workers,
            mode=QueueExecutionMode.drain,
            dequeue_timeout=timedelta(seconds=0.1),
        )
        elapsed = time.perf_counter() - begin
        left = await connection.fetchval("SELECT count(*) FROM pgqueuer")
        if left:
            raise RuntimeError(f"pgqueuer left {left} job(s) in its queue")
        return jobs / elapsed
    finally:
        await connection.close()


async def procrastinate_rate(base: str, jobs: int, workers: int) -> float | None:
    """No-op jobs per second through procrastinate with ``concurrency=workers``; ``None`` if not installed."""
    try:
        import procrastinate
    except ImportError:
        return None
    url = database_url(base, "anysched_bench_procrastinate")
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(n: int) -> None:
        pass

    async with app.open_async():
        with psycopg.connect(url, autocommit=True) as connection:
            installed = connection.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()
            if installed is None or installed[0] is None:
                await app.schema_manager.apply_schema_async()
            connection.execute("TRUNCATE procrastinate_jobs CASCADE")
        for start in range(0, jobs, 1000):
            batch: list[dict[str, Any]] = [{"n": n} for n in range(start, min(jobs, start + 1000))]
            await noop.batch_defer_async(*batch)
        begin = time.perf_counter()
        await app.run_worker_async(
            concurrency=workers, wait=False, install_signal_handlers=False, delete_jobs="never", listen_notify=False
        )
        elapsed = time.perf_counter() - begin
        with psycopg.connect(url) as connection:
            row = connection.execute("SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'").fetchone()
        if row is not None and row[0]:
            raise RuntimeError(f"procrastinate left {row[0]} job(s) unfinished")
        return jobs / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = server_url()
    for workers in args.workers:
        for name, measure in (("pgqueuer", pgqueuer_rate), ("procrastinate", procrastinate_rate)):
            rate = asyncio.run(measure(base, args.jobs, workers))
            shown = "not installed" if rate is None else f"{rate:,.0f} jobs/s"
            print(f"{name:>14} {workers:>4} workers: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
