"""The proof of exactly once per slot: processes that all declare one schedule share a SQLite file
(and a MongoDB collection: ``tests/mongo/test_schedules_mongo.py``),
some are SIGKILLed and restarted, and each slot's job exists once and ran to completion once
(again only after a process that ran it was killed).

Four processes (alternately on asyncio and trio) declare a schedule with a slot every 100 ms and
run for a few seconds; every 0.7 s one of them is killed and a new one started. Each slot
is enqueued by every live process under the same id; the store keeps one.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from anysched import Job, JobStatus, slot_of
from anysched.stores.sqlite import SQLiteStore

PROCESS = Path(__file__).with_name("schedule_process.py")
sys.path.insert(0, str(PROCESS.parent))
from schedule_process import INTERVAL, SCHEDULE  # noqa: E402 -- the processes' own schedule

PROCESSES = 4
RUN_FOR = 15.0  # seconds, starting included (a loaded machine takes seconds to start a process)
KILL_EVERY = 0.7

pytestmark = pytest.mark.slow  # a subprocess run: once per nox run, on the newest Python


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path
    killed: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list[tuple[str, str, str]])

    def read_log(self) -> None:
        text = self.log.read_text() if self.log.exists() else ""
        for line in text[: text.rfind("\n") + 1].splitlines():  # a line cut by the kill is left out
            event, job_id, lease, _pid = line.split()
            self.events.append((event, job_id, lease))


def start(tmp_path: Path, store: list[str], number: int, until: float) -> Process:
    log = tmp_path / f"process-{number}.log"
    backend = ("asyncio", "trio")[number % 2]
    return Process(subprocess.Popen([sys.executable, str(PROCESS), str(log), backend, str(until), *store]), log)


async def stored_jobs(db: Path) -> list[Job[int]]:
    jobs: list[Job[int]] = []
    async with SQLiteStore(db, int) as store:
        while page := await store.list_jobs(limit=500, after=jobs[-1].id if jobs else None):
            jobs.extend(page)
    return jobs


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.timeout(120)
def test_each_slot_is_enqueued_once_and_run_once_across_killed_and_restarted_processes(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    anyio.run(stored_jobs, db)  # creates the schema before the processes race to
    processes, ready, until = run_processes(tmp_path, ["sqlite", str(db)])
    check(processes, anyio.run(stored_jobs, db), ready, until)


def run_processes(tmp_path: Path, store: list[str]) -> tuple[list[Process], float, float]:
    """Run the processes on ``store`` (the process script's store arguments) until they all end at
    one moment; once they all work, kill one every ``KILL_EVERY`` seconds (one that works, while
    another works too) and start another.

    :returns: the processes, when they all worked, and when they ended
    """
    until = time.time() + RUN_FOR
    processes = [start(tmp_path, store, number, until) for number in range(PROCESSES)]
    chooser = random.Random(13)
    try:
        wait_until(lambda: all(working(process) for process in processes), until - 4.0, "every process works")
        ready = time.time()
        while time.time() < until - 1.0:
            candidates = [process for process in processes if not process.killed and working(process)]
            if len(candidates) >= 2:
                victim = chooser.choice(candidates)
                victim.popen.send_signal(signal.SIGKILL)
                victim.popen.wait()
                victim.killed = True
                processes.append(start(tmp_path, store, len(processes), until))
            time.sleep(KILL_EVERY)
        for process in processes:
            process.popen.wait(timeout=60)
    finally:
        for process in processes:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait()
    return processes, ready, until


def working(process: Process) -> bool:
    """Whether the process has run a slot's job (so it has started its scheduler)."""
    return process.log.exists() and process.log.stat().st_size > 0


def wait_until(condition: Callable[[], bool], deadline: float, what: str) -> None:
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def check(processes: list[Process], jobs: list[Job[int]], ready: float, until: float) -> None:
    survivors = [process for process in processes if not process.killed]
    assert [process.popen.returncode for process in survivors] == [0] * len(survivors)
    slots = [slot_of(job) for job in jobs]
    assert all(slot is not None and slot.schedule_id == SCHEDULE.id for slot in slots)
    times = sorted(slot.slot for slot in slots if slot is not None)
    assert len(set(times)) == len(times) == len(jobs)  # one job per slot
    # No slot missing between the first process's start and the end: some process was always alive.
    window = [slot for slot in times if ready <= slot.timestamp() <= until - 0.5]
    assert len(window) >= 20, "the processes enqueued too little to prove anything"
    expected = round((window[-1] - window[0]) / INTERVAL) + 1
    assert len(window) == expected, f"{expected - len(window)} slot(s) never enqueued"
    check_runs(processes, {job.id: job for job in jobs}, until)
    killed = sum(process.killed for process in processes)
    print(f"{len(jobs)} slots ({len(window)} in the checked window), {len(processes)} processes, {killed} killed")


def check_runs(processes: list[Process], jobs: dict[str, Job[int]], until: float) -> None:
    """Each completed slot's job was run to the end once, unless a process that ran it was killed."""
    done: dict[str, int] = defaultdict(int)
    started_in_killed: set[str] = set()
    for process in processes:
        process.read_log()
        for event, job_id, _lease in process.events:
            if event == "done":
                done[job_id] += 1
            elif process.killed:
                started_in_killed.add(job_id)
    assert set(done) <= set(jobs)
    for job_id, job in jobs.items():
        if job.status is JobStatus.COMPLETED:
            assert done[job_id] >= 1, f"{job_id} completed with no run logged"
            assert done[job_id] == 1 or job_id in started_in_killed, f"{job_id} ran {done[job_id]} times"
        else:
            # enqueued as the processes were stopping, or leased by the last victim
            assert job.status is JobStatus.PENDING
            assert job.process_after.timestamp() >= until - 2.5, f"{job_id} was left pending"
