"""Benchmark cross-process add-to-start latency, with the store's wake-ups on and off.

Process A (this one) adds jobs one at a time, a little apart, so the scheduler is idle when
each arrives; process B (a child running this file with ``--role worker``) runs a scheduler on
the same database that records when each handler starts. The latency of a job is from the moment
A's ``add_job`` returned to the moment B's handler started (both read ``time.time()`` on one machine).

    python bench/wakeups.py                  # SQLite, MongoDB (SecantusDB unless ANYSCHED_MONGODB_URL), PostgreSQL
    python bench/wakeups.py --stores sqlite --jobs 200 --backend trio
    ANYSCHED_MONGODB_URL=mongodb://... python bench/wakeups.py --stores mongo
    ANYSCHED_POSTGRES_URL=postgresql://... python bench/wakeups.py --stores postgres   # default 127.0.0.1:5432/test

A store is one entry of ``STORES``: how to prepare a database both processes reach (a target
string) and how to open a store on it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from anysched import Job, JobStore, open_scheduler


@dataclass(frozen=True)
class Tick:
    n: int


@dataclass(frozen=True)
class StoreKind:
    """How the bench reaches one kind of store.

    :param prepare: sets up what both processes reach (a server, in ``stack``, undone at the end)
        and returns a maker of fresh targets (a file path, a URI and collection…), one per
        measurement; ``None`` when it cannot run here
    :param open: a store on ``target``, on the running backend
    """

    prepare: Callable[[ExitStack, str], Callable[[], str] | None]
    open: Callable[[str], AbstractAsyncContextManager[JobStore[Tick]]]


# -- SQLite -----------------------------------------------------------------------------------------


def _prepare_sqlite(stack: ExitStack, workdir: str) -> Callable[[], str] | None:
    return lambda: os.path.join(workdir, f"wakeups-{uuid.uuid4().hex[:8]}.db")


@asynccontextmanager
async def _open_sqlite(target: str) -> AsyncGenerator[JobStore[Tick]]:
    from anysched.stores.sqlite import SQLiteStore

    async with SQLiteStore(target, Tick, synchronous="normal") as store:
        yield store


# -- MongoDB ----------------------------------------------------------------------------------------


def _prepare_mongo(stack: ExitStack, workdir: str) -> Callable[[], str] | None:
    # bench/mongo.py, beside this file, as bench.mongo from the repository's root: a plain `import mongo`
    # would be tests/mongo to the type checkers, which have that folder on their search path
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    try:
        from bench import mongo  # it starts a SecantusDB or uses ANYSCHED_MONGODB_URL
    except ImportError as error:
        print(f"mongo: skipped ({error})", file=sys.stderr)
        return None
    try:
        uri, server = stack.enter_context(mongo.server_uri())
    except SystemExit as no_server:  # neither ANYSCHED_MONGODB_URL nor a SecantusDB to start: the rest still runs
        print(f"mongo: skipped ({no_server})", file=sys.stderr)
        return None
    print(f"mongo: {server}", file=sys.stderr)
    return lambda: json.dumps({"uri": uri, "collection": f"wakeups_{uuid.uuid4().hex[:8]}"})


@asynccontextmanager
async def _open_mongo(target: str) -> AsyncGenerator[JobStore[Tick]]:
    import pymongo

    from anysched.stores.mongo import MongoStore

    where = json.loads(target)
    options: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": 10_000}
    if anyio.get_cancelled_exc_class().__module__.startswith("asyncio"):
        client: Any = pymongo.AsyncMongoClient(where["uri"], **options)
        try:
            yield MongoStore(client["anysched_bench"][where["collection"]], Tick)
        finally:
            await client.close()
    else:  # trio: sync PyMongo in threads
        client = pymongo.MongoClient(where["uri"], **options)
        try:
            yield MongoStore(client["anysched_bench"][where["collection"]], Tick)
        finally:
            await anyio.to_thread.run_sync(client.close)


# -- PostgreSQL -------------------------------------------------------------------------------------

_POSTGRES_SCHEMA = "anysched_bench_wakeups"
"""The bench's own schema (a table per measurement in it), dropped at the end."""


def _prepare_postgres(stack: ExitStack, workdir: str) -> Callable[[], str] | None:
    try:
        import psycopg
        from psycopg import sql
    except ImportError as error:
        print(f"postgres: skipped ({error}; pip install anysched[postgres])", file=sys.stderr)
        return None
    url = os.environ.get("ANYSCHED_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
    try:
        with psycopg.connect(url, connect_timeout=5):
            pass
    except psycopg.Error as error:  # its type only: the message may name the host and user
        print(
            f"postgres: skipped (no server answered: {type(error).__name__}; set ANYSCHED_POSTGRES_URL)",
            file=sys.stderr,
        )
        return None

    def drop_schema() -> None:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(_POSTGRES_SCHEMA)))

    drop_schema()  # what an interrupted run left
    stack.callback(drop_schema)
    print("postgres: the server at ANYSCHED_POSTGRES_URL (default 127.0.0.1:5432/test)", file=sys.stderr)
    return lambda: json.dumps({"url": url, "table": f"wakeups_{uuid.uuid4().hex[:8]}"})


@asynccontextmanager
async def _open_postgres(target: str) -> AsyncGenerator[JobStore[Tick], None]:
    from anysched.stores.postgres import PostgresStore

    where = json.loads(target)
    async with PostgresStore(where["url"], Tick, schema=_POSTGRES_SCHEMA, table=where["table"]) as store:
        yield store


STORES: dict[str, StoreKind] = {
    "sqlite": StoreKind(_prepare_sqlite, _open_sqlite),
    "mongo": StoreKind(_prepare_mongo, _open_mongo),
    "postgres": StoreKind(_prepare_postgres, _open_postgres),
}


# -- process B: the scheduler -------------------------------------------------------------------------


async def worker(kind: str, target: str, jobs: int, wake_ups: bool) -> None:
    """Run a scheduler until ``jobs`` handlers started; print each start time, as JSON, at the end."""
    started: dict[str, float] = {}
    done = anyio.Event()

    async def handler(job: Job[Tick]) -> None:
        started[job.id] = time.time()
        if len(started) >= jobs:
            done.set()

    async with STORES[kind].open(target) as store, open_scheduler(store, handler, wake_ups=wake_ups) as scheduler:
        with anyio.fail_after(60):
            while wake_ups and not scheduler.statistics().listening:  # noqa: ASYNC110 -- no event to wait on
                await anyio.sleep(0.01)
        print("ready", flush=True)
        with anyio.fail_after(max(60, jobs)):
            await done.wait()
    print(json.dumps(started), flush=True)


# -- process A: adds the jobs, measures ---------------------------------------------------------------


@dataclass
class Row:
    store: str
    backend: str
    wake_ups: bool
    p50_ms: float
    p99_ms: float
    max_ms: float


async def add_spaced(kind: str, target: str, jobs: int, gap: float) -> dict[str, float]:
    added: dict[str, float] = {}
    async with STORES[kind].open(target) as store:
        for n in range(jobs):
            job = Job.create(Tick(n), id=f"tick-{n:05d}")
            await store.add_job(job)
            added[job.id] = time.time()
            await anyio.sleep(gap * random.uniform(0.5, 1.5))
    return added


def measure(kind: str, target: str, backend: str, wake_ups: bool, args: argparse.Namespace) -> Row:
    command = [sys.executable, __file__, "--role", "worker", "--stores", kind, "--target", target]
    command += ["--jobs", str(args.jobs), "--backend", backend, *([] if wake_ups else ["--no-wake-ups"])]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            sys.exit(f"the worker process for {kind} did not start")
        added = anyio.run(add_spaced, kind, target, args.jobs, args.gap, backend=backend)
        started: dict[str, float] = json.loads(child.stdout.readline())
    latencies = sorted((started[job_id] - added[job_id]) * 1000 for job_id in added)
    p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
    return Row(kind, backend, wake_ups, statistics.median(latencies), p99, latencies[-1])


def report(rows: list[Row], args: argparse.Namespace) -> None:
    print(f"\n{args.jobs} jobs per row, added ~{args.gap * 1000:g} ms apart; default fetch_interval (1 s)")
    print(f"{'store':<8} {'backend':<8} {'wake-ups':<9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for row in rows:
        wake = "on" if row.wake_ups else "off"
        print(f"{row.store:<8} {row.backend:<8} {wake:<9} {row.p50_ms:8.1f} {row.p99_ms:8.1f} {row.max_ms:8.1f}")


@contextmanager
def workdir() -> Generator[str]:
    with tempfile.TemporaryDirectory(prefix="anysched-wakeups-") as path:
        yield path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", nargs="+", default=list(STORES), choices=list(STORES))
    parser.add_argument("--backend", nargs="+", default=["asyncio"], choices=["asyncio", "trio"])
    parser.add_argument("--jobs", type=int, default=100, help="jobs per measurement (default 100)")
    parser.add_argument("--gap", type=float, default=0.05, help="mean seconds between two adds (default 0.05)")
    parser.add_argument("--role", choices=["main", "worker"], default="main", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--no-wake-ups", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "worker":
        anyio.run(worker, args.stores[0], args.target, args.jobs, not args.no_wake_ups, backend=args.backend[0])
        return
    rows: list[Row] = []
    with ExitStack() as stack:
        path = stack.enter_context(workdir())
        for kind in args.stores:
            fresh = STORES[kind].prepare(stack, path)
            if fresh is None:
                continue
            for backend in args.backend:
                for wake_ups in (True, False):
                    rows.append(measure(kind, fresh(), backend, wake_ups, args))
                    print(f"measured {kind} on {backend}, wake-ups {'on' if wake_ups else 'off'}", file=sys.stderr)
    report(rows, args)


if __name__ == "__main__":
    main()
