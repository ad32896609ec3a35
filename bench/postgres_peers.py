"""Benchmark: the PostgreSQL peers on the same server and job count as ``bench/postgres.py``.

Runs no-op jobs through pgqueuer (asyncpg) and procrastinate (psycopg) with 10 and 100
concurrent jobs, each in a schema of its own that is dropped afterwards. Needs
``pip install pgqueuer procrastinate asyncpg`` (not anysched dependencies)::

    python bench/postgres_peers.py --jobs 5000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import time
import uuid
from typing import Any

PGQ_SCHEMA = f"anysched_bench_pgq_{uuid.uuid4().hex[:8]}"
os.environ["PGQUEUER_SCHEMA"] = PGQ_SCHEMA  # read when pgqueuer builds its settings
URL = os.environ.get("ANYSCHED_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


async def drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as connection:
        await connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def pgqueuer_rate(jobs: int, workers: int) -> float:
    asyncpg: Any = importlib.import_module("asyncpg")  # no type information: Any, explicitly
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    connection = await asyncpg.connect(URL)
    try:
        await drop_schema(PGQ_SCHEMA)
        await connection.execute(f'CREATE SCHEMA "{PGQ_SCHEMA}"')
        await connection.execute(f'SET search_path TO "{PGQ_SCHEMA}"')
        driver = AsyncpgDriver(connection)
        queries = Queries(driver)
        await queries.install(create_schema=False)
        for start in range(0, jobs, 1000):
            count = min(1000, jobs - start)
            await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        manager = QueueManager(queries)

        @manager.entrypoint("noop")
        async def noop(job: Job) -> None:
            pass

        began = time.perf_counter()
        batch = min(10, workers // 2)
        await manager.run(mode=QueueExecutionMode.drain, max_concurrent_tasks=workers, batch_size=batch)
        return jobs / (time.perf_counter() - began)
    finally:
        await connection.close()
        await drop_schema(PGQ_SCHEMA)


async def procrastinate_rate(jobs: int, workers: int) -> float:
    import procrastinate
    from psycopg import sql

    schema = f"anysched_bench_pro_{uuid.uuid4().hex[:8]}"
    await drop_schema(schema)
    connector = procrastinate.PsycopgConnector(conninfo=URL, kwargs={"options": f"-c search_path={schema}"})
    app = procrastinate.App(connector=connector)

    @app.task(name="noop")
    async def noop() -> None:
        pass

    async with app.open_async():
        async with connector.pool.connection() as connection:
            await connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        await app.schema_manager.apply_schema_async()
        for _ in range(jobs):
            await noop.defer_async()
        began = time.perf_counter()
        await app.run_worker_async(concurrency=workers, wait=False, install_signal_handlers=False)
        rate = jobs / (time.perf_counter() - began)
    await drop_schema(schema)
    return rate


async def main(jobs: int, which: list[str]) -> None:
    for name, measure in (("pgqueuer", pgqueuer_rate), ("procrastinate", procrastinate_rate)):
        if name not in which:
            continue
        rates = {workers: await measure(jobs, workers) for workers in (10, 100)}
        print(f"{name:14} no-op jobs/s   10: {rates[10]:8.0f}   100: {rates[100]:8.0f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the PostgreSQL peers on the same benchmark")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--only", nargs="*", default=["pgqueuer", "procrastinate"])
    arguments = parser.parse_args()
    asyncio.run(main(arguments.jobs, arguments.only))
