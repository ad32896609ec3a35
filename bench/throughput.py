"""Throughput of anysched's scheduler against the floor set by a bare anyio memory object stream.

For each backend (asyncio, trio) and worker count, in the same process and run:

- **scheduler**: N no-op jobs through ``open_scheduler`` on a ``MemoryStore``. The jobs are
  added to the store *before* timing starts; the clock runs from the moment the scheduler
  is started until the last handler returns (the outcome write of that last job and the
  shutdown are not timed).
- **plain floor**: the same N items through a bare ``anyio.create_memory_object_stream``
  with the same number of worker tasks: one producer awaiting ``send``, workers awaiting
  ``receive`` and calling the same no-op handler.
- **nowait floor**: the same, but the producer tries ``send_nowait`` and the workers
  ``receive_nowait`` first, awaiting only when that would block.

The streams of both floors have the scheduler's own capacity (``workers + buffer_size``,
buffer_size defaulting to ``workers``). Each figure is the best of ``--repeat`` runs,
which tames the noise of a shared machine better than a mean does.

- **APScheduler 4** (when ``apscheduler`` is importable): the same N no-op jobs through
  APScheduler 4's ``AsyncScheduler`` on its ``MemoryDataStore`` and local event broker, on the
  same backend, with ``max_concurrent_jobs`` = workers. The jobs are added (``add_job``, one task
  configured with ``max_running_jobs=None`` so the worker count is the only limit, ``async``
  executor, clean-up loop off) *before* timing starts; the clock runs from
  ``start_in_background()`` until the last handler returns, as for the scheduler. Install it
  into the same virtualenv with ``pip install --pre "apscheduler>=4.0.0a5"`` (a pre-release; it
  is not a dependency of anysched). Without it the table leaves its columns out and says so.

It also times the memory store's claim (``fetch_pending_jobs`` of 10 jobs) with few and with
many pending jobs, to show that a claim costs O(log n) and does not scan the store.

Usage::

    python bench/throughput.py                      # the default table (about a minute)
    python bench/throughput.py --jobs 50000 --workers 10 --backends trio --repeat 5
    python bench/throughput.py --json               # one JSON object per line, for scripts
    python bench/throughput.py --no-apscheduler     # leave APScheduler 4 out even when installed
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import inspect
import json
import logging
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio

import anysched
from anysched import Job, MemoryStore, open_scheduler

# Imported by name: an optional peer, not a dependency, so typed as Any whether it is installed or not.
AsyncScheduler: Any
MemoryDataStore: Any
try:
    AsyncScheduler = importlib.import_module("apscheduler").AsyncScheduler
    MemoryDataStore = importlib.import_module("apscheduler.datastores.memory").MemoryDataStore
except ImportError:
    AsyncScheduler = MemoryDataStore = None

BACKENDS = ("asyncio", "trio")
_clock = time.perf_counter
"""Wall-clock time; ``--cpu`` swaps in process CPU time, steadier on a shared machine."""


async def _no_op(_item: object) -> None:
    """The handler of every variant: returns at once, never awaits."""


class _Finish:
    """Counts handler returns; notes the time of the last one."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.end = 0.0
        self.done = anyio.Event()

    def one(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.end = _clock()
            self.done.set()


async def _preloaded_store(jobs: int) -> MemoryStore[int]:
    """A memory store holding ``jobs`` pending jobs, all due."""
    store: MemoryStore[int] = MemoryStore()
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    for i in range(jobs):
        await store.add_job(Job.create(i, process_after=past))
    return store


async def _scheduler_run(jobs: int, workers: int, store: MemoryStore[int] | None = None) -> float:
    """Seconds from scheduler start until the last of ``jobs`` pre-loaded no-op handlers returns."""
    if store is None:
        store = await _preloaded_store(jobs)
    finish = _Finish(jobs)

    async def handler(job: Job[int]) -> None:
        await _no_op(job)
        finish.one()

    start = _clock()
    async with open_scheduler(store, handler, workers=workers, fetch_interval=0.05):
        await finish.done.wait()
    completed: object = store.count(anysched.JobStatus.COMPLETED)
    if inspect.isawaitable(completed):  # async in later builds; the bench also runs older trees (PYTHONPATH=...)
        completed = await completed
    if completed != jobs:  # the last outcome is written on shutdown
        raise RuntimeError(f"only {completed} of {jobs} jobs completed")
    return finish.end - start


async def _floor_run(jobs: int, workers: int, *, nowait: bool) -> float:
    """Seconds to move ``jobs`` items through a bare memory object stream to ``workers`` tasks."""
    send, receive = anyio.create_memory_object_stream[int](2 * workers)
    finish = _Finish(jobs)

    async def produce() -> None:
        async with send:
            for i in range(jobs):
                if nowait:
                    try:
                        send.send_nowait(i)
                        continue
                    except anyio.WouldBlock:
                        pass
                await send.send(i)

    async def work_plain(stream: Any) -> None:
        async with stream:
            async for item in stream:
                await _no_op(item)
                finish.one()

    async def work_nowait(stream: Any) -> None:
        async with stream:
            while True:
                try:
                    item = stream.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        item = await stream.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                await _no_op(item)
                finish.one()

    start = _clock()
    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(work_nowait if nowait else work_plain, receive.clone())
        receive.close()
        tg.start_soon(produce)
    if finish.left:
        raise RuntimeError(f"{finish.left} items not handled")
    return finish.end - start


_APS_TASK = "anysched-bench-no-op"
_aps_finish: _Finish | None = None
"""The ``_Finish`` of the APScheduler run in progress (its handler is a module function, looked up by task id)."""


async def _aps_handler(item: int) -> None:
    """APScheduler's handler: the same no-op and count as the scheduler's."""
    await _no_op(item)
    assert _aps_finish is not None
    _aps_finish.one()


async def _apscheduler_run(jobs: int, workers: int) -> float:
    """Seconds from APScheduler 4's start until the last of ``jobs`` pre-added no-op handlers returns."""
    global _aps_finish
    finish = _aps_finish = _Finish(jobs)
    async with AsyncScheduler(MemoryDataStore(), max_concurrent_jobs=workers, cleanup_interval=None) as scheduler:
        # By task id: add_job(callable) would reset the task to the default max_running_jobs=1.
        await scheduler.configure_task(_APS_TASK, func=_aps_handler, job_executor="async", max_running_jobs=None)
        for i in range(jobs):
            await scheduler.add_job(_APS_TASK, args=(i,))
        start = _clock()
        await scheduler.start_in_background()
        await finish.done.wait()
        await scheduler.stop()
    _aps_finish = None
    if finish.left:
        raise RuntimeError(f"APScheduler: {finish.left} of {jobs} jobs not handled")
    return finish.end - start


def _best_rate(backend: str, jobs: int, repeat: int, run: Callable[[], Awaitable[float]]) -> float:
    """Jobs per second of the fastest of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        best = min(best, anyio.run(run, backend=backend))
    return jobs / best


async def _claim_cost(pending: int, fetches: int) -> float:
    """Microseconds per ``fetch_pending_jobs(limit=10)`` with ``pending`` due jobs in the store.

    Each claimed batch is handed back (untimed) so the store size stays put.
    """
    store = await _preloaded_store(pending)
    visibility = timedelta(seconds=30)
    best = float("inf")
    for _ in range(fetches):
        now = datetime.now(timezone.utc)
        start = time.perf_counter()
        leased = await store.fetch_pending_jobs(now, 10, visibility)
        best = min(best, time.perf_counter() - start)
        for job in leased:
            await store.update_job(replace(job, visible_after=None))
    return best * 1e6


def _table(rows: list[dict[str, Any]], *, floors: bool, aps: bool) -> str:
    header = f"{'backend':<8} {'workers':>7} {'scheduler/s':>12}"
    if floors:
        header += f" {'plain/s':>10} {'nowait/s':>10}"
    if aps:
        header += f" {'apscheduler/s':>13}"
    if floors:
        header += f" {'sched/plain':>11} {'sched/nowait':>12}"
    if aps:
        header += f" {'sched/apscheduler':>17}"
    lines = [header, "-" * len(header)]
    for r in rows:
        line = f"{r['backend']:<8} {r['workers']:>7} {r['scheduler']:>12,.0f}"
        if floors:
            line += f" {r['plain']:>10,.0f} {r['nowait']:>10,.0f}"
        if aps:
            line += f" {r['apscheduler']:>13,.0f}"
        if floors:
            line += f" {r['scheduler'] / r['plain']:>11.2f} {r['scheduler'] / r['nowait']:>12.2f}"
        if aps:
            line += f" {r['scheduler'] / r['apscheduler']:>17.2f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs (items) per run (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 10, 100], help="worker counts (default: 1 10 100)"
    )
    parser.add_argument(
        "--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="anyio backends (default: both)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="best of this many runs per figure (default: %(default)s)"
    )
    parser.add_argument("--no-floors", action="store_true", help="leave out the two stream floors")
    parser.add_argument("--no-apscheduler", action="store_true", help="leave out APScheduler 4 even if installed")
    parser.add_argument("--no-claim", action="store_true", help="skip the memory-store claim cost")
    parser.add_argument(
        "--claim-sizes", type=int, nargs=2, default=[1_000, 100_000], help="pending jobs (default: 1000 100000)"
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time with process CPU time instead of wall-clock (for A/B on a busy machine)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per result instead of tables")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.repeat < 1 or min(args.workers) < 1:
        parser.error("--jobs, --repeat and --workers must be >= 1")

    if args.cpu:
        global _clock
        _clock = time.process_time
    logging.getLogger("anysched").setLevel(logging.WARNING)  # the library default; said here to be sure
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every job at INFO
    aps = AsyncScheduler is not None and not args.no_apscheduler
    if AsyncScheduler is None and not args.no_apscheduler:
        print(
            'APScheduler 4 is not installed (pip install --pre "apscheduler>=4.0.0a5"): its columns are left out.',
            file=sys.stderr if args.json else sys.stdout,
        )
    if not args.json:
        print(
            f"anysched {anysched.__file__.rsplit('/', 2)[0]} | Python {platform.python_version()} | "
            f"anyio {_version('anyio')} | trio {_version('trio')} | apscheduler {_version('apscheduler')} | "
            f"{platform.machine()}"
        )
        print(
            f"{args.jobs:,} no-op jobs per run, pre-loaded in a MemoryStore before timing; timed from "
            f"scheduler start to the last handler's return ({'CPU' if args.cpu else 'wall-clock'} time); "
            f"best of {args.repeat}.\n"
            "Floors: the same items through a bare anyio memory object stream (capacity 2 x workers, as the "
            "scheduler's) to the same number of worker tasks; plain = await send/receive, nowait = "
            "send_nowait/receive_nowait first."
            + (
                "\nAPScheduler 4: the same jobs added to its MemoryDataStore before timing, max_concurrent_jobs = "
                "workers, one task with max_running_jobs=None, async executor, clean-up off; timed from "
                "start_in_background() to the last handler's return."
                if aps
                else ""
            )
            + "\n"
        )
    rows: list[dict[str, Any]] = []
    for backend in args.backends:
        for workers in args.workers:
            row: dict[str, Any] = {"backend": backend, "workers": workers, "jobs": args.jobs}
            row["scheduler"] = _best_rate(
                backend, args.jobs, args.repeat, functools.partial(_scheduler_run, args.jobs, workers)
            )
            if not args.no_floors:
                row["plain"] = _best_rate(
                    backend, args.jobs, args.repeat, functools.partial(_floor_run, args.jobs, workers, nowait=False)
                )
                row["nowait"] = _best_rate(
                    backend, args.jobs, args.repeat, functools.partial(_floor_run, args.jobs, workers, nowait=True)
                )
            if aps:
                row["apscheduler"] = _best_rate(
                    backend, args.jobs, args.repeat, functools.partial(_apscheduler_run, args.jobs, workers)
                )
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(_table(rows, floors=not args.no_floors, aps=aps))

    if not args.no_claim:
        small, large = args.claim_sizes
        costs = {n: anyio.run(_claim_cost, n, 300) for n in (small, large)}
        if args.json:
            print(json.dumps({"claim_us": {str(n): c for n, c in costs.items()}}))
        else:
            print(
                f"\nMemoryStore claim, fetch_pending_jobs(limit=10), best of 300 (microseconds per call):\n"
                f"  {small:>9,} pending: {costs[small]:8.1f} us\n"
                f"  {large:>9,} pending: {costs[large]:8.1f} us\n"
                f"  ratio {costs[large] / costs[small]:.2f} for {large // small}x the jobs "
                f"(a scan would be ~{large // small}x; log2 ratio is {_log_ratio(small, large):.2f})"
            )
    return 0


def _log_ratio(small: int, large: int) -> float:
    import math

    return math.log2(large) / math.log2(small)


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    sys.exit(main())
