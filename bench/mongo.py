"""Benchmark MongoStore: claims/s and end-to-end jobs/s per driver flavour, batched vs one-by-one claims.

    python bench/mongo.py                 # starts secantusd-py (PATH or .nox/_secantusdb) on a free port
    ANYSCHED_MONGODB_URL=mongodb://... python bench/mongo.py --jobs 1000

Figures against SecantusDB (a Python reimplementation) say little about a real MongoDB: compare
the rows with each other, not with another server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pymongo

from anysched import Job, open_scheduler
from anysched.stores.mongo import ClaimMode, MongoStore

FLAVOURS = (("pymongo-async", "asyncio"), ("motor", "asyncio"), ("pymongo-sync", "asyncio"), ("pymongo-sync", "trio"))
CLAIMS: tuple[ClaimMode, ...] = ("batch", "one_by_one")
DATABASE = "anysched_bench"


@dataclass(frozen=True)
class Tick:
    n: int


@dataclass
class Row:
    flavour: str
    backend: str
    claim: ClaimMode
    claims_per_s: float
    jobs_per_s: float


@asynccontextmanager
async def open_collection(flavour: str, uri: str) -> AsyncGenerator[Any, None]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    options: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": 5000}
    if flavour == "pymongo-async":
        client: Any = pymongo.AsyncMongoClient(uri, **options)
        yield client[DATABASE][name]
        await client[DATABASE].drop_collection(name)
        await client.close()
    elif flavour == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        client = AsyncIOMotorClient(uri, **options)
        yield client[DATABASE][name]
        await client[DATABASE].drop_collection(name)
        client.close()
    else:
        client = pymongo.MongoClient(uri, **options)
        yield client[DATABASE][name]
        await anyio.to_thread.run_sync(lambda: client[DATABASE].drop_collection(name))
        client.close()


async def fill(store: MongoStore[Tick], count: int, due: datetime) -> None:
    for n in range(count):
        await store.add_job(Job.create(Tick(n), process_after=due))


async def claims_per_second(store: MongoStore[Tick], count: int, limit: int) -> float:
    now = datetime.now(timezone.utc)
    await fill(store, count, now)
    begin, claimed = time.perf_counter(), 0
    while batch := await store.fetch_pending_jobs(now, limit, timedelta(minutes=5)):
        claimed += len(batch)
    assert claimed == count, f"claimed {claimed} of {count}"
    return count / (time.perf_counter() - begin)


async def jobs_per_second(store: MongoStore[Tick], count: int, workers: int) -> float:
    await fill(store, count, datetime.now(timezone.utc))
    handled = 0
    done = anyio.Event()

    async def handler(job: Job[Tick]) -> None:
        nonlocal handled
        handled += 1
        if handled == count:
            done.set()

    begin = time.perf_counter()
    async with open_scheduler(store, handler, workers=workers, fetch_interval=0.05):
        await done.wait()
    return count / (time.perf_counter() - begin)


def measure(uri: str, flavour: str, backend: str, claim: ClaimMode, args: argparse.Namespace) -> Row:
    async def run() -> Row:
        async with open_collection(flavour, uri) as collection:
            claims = await claims_per_second(MongoStore(collection, Tick, claim=claim), args.jobs, args.limit)
        async with open_collection(flavour, uri) as collection:
            jobs = await jobs_per_second(MongoStore(collection, Tick, claim=claim), args.jobs, args.workers)
        return Row(flavour, backend, claim, claims, jobs)

    return anyio.run(run, backend=backend)


def report(rows: list[Row], server: str, args: argparse.Namespace) -> None:
    print(f"\nMongoStore on {server}: {args.jobs} jobs per run, claims of up to {args.limit}, {args.workers} workers")
    print(f"{'driver':<15} {'backend':<8} {'claim':<11} {'claims/s':>9} {'jobs/s':>8}")
    for row in rows:
        print(f"{row.flavour:<15} {row.backend:<8} {row.claim:<11} {row.claims_per_s:>9.0f} {row.jobs_per_s:>8.0f}")
    print("\nbatch / one_by_one")
    for flavour, backend in FLAVOURS:
        batch, single = (
            next(r for r in rows if (r.flavour, r.backend, r.claim) == (flavour, backend, c)) for c in CLAIMS
        )
        print(
            f"{flavour:<15} {backend:<8} claims x{batch.claims_per_s / single.claims_per_s:.2f}"
            f"  end-to-end x{batch.jobs_per_s / single.jobs_per_s:.2f}"
        )


@contextmanager
def server_uri() -> Generator[tuple[str, str], None, None]:
    """The server to measure: ANYSCHED_MONGODB_URL's, or a SecantusDB started here and stopped after."""
    if uri := os.environ.get("ANYSCHED_MONGODB_URL"):
        yield uri, "the server at ANYSCHED_MONGODB_URL"
        return
    installed_by_nox = Path(__file__).resolve().parent.parent / ".nox" / "_secantusdb" / "bin" / "secantusd-py"
    binary = shutil.which("secantusd-py") or (str(installed_by_nox) if installed_by_nox.exists() else None)
    if binary is None:
        sys.exit("set ANYSCHED_MONGODB_URL, or run `python3 -m nox -s tests` once (it installs SecantusDB)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
            _wait_ready(uri, process.poll)
            yield uri, f"SecantusDB ({os.path.basename(binary)}, in-memory, localhost)"
        finally:
            process.terminate()
            process.wait(timeout=15)


def _wait_ready(uri: str, exited: Callable[[], int | None]) -> None:
    with pymongo.MongoClient[dict[str, Any]](uri, serverSelectionTimeoutMS=30_000) as client:
        if exited() is None:
            client.admin.command("ping")
            build = client.admin.command("buildInfo")
            print(f"server answers, version {build.get('version')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="jobs per measurement (default 200)")
    parser.add_argument("--limit", type=int, default=10, help="jobs per claim call (default 10)")
    parser.add_argument("--workers", type=int, default=10, help="scheduler workers (default 10)")
    args = parser.parse_args()
    with server_uri() as (uri, server):
        rows: list[Row] = []
        for flavour, backend in FLAVOURS:
            for claim in CLAIMS:
                rows.append(measure(uri, flavour, backend, claim, args))
                print(f"measured {flavour} on {backend}, {claim} claims", file=sys.stderr)
        report(rows, server, args)


if __name__ == "__main__":
    main()
