"""Test doubles: a store wrapper that counts, fails and blocks on demand, and a recording handler."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Generic, TypedDict, TypeVar

import anyio
import anyio.lowlevel

from anysched import (
    Backoff,
    FailJob,
    Job,
    JobStatus,
    JobStore,
    MemoryStore,
    RetryJob,
    RetryPolicy,
    TransientStoreError,
    open_scheduler,
)
from anysched.testing import Payload

T = TypeVar("T")


class RunOptions(TypedDict, total=False):
    """The scheduler's keyword options but its clock and polling, which a test's run helper sets itself."""

    workers: int
    visibility_timeout: float | timedelta
    shutdown_timeout: float | timedelta
    buffer_size: int | None
    store_backoff: Backoff
    retry: RetryPolicy | None
    job_timeout: float | timedelta | None


class SchedulerOptions(RunOptions, total=False):
    """The scheduler's keyword options, for a test that passes one set of them to several schedulers
    (but ``schedules``, whose type is the payload's: a test passes it by name)."""

    fetch_interval: float | timedelta
    clock: Callable[[], datetime]
    wake_ups: bool
    schedule_refresh: float | timedelta


FAST_RETRY = Backoff(initial=0.001, maximum=0.01, jitter=0.001)
"""Store retries that cost little real time on asyncio (trio's mock clock makes any free)."""


class WrappedStore(Generic[T]):
    """A MemoryStore seen through a wrapper that counts calls, and can fail or block them.

    - ``fail_rate``: the chance (seeded) that a call raises TransientStoreError before
      reaching the store, or after it (the write happened but the caller saw an error);
    - ``block``: operation name -> call number (1-based) that blocks until cancelled.
    """

    def __init__(self, inner: MemoryStore[T] | None = None, *, fail_rate: float = 0.0, seed: int = 0) -> None:
        self.inner = inner if inner is not None else MemoryStore[T]()
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.fail_rate = fail_rate
        self.block: dict[str, int] = {}
        self.blocked = anyio.Event()
        self._random = random.Random(seed)

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[T]]:
        await self._enter("fetch_pending_jobs")
        jobs = await self.inner.fetch_pending_jobs(now, limit, visibility_timeout)
        if not jobs:  # a claim whose answer is lost would only wait out its lease: fail empty ones
            self._maybe_fail("fetch_pending_jobs", after=True)
        return jobs

    async def update_job(self, job: Job[T]) -> None:
        await self._enter("update_job")
        await self.inner.update_job(job)
        self._maybe_fail("update_job", after=True)

    async def add_job(self, job: Job[T]) -> None:
        await self._enter("add_job")
        await self.inner.add_job(job)

    async def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        if self.block.get(operation) == self.calls[operation]:
            self.blocked.set()
            await anyio.sleep_forever()
        self._maybe_fail(operation, after=False)

    def _maybe_fail(self, operation: str, *, after: bool) -> None:
        if self.fail_rate and self._random.random() < self.fail_rate:
            self.failures[operation] += 1
            raise TransientStoreError(f"injected {'after' if after else 'before'} {operation}")


class Recorder(Generic[T]):
    """A handler that records each run; ``gate`` (when set) holds every run until opened."""

    def __init__(self, *, fail: Callable[[Job[T]], bool] = lambda job: False) -> None:
        self.runs: Counter[str] = Counter()
        self.order: list[str] = []
        self.started: list[Job[T]] = []
        self.running = 0
        self.gate: anyio.Event | None = None
        self._fail = fail
        self._done_target = 0
        self._done = anyio.Event()
        self.finished = 0
        self._started = anyio.Event()
        """Set (and replaced) each time a run starts: any number of waiters may watch it."""

    async def __call__(self, job: Job[T]) -> None:
        self.runs[job.id] += 1
        self.order.append(job.id)
        self.started.append(job)
        self.running += 1
        self._started.set()
        self._started = anyio.Event()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self._fail(job):
                raise ValueError(f"boom {job.id}")
        finally:
            self.running -= 1
            self.finished += 1
            if self.finished >= self._done_target:
                self._done.set()

    async def wait_running(self, count: int) -> None:
        """Wait until ``count`` runs are inside the handler at once (bound it with ``fail_after``).

        Woken by the handler itself, not by ``wait_all_tasks_blocked``: on asyncio that can find
        a lease keeper awake for ever (see :func:`until`).
        """
        while self.running < count:
            await self._started.wait()

    async def wait_finished(self, count: int) -> None:
        """Wait until ``count`` runs have finished (bound it with ``fail_after``)."""
        while self.finished < count:
            self._done_target = count
            self._done = anyio.Event()
            if self.finished >= count:
                return
            await self._done.wait()


def peek(store: MemoryStore[T], job_id: str) -> Job[T]:
    """The stored job with this id, read without awaiting (``MemoryStore.get_job`` is async), for
    an ``until`` predicate."""
    return next(job for job in store.jobs() if job.id == job_id)


def tally(store: MemoryStore[Any], status: JobStatus) -> int:
    """How many stored jobs have ``status``, counted without awaiting, for an ``until`` predicate."""
    return sum(1 for job in store.jobs() if job.status is status)


def settled(store: MemoryStore[T]) -> bool:
    """No job is leased: each one is finished, or pending and visible to the next fetch."""
    return all(job.status is not JobStatus.PENDING or job.visible_after is None for job in store.jobs())


async def add_jobs(store: MemoryStore[int], count: int, *, due: datetime | None = None) -> list[Job[int]]:
    jobs = [Job.create(n, process_after=due, id=f"job-{n:05d}") for n in range(count)]
    for job in jobs:
        await store.add_job(job)
    return jobs


async def foreign_cancellation() -> BaseException:
    """A cancellation exception caught inside a scope that the caller itself cancelled: what a
    handler raises when it lets out a cancellation that is not the scheduler's."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class() as caught:
            return caught
    raise AssertionError("the cancelled scope did not cancel")


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds, for a state the scheduler reaches in its own time (a store
    write, a lease's end); bound it with ``fail_after``. Every other task runs first each round."""
    while not predicate():
        # Bounded: on asyncio, anyio checks every 0.1 s whether all tasks are blocked, in step with
        # a lease keeper that wakes every 0.1 s (a 0.6 s lease), so it can find one awake forever.
        with anyio.move_on_after(0.05):
            await anyio.wait_all_tasks_blocked()
        if predicate():
            return
        await anyio.sleep(0.01)  # a timer (a lease, a backoff) is what the others wait for


async def checkpoints(count: int) -> None:
    for _ in range(count):
        await anyio.lowlevel.checkpoint()


class Done:
    """Counts handled jobs (and who handled them, a number the test gives) and wakes a waiter once
    ``expected`` distinct ones were handled."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.handled: Counter[str] = Counter()
        self.by: dict[str, set[int]] = {}
        self.all_done = anyio.Event()

    def record(self, job: Job[Payload], who: int = 0) -> None:
        self.handled[job.id] += 1
        self.by.setdefault(job.id, set()).add(who)
        if len(self.handled) >= self.expected:
            self.all_done.set()


class RetryScenario:
    """Four jobs that exercise the retry machinery on any store (``Payload`` jobs, real clock):

    - ``flaky``: fails twice, then succeeds (the policy's 3 attempts);
    - ``hopeless``: raises ``FailJob`` (failed at once, policy or not);
    - ``slow``: hangs past its own 0.2 s timeout on both of its own 2 attempts;
    - ``busy``: postpones itself once with ``RetryJob``, then succeeds.

    ``await scenario.run(store)`` adds them and runs a scheduler until every expected run has
    started (a graceful shutdown then lets the last ones end); ``check(jobs)`` asserts how each
    ended, given the jobs as read back from the store.
    """

    POLICY = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.05, maximum=0.1, jitter=0))
    RUNS = 2 + 1 + 1 + 2 + 2  # flaky 3, hopeless 1, slow 2, busy 2

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self._all_ran = anyio.Event()

    def jobs(self) -> list[Job[Payload]]:
        return [
            Job.create(Payload(1), id="flaky"),
            Job.create(Payload(2), id="hopeless"),
            Job.create(Payload(3), id="slow", max_attempts=2, timeout=0.2),
            Job.create(Payload(4), id="busy"),
        ]

    async def handler(self, job: Job[Payload]) -> None:
        self.runs[job.id] += 1
        if sum(self.runs.values()) == self.RUNS:
            self._all_ran.set()
        if job.id == "flaky" and job.attempts < 3:
            raise ValueError(f"flaky attempt {job.attempts}")
        if job.id == "hopeless":
            raise FailJob("hopeless")
        if job.id == "slow":
            await anyio.sleep_forever()
        if job.id == "busy" and self.runs[job.id] == 1:
            raise RetryJob("busy", delay=0.05)

    async def run(self, store: JobStore[Payload], **options: Any) -> None:
        for job in self.jobs():
            await store.add_job(job)
        with anyio.fail_after(60):
            async with open_scheduler(store, self.handler, retry=self.POLICY, fetch_interval=0.05, **options):
                await self._all_ran.wait()
            # leaving the block let the runs still going finish (the last of "slow" by its
            # timeout) and record their outcomes

    def check(self, jobs: dict[str, Job[Payload]]) -> None:
        assert self.runs == {"flaky": 3, "hopeless": 1, "slow": 2, "busy": 2}
        assert (jobs["flaky"].status, jobs["flaky"].attempts) == (JobStatus.COMPLETED, 3)
        assert (jobs["hopeless"].status, jobs["hopeless"].last_error) == (JobStatus.FAILED, "hopeless")
        assert (jobs["slow"].status, jobs["slow"].attempts) == (JobStatus.FAILED, 2)
        assert "JobTimeoutError" in str(jobs["slow"].last_error)
        assert (jobs["busy"].status, jobs["busy"].attempts) == (JobStatus.COMPLETED, 1)
