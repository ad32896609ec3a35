"""The proof that worker processes sharing one durable store lose no job when some are SIGKILLed
mid-job, for any store: ``tests/sqlite/test_sqlite_processes.py`` and
``tests/postgres/test_postgres_processes.py`` run it on their own.

Several separate Python processes (alternately on asyncio and trio) run a few thousand jobs from one
store. The test kills some of them with SIGKILL while they run jobs and starts replacements. At the
end every job is completed, exactly once by a process that was not killed or last by a killed one,
and every second run of a job follows a run in a killed process whose lease had to expire first.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import anyio

from anysched import Job, JobStatus

JOBS = 3000
VISIBILITY_TIMEOUT = 1.0
KILL_AT = (0.2, 0.45, 0.7)  # fractions of the jobs done when the next victim is killed


class _Store(Protocol):
    """What the proof needs of a store besides its workers: add the jobs, read them back."""

    async def add_jobs(self, jobs: Iterable[Job[int]]) -> None: ...
    async def count(self, status: JobStatus | None = None) -> int: ...
    async def get_job(self, job_id: str) -> Job[int]: ...


@dataclass(frozen=True)
class Target:
    """A store the workers share.

    :param worker: the worker script, run as ``worker *arguments log backend visibility_timeout``
    :param arguments: where the store is, as the worker script takes it
    :param open_store: opens a store object on it, in this process
    """

    worker: Path
    arguments: list[str]
    open_store: Callable[[], AbstractAsyncContextManager[_Store]]


@dataclass(frozen=True)
class Run:
    job_id: str
    attempt: int
    lease: str
    pid: int
    started: float
    done: bool


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path
    killed_at: float | None = None


def start_worker(tmp_path: Path, target: Target, number: int) -> Worker:
    log = tmp_path / f"worker-{number}.log"
    backend = ("asyncio", "trio")[number % 2]
    command = [sys.executable, str(target.worker), *target.arguments, str(log), backend, str(VISIBILITY_TIMEOUT)]
    return Worker(subprocess.Popen(command), log)


def log_lines(log: Path) -> Iterator[list[str]]:
    if not log.exists():
        return
    text = log.read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():  # a line still being written is left out
        yield line.split()


def done_count(workers: list[Worker]) -> int:
    return sum(1 for worker in workers for fields in log_lines(worker.log) if fields[0] == "done")


def wait_until(condition: Callable[[], bool], deadline: float, what: str) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def running(worker: Worker) -> bool:
    """Whether ``worker`` is in the middle of a job (as far as its log says)."""
    return any(not run.done for run in runs_of(worker))


def runs_of(worker: Worker) -> list[Run]:
    """Every run in ``worker``'s log; ``done`` says whether its handler returned."""
    started: dict[str, list[str]] = {}
    finished: set[str] = set()
    for event, job_id, attempt, lease, pid, moment in log_lines(worker.log):
        if event == "start":
            started[lease] = [job_id, attempt, lease, pid, moment]
        else:
            finished.add(lease)
    return [
        Run(job_id, int(attempt), lease, int(pid), float(moment), lease in finished)
        for job_id, attempt, lease, pid, moment in started.values()
    ]


async def add_jobs(target: Target) -> None:
    now = datetime.now(timezone.utc)
    async with target.open_store() as store:
        await store.add_jobs(Job.create(n, process_after=now, id=f"job-{n:05}") for n in range(JOBS))


async def final_state(target: Target) -> tuple[list[int], dict[str, Job[int]]]:
    async with target.open_store() as store:
        counts = [await store.count(status) for status in JobStatus]
        jobs = {f"job-{n:05}": await store.get_job(f"job-{n:05}") for n in range(JOBS)}
    return counts, jobs


def run_killed_workers(tmp_path: Path, target: Target) -> None:
    """Add the jobs, run workers on them, SIGKILL three mid-job and start replacements, then check."""
    anyio.run(add_jobs, target)
    deadline = time.monotonic() + 90
    workers = [start_worker(tmp_path, target, number) for number in range(3)]
    try:
        for victim, fraction in zip((0, 1, 3), KILL_AT, strict=True):
            kill_mid_job(workers, victim, JOBS * fraction, deadline)
            workers.append(start_worker(tmp_path, target, len(workers)))
        for worker in workers:
            worker.process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
    check(workers, *anyio.run(final_state, target))


def kill_mid_job(workers: list[Worker], victim: int, after_done: float, deadline: float) -> None:
    """SIGKILL ``workers[victim]`` once ``after_done`` jobs ran, while it runs a job."""
    wait_until(lambda: done_count(workers) >= after_done, deadline, f"{after_done:.0f} jobs ran")
    wait_until(lambda: running(workers[victim]), deadline, f"worker {victim} runs a job")
    workers[victim].process.send_signal(signal.SIGKILL)
    workers[victim].killed_at = time.time()


def check(workers: list[Worker], counts: list[int], jobs: dict[str, Job[int]]) -> None:
    survivors = [worker for worker in workers if worker.killed_at is None]
    assert [worker.process.returncode for worker in survivors] == [0] * len(survivors)
    assert counts == [0, JOBS, 0]  # pending, completed, failed: every job completed, none lost
    killed_at = {worker.process.pid: worker.killed_at for worker in workers if worker.killed_at is not None}
    runs: dict[str, list[Run]] = defaultdict(list)
    killed_mid_job = 0
    for worker in workers:
        worker_runs = runs_of(worker)
        if worker.killed_at is not None and any(not run.done for run in worker_runs):
            killed_mid_job += 1
        for run in worker_runs:
            runs[run.job_id].append(run)
    # A victim is signalled while its log shows a job running, but a 10-30 ms job can end
    # before the signal lands on a loaded machine; at least one kill must land mid-job.
    assert killed_mid_job >= 1, "every victim had finished its job when the kill landed"
    assert set(runs) == set(jobs)
    for job_id, job_runs in runs.items():
        check_runs(jobs[job_id], sorted(job_runs, key=lambda run: run.attempt), killed_at)
    again = sum(len(job_runs) - 1 for job_runs in runs.values())
    assert again > 0, "no job ran twice: the kills proved nothing"
    print(f"{JOBS} jobs, {len(workers)} processes, {len(killed_at)} killed: {again} second run(s), all explained")


def check_runs(job: Job[int], runs: list[Run], killed_at: dict[int, float]) -> None:
    """Each run but the last was in a killed process; the next one began after the kill."""
    for earlier, later in itertools.pairwise(runs):
        assert earlier.pid in killed_at, f"{job.id} ran again after {earlier} in a live process"
        kill = killed_at[earlier.pid]
        assert later.started >= kill, f"{job.id}: {later} started before {earlier} was killed"
        assert later.attempt > earlier.attempt
    assert runs[-1].done
    assert job.lease == runs[-1].lease  # the last run is the one that completed the job
    assert job.attempts >= runs[-1].attempt
    assert len({run.lease for run in runs}) == len(runs)
