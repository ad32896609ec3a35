"""Benchmark: SQLiteStore beside MemoryStore (and APScheduler 4 on SQLite, if given).

Measures, in one run:

- claims/s: ``fetch_pending_jobs`` in a loop on a store preloaded with jobs (batches of 1
  and of 20), no handler, no completion;
- end-to-end no-op jobs/s: a scheduler (20 workers) runs preloaded no-op jobs, each
  claimed, run and marked completed in the store;
- the same two on SQLite with several processes sharing one file.

Usage::

    python bench/sqlite.py                      # the default run, one to two minutes
    python bench/sqlite.py --jobs 5000 --processes 4 --backend trio
    python bench/sqlite.py --apscheduler-python /path/to/venv/bin/python

``--apscheduler-python`` names a Python that has ``apscheduler>=4.0.0a5 sqlalchemy
aiosqlite`` installed; it runs ``bench/apscheduler_sqlite.py`` there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio

from anysched import Job, JobStatus, JobStore, MemoryStore, open_scheduler
from anysched.stores.sqlite import SQLiteStore

VT = timedelta(seconds=60)
WORKERS = 20
HERE = Path(__file__).resolve()


@dataclass
class Row:
    name: str
    claims_1: float | None = None
    claims_20: float | None = None
    jobs: float | None = None


# -- one process ---------------------------------------------------------------------------------


def job_batch(count: int) -> list[Job[int]]:
    now = datetime.now(timezone.utc)
    return [Job.create(n, process_after=now) for n in range(count)]


async def claims_per_second(store: JobStore[int], count: int, batch: int) -> float:
    """Jobs claimed per second, claiming ``batch`` at a time until the store is drained."""
    await add_all(store, job_batch(count))
    now = datetime.now(timezone.utc) + timedelta(seconds=1)
    began = time.perf_counter()
    claimed = 0
    while jobs := await store.fetch_pending_jobs(now, batch, VT):
        claimed += len(jobs)
    elapsed = time.perf_counter() - began
    assert claimed == count, (claimed, count)
    return count / elapsed


async def jobs_per_second(store: JobStore[int], count: int) -> float:
    """No-op jobs per second through a scheduler: claim, run, mark completed."""
    await add_all(store, job_batch(count))
    left = count
    done = anyio.Event()

    async def noop(_: Job[int]) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    began = time.perf_counter()
    async with open_scheduler(store, noop, workers=WORKERS, fetch_interval=0.05):
        with anyio.fail_after(600):
            await done.wait()
    return count / (time.perf_counter() - began)


async def add_all(store: JobStore[int], jobs: list[Job[int]]) -> None:
    if isinstance(store, SQLiteStore):
        await store.add_jobs(jobs)
    else:
        for job in jobs:
            await store.add_job(job)


async def measure_one_process(
    name: str, make: Callable[[Path], Awaitable[JobStore[int]]], jobs: int, directory: Path
) -> Row:
    row = Row(name)
    for batch in (1, 20):
        store = await make(directory / f"{name}-claims-{batch}.db")
        rate = await claims_per_second(store, jobs, batch)
        await close(store)
        if batch == 1:
            row.claims_1 = rate
        else:
            row.claims_20 = rate
    store = await make(directory / f"{name}-jobs.db")
    row.jobs = await jobs_per_second(store, jobs)
    await close(store)
    return row


async def close(store: JobStore[int]) -> None:
    if isinstance(store, SQLiteStore):
        await store.aclose()


# -- several processes -------------------------------------------------------------------------------


async def worker(mode: str, db: str, start_at: float, batch: int) -> None:
    """One process of the multi-process runs; prints ``{"first": …, "last": …, "count": …}``."""
    async with SQLiteStore(db, int, busy_timeout=30) as store:
        await anyio.sleep(max(0.0, start_at - time.time()))  # all processes begin together
        first = time.time()
        if mode == "claims":
            count, last = await claim_until_empty(store, batch)
        else:
            count, last = await run_until_empty(store)
    print(json.dumps({"first": first, "last": last, "count": count}))


async def claim_until_empty(store: SQLiteStore[int], batch: int) -> tuple[int, float]:
    now = datetime.now(timezone.utc) + timedelta(seconds=1)
    count = 0
    while jobs := await store.fetch_pending_jobs(now, batch, VT):
        count += len(jobs)
    return count, time.time()


async def run_until_empty(store: SQLiteStore[int]) -> tuple[int, float]:
    stats = {"count": 0, "last": time.time()}

    async def noop(_: Job[int]) -> None:
        stats["count"] += 1
        stats["last"] = time.time()

    async with open_scheduler(store, noop, workers=WORKERS, fetch_interval=0.05):
        while await store.count(JobStatus.PENDING):  # noqa: ASYNC110 -- other processes' progress is in the file
            await anyio.sleep(0.05)
    return int(stats["count"]), stats["last"]


async def measure_processes(processes: int, jobs: int, directory: Path, backend: str) -> Row:
    row = Row(f"sqlite, {processes} processes")
    for mode, batch in (("claims", 1), ("claims", 20), ("jobs", 20)):
        db = directory / f"procs-{mode}-{batch}.db"
        async with SQLiteStore(db, int) as store:
            await store.add_jobs(job_batch(jobs))
        rate = run_processes(processes, mode, db, batch, backend, jobs)
        if mode == "jobs":
            row.jobs = rate
        elif batch == 1:
            row.claims_1 = rate
        else:
            row.claims_20 = rate
    return row


def run_processes(processes: int, mode: str, db: Path, batch: int, backend: str, jobs: int) -> float:
    start_at = time.time() + 1.0 + 0.3 * processes  # time for every interpreter to start
    command = [sys.executable, str(HERE), "--worker", mode, str(db), str(start_at), str(batch), "--backend", backend]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    results = [json.loads(child.communicate(timeout=600)[0]) for child in children]
    assert sum(result["count"] for result in results) == jobs, results
    return float(jobs / (max(r["last"] for r in results) - min(r["first"] for r in results)))


# -- APScheduler -------------------------------------------------------------------------------------


def measure_apscheduler(python: str, jobs: int, directory: Path) -> Row:
    script = HERE.with_name("apscheduler_sqlite.py")
    output = subprocess.run(
        [python, str(script), str(jobs), str(directory / "apscheduler.db")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    return Row("APScheduler 4 SQLAlchemy+aiosqlite", jobs=json.loads(output.splitlines()[-1])["run_per_s"])


# -- the report -----------------------------------------------------------------------------------------


def print_table(rows: list[Row], memory: Row) -> None:
    def cell(value: float | None, base: float | None, row: Row) -> str:
        if value is None:
            return f"{'-':>22}"
        ratio = "" if base is None or row is memory else f" ({value / base:5.1%})"
        return f"{value:>12,.0f}{ratio:>10}"

    print(f"{'store':<36}{'claims/s, batch 1':>22}{'claims/s, batch 20':>22}{'no-op jobs/s':>22}")
    for row in rows:
        cells = [
            cell(row.claims_1, memory.claims_1, row),
            cell(row.claims_20, memory.claims_20, row),
            cell(row.jobs, memory.jobs, row),
        ]
        print(f"{row.name:<36}{''.join(cells)}")
    print("(percentages: of the memory store's figure)")


async def main(arguments: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)

        async def memory(_: Path) -> JobStore[int]:
            return MemoryStore[int]()

        async def sqlite_full(path: Path) -> JobStore[int]:
            return SQLiteStore(path, int)

        async def sqlite_normal(path: Path) -> JobStore[int]:
            return SQLiteStore(path, int, synchronous="normal")

        rows = [await measure_one_process("memory", memory, arguments.jobs, directory)]
        rows.append(await measure_one_process("sqlite (synchronous=full)", sqlite_full, arguments.jobs, directory))
        rows.append(await measure_one_process("sqlite (synchronous=normal)", sqlite_normal, arguments.jobs, directory))
        rows.append(await measure_processes(arguments.processes, arguments.jobs, directory, arguments.backend))
        if arguments.apscheduler_python:
            rows.append(measure_apscheduler(arguments.apscheduler_python, arguments.apscheduler_jobs, directory))
    print(f"anysched {arguments.jobs} jobs per measurement, backend {arguments.backend}, {WORKERS} workers")
    print_table(rows, rows[0])


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SQLiteStore benchmark")
    parser.add_argument("--jobs", type=int, default=5_000, help="jobs per measurement (default %(default)s)")
    parser.add_argument("--processes", type=int, default=4, help="processes sharing one file (default %(default)s)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--apscheduler-python", help="a Python with apscheduler>=4.0.0a5, sqlalchemy, aiosqlite")
    parser.add_argument("--apscheduler-jobs", type=int, default=500, help="jobs for APScheduler (default %(default)s)")
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "DB", "START_AT", "BATCH"), help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_arguments()
    if arguments.worker:
        mode, db, start_at, batch = arguments.worker
        anyio.run(worker, mode, db, float(start_at), int(batch), backend=arguments.backend)
    else:
        anyio.run(main, arguments, backend=arguments.backend)
