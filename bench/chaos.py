"""The chaos run: many jobs through several schedulers on a flaky store, with cancellations and process deaths.

One run, on one backend:

- **jobs** (10,000 by default) on a shared store (a ``MemoryStore``, or a ``MongoStore``);
- a **flaky store**: each call fails with ``TransientStoreError`` with probability ``fail_rate``
  (half of those before the call reaches the store, half after it succeeded: a lost reply,
  fetches of jobs included, whose jobs then wait out their lease); every other call is delayed by a
  random sleep of up to ``store_delay``;
- **handlers** that, by a seeded draw per (job, run), mostly succeed at once, or raise (retried by the
  ``RetryPolicy``), postpone themselves (``RetryJob``), fail for good (``FailJob``), run past the job
  timeout (``JobTimeoutError``) or run long (longer than the visibility timeout, shorter than the job
  timeout: their leases must be renewed and they must not run twice); a few **poison jobs** kill
  their process every time they run;
- **instances** schedulers, each through its own "process" (a proxy in front of the store); a seeded
  controller, every so many handler runs, picks an instance and cancels it from outside (its clean-up
  hands jobs back through the flaky store), shuts it down gracefully, or **kills** it: its process
  proxy drops every later call (fetches return nothing, writes vanish), its task group is torn down,
  its leases are left to expire. A fresh incarnation with a fresh proxy then starts in its place.

When every job has finished (or ``chaos_timeout`` passed) everything is cancelled, the run waits out
the visibility timeout and drains the store with one clean scheduler on a non-flaky proxy. The store
wrapper records every claim (lease token, claim time, lease end) and every write the store accepted,
the handlers record every run (job, lease, attempt, incarnation, start, end, how it ended); the checker
then reports jobs lost (must be 0), completed, failed for good by reason, handler runs per job, and
every run beyond a job's first classified by its cause: a retry, an interruption (handed back), a real
lease expiry, or **unexplained** (must be 0). It also checks that no two runs of a job overlapped while
the earlier one's lease held, that no claim happened while another lease held or after the job
finished, and that each run's recorded ending matches what its handler did.

Usage::

    python bench/chaos.py                               # 10,000 jobs, asyncio and trio (real clocks)
    python bench/chaos.py --backend trio --mock-clock   # trio on a mock clock: every sleep is free
    python bench/chaos.py --jobs 50000 --instances 5 --seed 7 --fail-rate 0.3
    python bench/chaos.py --store mongo --uri mongodb://localhost:27017/?directConnection=true --jobs 300
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.lowlevel

from anysched import (
    Backoff,
    FailJob,
    Job,
    JobNotFoundError,
    JobStatus,
    JobStore,
    MemoryStore,
    RetryJob,
    RetryPolicy,
    Scheduler,
    TransientStoreError,
)

R = TypeVar("R")

EPOCH = datetime(2030, 1, 1, tzinfo=timezone.utc)

Action = Literal["ok", "error", "retry", "fail", "timeout", "long", "kill"]
RunEnd = Literal["running", "completed", "error", "retry", "fail", "timeout", "interrupted", "died", "lost"]
WriteKind = Literal["renew", "release", "retry", "postpone", "completed", "failed"]
Ending = Literal["release", "retry", "postpone", "completed", "failed", "expired"]
Cause = Literal["retry", "interrupted", "lease expiry", "unexplained"]

FAIL_REASON = "chaos: the handler gave up (FailJob)"
ERROR_MESSAGE = "chaos: the handler raised"
POISON_OUTSIDE_CHAOS = "chaos: a poison job run outside the chaos phase"
ACTIONS: tuple[str, ...] = ("cancel", "shutdown", "kill")


@dataclass(frozen=True)
class Work:
    """The payload of every chaos job."""

    n: int


def chaos_clock() -> datetime:
    """The event loop's clock as a UTC datetime, in whole milliseconds (as BSON dates keep them).

    Every scheduler and the store wrapper use it, so lease arithmetic follows trio's mock
    clock in tests, and a Mongo store compares exactly the instants the checker compares.
    """
    return EPOCH + timedelta(milliseconds=math.floor(anyio.current_time() * 1000))


@dataclass(frozen=True)
class ChaosConfig:
    """Every knob of a chaos run. Durations are seconds of the event loop's clock."""

    jobs: int = 10_000
    instances: int = 3
    workers: int = 16
    buffer_size: int | None = None
    seed: int = 1
    fail_rate: float = 0.2
    """Chance that a store call raises TransientStoreError (half before, half after the store)."""
    store_delay: float = 0.002
    """Other store calls sleep up to this long first."""
    visibility_timeout: float = 0.25
    job_timeout: float = 0.6
    fetch_interval: float = 0.05
    shutdown_timeout: float = 2.0
    store_backoff: Backoff = Backoff(initial=0.01, maximum=0.05, jitter=0.005)  # noqa: RUF009 -- immutable
    max_attempts: int = 4
    retry_backoff: Backoff = Backoff(initial=0.005, maximum=0.05, jitter=0.005)  # noqa: RUF009 -- immutable
    quick_run: float = 0.002
    """A successful run sleeps up to this long."""
    p_error: float = 0.06
    p_retry: float = 0.03
    p_fail: float = 0.005
    p_timeout: float = 0.006
    p_long: float = 0.006
    retry_delay: float = 0.03
    """A handler's RetryJob asks for up to this delay."""
    poison_jobs: int = 3
    """Jobs that kill their process every time they run (failed once out of attempts)."""
    chaos_events: int = 30
    """About how many cancellations, shutdowns and deaths the controller causes in all."""
    action_weights: tuple[float, float, float] = (0.4, 0.2, 0.4)
    """Weights of (cancel from outside, graceful shutdown, process death)."""
    restart_delay: float = 0.02
    stop_at: float = 0.99
    """The chaos phase ends once this fraction of the jobs has finished; the drain does the rest."""
    chaos_timeout: float = 120.0
    """Bound on the chaos phase; the drain finishes whatever is left."""
    drain_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.instances < 1 or self.workers < 1:
            raise ValueError("jobs, instances and workers must be >= 1")
        if not 0.0 < self.stop_at <= 1.0:
            raise ValueError("stop_at must be in (0, 1]")
        if not 0.0 <= self.fail_rate < 1.0:
            raise ValueError("fail_rate must be in [0, 1)")
        if not self.visibility_timeout * 1.2 < self.job_timeout * 0.8:
            raise ValueError("a long run (between 1.2 x visibility_timeout and 0.8 x job_timeout) must fit")
        if self.poison_jobs > self.jobs:
            raise ValueError("poison_jobs must be <= jobs")


def mongo_config(**changes: Any) -> ChaosConfig:
    """Timings for a Mongo server (slower than memory, real I/O), at a size a test server takes."""
    settings: dict[str, Any] = {
        "jobs": 250,
        "workers": 8,
        "store_delay": 0.005,
        "visibility_timeout": 1.0,
        "job_timeout": 2.5,
        "fetch_interval": 0.2,
        "shutdown_timeout": 5.0,
        "store_backoff": Backoff(initial=0.05, maximum=0.5, jitter=0.05),
        "retry_backoff": Backoff(initial=0.05, maximum=0.2, jitter=0.02),
        "quick_run": 0.01,
        "retry_delay": 0.1,
        "p_fail": 0.02,
        "p_timeout": 0.02,
        "p_long": 0.02,
        "poison_jobs": 1,
        "chaos_events": 10,
        "restart_delay": 0.1,
        "stop_at": 0.95,
        "chaos_timeout": 60.0,
    }
    settings.update(changes)
    return ChaosConfig(**settings)


# -- what happened: the store's record and the handlers' ------------------------------------------------


@dataclass(eq=False)
class Write:
    """An update the store accepted, for one lease."""

    kind: WriteKind
    at: datetime
    visible_after: datetime | None
    attempts: int
    status: JobStatus
    start_seq: int
    end_seq: int


@dataclass(eq=False)
class Claim:
    """One lease the store handed out, and every write it accepted under that lease."""

    job_id: str
    lease: str
    now: datetime
    visible_after: datetime
    attempts: int
    process_after: datetime
    start_seq: int
    end_seq: int
    process: str
    reply_lost: bool = False
    writes: list[Write] = field(default_factory=list[Write])
    renew_attempts: list[datetime] = field(default_factory=list[datetime])
    """When the holder tried to renew the lease (every try, failed ones included)."""
    outcome_attempts: list[datetime] = field(default_factory=list[datetime])
    """When the holder tried to write anything else under the lease (failed tries included)."""

    def ending(self, before_seq: int | None = None) -> Ending:
        """How the lease ended: its last outcome or release, or ``expired`` (only renewals, or nothing)."""
        for write in reversed(self.writes):
            if before_seq is not None and write.start_seq > before_seq:
                continue
            if write.kind != "renew":
                return write.kind
        return "expired"

    def renewing_at(self, moment: datetime) -> bool:
        """Whether a renewal may have been under way at ``moment``: one began before it, and the
        lease it was renewing (its deadline) had not ended by then."""
        for attempt in self.renew_attempts:
            if attempt <= moment:
                ends = [self.visible_after]
                ends += [w.visible_after for w in self.writes if w.visible_after is not None and w.at < attempt]
                if moment <= max(ends):
                    return True
        return False

    def lease_end(self, before_seq: int | None = None) -> datetime:
        """The last ``visible_after`` the store accepted for this lease."""
        ends = [self.visible_after]
        ends += [
            w.visible_after
            for w in self.writes
            if w.visible_after is not None and (before_seq is None or w.start_seq <= before_seq)
        ]
        return max(ends)


@dataclass(eq=False)
class Run:
    """One handler call."""

    job_id: str
    lease: str | None
    attempts: int
    incarnation: str
    action: Action
    start: datetime
    end: datetime | None = None
    kind: RunEnd = "running"


@dataclass(eq=False)
class Incarnation:
    """One life of one scheduler instance: its process proxy, its cancel scope, its fate."""

    slot: int
    number: int
    process: Process
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    scheduler: Scheduler[Work] | None = None
    cancelling: bool = False
    graceful: bool = False
    dead: bool = False
    drain: bool = False

    @property
    def name(self) -> str:
        return "drain" if self.drain else f"i{self.slot}.{self.number}"


class ChaosStore:
    """The shared store behind a recorder that also injects failures and delays (per process).

    Calls arrive through a :class:`Process`; a dead process's calls are dropped after the
    random delay (nothing it sends reaches the store). The inner call itself is shielded:
    once sent, its effect is waited for and recorded, so the record is exactly what the
    store accepted.
    """

    def __init__(self, inner: JobStore[Work], config: ChaosConfig, on_finished: Callable[[str], None]) -> None:
        self.inner = inner
        self.config = config
        self.claims: dict[str, list[Claim]] = {}
        self.by_lease: dict[tuple[str, str], Claim] = {}
        """Claims by (job id, lease token): a store may claim a batch under one token (MongoStore does)."""
        self.events: Counter[str] = Counter()
        self._seq = 0
        self._random = random.Random(f"{config.seed}/store")
        self._on_finished = on_finished

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _enter(self, process: Process, operation: str) -> bool:
        """Fail before the store, or delay; ``False`` if the caller's process is dead by then."""
        self.events[f"calls {operation}"] += 1
        if process.flaky:
            draw = self._random.random()
            if draw < self.config.fail_rate / 2:
                self.events["store failures before"] += 1
                raise TransientStoreError(f"chaos: {operation} failed before reaching the store")
            if draw < self.config.fail_rate:
                process.fail_next_reply = True
            else:
                await anyio.sleep(self._random.uniform(0.0, self.config.store_delay))
        else:
            await anyio.lowlevel.checkpoint()
        return not process.dead

    def _exit(self, process: Process, operation: str) -> None:
        """Lose the reply of a call that reached the store, if the draw said so."""
        if process.fail_next_reply:
            process.fail_next_reply = False
            self.events["store failures after (lost reply)"] += 1
            raise TransientStoreError(f"chaos: {operation} reached the store but its reply was lost")

    async def fetch_pending_jobs(
        self, process: Process, now: datetime, limit: int, visibility_timeout: timedelta
    ) -> list[Job[Work]]:
        if not await self._enter(process, "fetch_pending_jobs"):
            process.fail_next_reply = False
            return []
        start = self._next_seq()
        jobs = await _shielded(lambda: self.inner.fetch_pending_jobs(now, limit, visibility_timeout))
        end = self._next_seq()
        claims: list[Claim] = []
        for job in jobs:
            assert job.lease is not None
            assert job.visible_after is not None
            claim = Claim(
                job.id, job.lease, now, job.visible_after, job.attempts, job.process_after, start, end, process.name
            )
            self.claims.setdefault(job.id, []).append(claim)
            self.by_lease[job.id, job.lease] = claim
            claims.append(claim)
        if process.dead:  # the reply reached no one
            process.fail_next_reply = False
            return []
        if jobs and process.fail_next_reply:
            self.events["lost fetch replies"] += 1
            self.events["jobs in lost fetch replies"] += len(jobs)
            for claim in claims:
                claim.reply_lost = True
        self._exit(process, "fetch_pending_jobs")
        return jobs

    async def update_job(self, process: Process, job: Job[Work]) -> None:
        held = self.by_lease.get((job.id, job.lease or ""))
        if held is not None:
            renewal = job.status is JobStatus.PENDING and job.visible_after is not None
            (held.renew_attempts if renewal else held.outcome_attempts).append(chaos_clock())
        if not await self._enter(process, "update_job"):
            process.fail_next_reply = False
            return
        start = self._next_seq()
        await _shielded(lambda: self.inner.update_job(job))  # LeaseLostError, JobNotFoundError: nothing written
        end = self._next_seq()
        assert job.lease is not None
        claim = self.by_lease.get((job.id, job.lease))
        if claim is None:
            self.events["writes under an unknown lease"] += 1
        else:
            kind = write_kind(claim, job)
            claim.writes.append(Write(kind, chaos_clock(), job.visible_after, job.attempts, job.status, start, end))
            self.events[f"writes {kind}"] += 1
            if kind in ("completed", "failed"):
                self._on_finished(job.id)
        if process.dead:
            process.fail_next_reply = False
            return
        self._exit(process, "update_job")

    async def add_job(self, process: Process, job: Job[Work]) -> None:
        if not await self._enter(process, "add_job"):
            return
        await _shielded(lambda: self.inner.add_job(job))
        self._exit(process, "add_job")


async def _shielded(call: Callable[[], Awaitable[R]]) -> R:
    """Await ``call()`` whatever happens meanwhile: a store call once sent is waited for."""
    with anyio.CancelScope(shield=True):
        return await call()
    raise AssertionError("unreachable: a shielded scope is not cancelled")


def write_kind(claim: Claim, job: Job[Work]) -> WriteKind:
    """What an accepted update did, judged against the claim it was made under."""
    if job.status is JobStatus.COMPLETED:
        return "completed"
    if job.status is JobStatus.FAILED:
        return "failed"
    if job.visible_after is not None:
        return "renew"
    if job.process_after == claim.process_after:
        return "release"
    return "retry" if job.attempts == claim.attempts else "postpone"


@runtime_checkable
class GetsJobs(Protocol):
    """A store that can read a job back by id (``MongoStore``, ``SQLiteStore``)."""

    async def get_job(self, job_id: str) -> Job[Work]: ...


class Process:
    """One scheduler incarnation's way to the store. Dead: nothing it sends arrives any more."""

    def __init__(self, store: ChaosStore, name: str, *, flaky: bool = True) -> None:
        self.store = store
        self.name = name
        self.flaky = flaky
        self.dead = False
        self.fail_next_reply = False

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[Work]]:
        return await self.store.fetch_pending_jobs(self, now, limit, visibility_timeout)

    async def update_job(self, job: Job[Work]) -> None:
        await self.store.update_job(self, job)

    async def add_job(self, job: Job[Work]) -> None:
        await self.store.add_job(self, job)


# -- the result ------------------------------------------------------------------------------------------


@dataclass
class ChaosResult:
    """The figures of one chaos run."""

    backend: str
    store: str
    jobs: int
    lost: int
    completed: int
    failed: int
    failed_by_reason: Counter[str]
    runs: int
    runs_per_job: Counter[int]
    extra_runs: Counter[Cause]
    overlaps: int
    anomalies: list[str]
    run_ends: Counter[str]
    actions: Counter[str]
    events: Counter[str]
    long_runs_renewed: int
    dropped_outcomes: int
    """Runs with a result that the store never recorded because the lease ran out first: it ended
    after the lease did, or during a renewal that went unanswered, or the write of its outcome
    kept failing until the lease was gone (the job runs again: a lease-expiry re-run)."""
    finished_in_drain: int
    elapsed: float
    """Event-loop seconds (virtual on trio's mock clock)."""
    wall: float

    @property
    def unexplained(self) -> int:
        return self.extra_runs["unexplained"]

    @property
    def mean_runs(self) -> float:
        return self.runs / self.jobs

    @property
    def ok(self) -> bool:
        return not self.violations()

    def violations(self) -> list[str]:
        """What must never happen and did: a lost job, an unexplained or overlapping run, an anomaly."""
        problems = [f"{count} {what}" for what, count in self._must_be_zero().items() if count]
        if self.completed + self.failed + self.lost != self.jobs:
            problems.append(f"{self.completed} completed + {self.failed} failed + {self.lost} lost != {self.jobs}")
        return problems + self.anomalies

    def _must_be_zero(self) -> dict[str, int]:
        return {"lost": self.lost, "unexplained": self.unexplained, "overlapping": self.overlaps}

    def common_events(self) -> dict[str, int]:
        """How often each kind of chaos every run should see happened (a test wants none at 0)."""
        return {
            "store failure before the store": self.events["store failures before"],
            "store failure after it (a lost reply)": self.events["store failures after (lost reply)"],
            "handler error": self.run_ends["error"],
            "instance cancelled from outside": self.actions["cancel"],
            "graceful shutdown": self.actions["shutdown"],
            "process death": self.actions["kill"] + self.actions["death by poison job"],
            "re-run after a retry": self.extra_runs["retry"],
            "re-run after a lease expiry": self.extra_runs["lease expiry"],
        }

    def table(self) -> str:
        histogram = "  ".join(f"{runs}: {count:,}" for runs, count in sorted(self.runs_per_job.items()))
        failed = ", ".join(f"{reason} {count:,}" for reason, count in sorted(self.failed_by_reason.items()))
        extra = ", ".join(f"{cause} {self.extra_runs[cause]:,}" for cause in CAUSES)
        ends = ", ".join(f"{end} {count:,}" for end, count in sorted(self.run_ends.items()))
        actions = ", ".join(f"{action} {count:,}" for action, count in sorted(self.actions.items()))
        store = ", ".join(
            f"{name} {self.events[name]:,}"
            for name in (
                "store failures before",
                "store failures after (lost reply)",
                "lost fetch replies",
                "jobs in lost fetch replies",
            )
        )
        rows = [
            ("backend / store", f"{self.backend} / {self.store}"),
            ("jobs", f"{self.jobs:,}"),
            ("jobs lost (must be 0)", f"{self.lost:,}"),
            ("completed", f"{self.completed:,}"),
            ("failed for good", f"{self.failed:,} ({failed or 'none'})"),
            ("handler runs", f"{self.runs:,} (mean {self.mean_runs:.3f} per job)"),
            ("runs per job", histogram),
            ("extra runs by cause", extra),
            ("unexplained runs (must be 0)", f"{self.unexplained:,}"),
            ("overlapping runs (must be 0)", f"{self.overlaps:,}"),
            ("other anomalies (must be 0)", f"{len(self.anomalies):,}"),
            ("runs ended", ends),
            ("long runs renewed, run once", f"{self.long_runs_renewed:,}"),
            ("outcomes not recorded, lease ran out first", f"{self.dropped_outcomes:,}"),
            ("instance events", actions),
            ("store chaos", store),
            ("finished in the drain", f"{self.finished_in_drain:,}"),
            ("time", f"{self.elapsed:.2f}s event loop, {self.wall:.2f}s wall"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"  ANOMALY: {anomaly}" for anomaly in self.anomalies[:20]]
        return "\n".join(lines)


CAUSES: tuple[Cause, ...] = ("retry", "interrupted", "lease expiry", "unexplained")


# -- the run ---------------------------------------------------------------------------------------------


class ChaosRun:
    """One chaos run on one store; ``await ChaosRun(...).run()`` returns its :class:`ChaosResult`."""

    def __init__(
        self,
        inner: JobStore[Work],
        config: ChaosConfig,
        *,
        backend: str = "",
        store_name: str = "memory",
    ) -> None:
        self.config = config
        self.inner = inner
        self.backend = backend
        self.store_name = store_name
        self.store = ChaosStore(inner, config, self._job_finished)
        self.ids = [f"chaos-{n:06d}" for n in range(config.jobs)]
        picker = random.Random(f"{config.seed}/poison")
        self.poison = set(picker.sample(self.ids, config.poison_jobs))
        self.runs: list[Run] = []
        self.runs_of: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.incarnations: list[Incarnation] = []
        self.current: list[Incarnation | None] = [None] * config.instances
        self.finished_ids: set[str] = set()
        self.finished = anyio.Event()
        self.chaos_done = anyio.Event()
        self.stopping = False
        self._progress = anyio.Event()
        self._wake_at = 0
        self._control_random = random.Random(f"{config.seed}/control")

    # -- bookkeeping hooks ---------------------------------------------------------------------

    def _job_finished(self, job_id: str) -> None:
        self.finished_ids.add(job_id)
        if len(self.finished_ids) >= self.config.stop_at * len(self.ids):
            self.chaos_done.set()
            self._progress.set()
        if len(self.finished_ids) == len(self.ids):
            self.finished.set()

    # -- the handler -----------------------------------------------------------------------------

    def _decide(self, job: Job[Work], run_number: int) -> Action:
        if job.id in self.poison:
            return "kill"
        c = self.config
        draw = random.Random(f"{c.seed}/{job.id}/{run_number}").random()
        odds: tuple[tuple[Action, float], ...] = (
            ("error", c.p_error),
            ("retry", c.p_retry),
            ("fail", c.p_fail),
            ("timeout", c.p_timeout),
            ("long", c.p_long),
        )
        for action, p in odds:
            if draw < p:
                return action
            draw -= p
        return "ok"

    def handler_for(self, incarnation: Incarnation) -> Callable[[Job[Work]], Awaitable[None]]:
        async def handle(job: Job[Work]) -> None:
            await self._handle(incarnation, job)

        return handle

    async def _handle(self, incarnation: Incarnation, job: Job[Work]) -> None:
        c = self.config
        number = self.runs_of[job.id]
        self.runs_of[job.id] += 1
        action = self._decide(job, number)
        run = Run(job.id, job.lease, job.attempts, incarnation.name, action, chaos_clock())
        self.runs.append(run)
        if len(self.runs) >= self._wake_at:
            self._progress.set()
        # The scheduler's job-timeout deadline, exactly: a cancellation at or past it is the
        # timeout (elapsed time measured from here would fall short by the lines run before).
        deadline = anyio.current_effective_deadline()
        draw = random.Random(f"{c.seed}/{job.id}/{number}/length")
        try:
            if action == "kill":
                if incarnation.drain:
                    raise RuntimeError(POISON_OUTSIDE_CHAOS)
                self.actions["death by poison job"] += 1
                self.kill(incarnation)
                await anyio.sleep_forever()
            elif action == "timeout":
                await anyio.sleep(c.job_timeout * 3)
            elif action == "long":
                await anyio.sleep(draw.uniform(c.visibility_timeout * 1.2, c.job_timeout * 0.8))
            else:
                await anyio.sleep(draw.uniform(0.0, c.quick_run))
            if action == "error":
                raise ValueError(ERROR_MESSAGE)
            if action == "retry":
                raise RetryJob("chaos: not now", delay=draw.uniform(0.001, c.retry_delay))
            if action == "fail":
                raise FailJob(FAIL_REASON)
            run.kind = "completed"
        except anyio.get_cancelled_exc_class():
            if incarnation.dead:
                run.kind = "died"
            elif incarnation.cancelling:
                run.kind = "interrupted"
            elif anyio.current_time() >= deadline:
                run.kind = "timeout"
            else:
                run.kind = "lost"
            raise
        except RetryJob:
            run.kind = "retry"
            raise
        except FailJob:
            run.kind = "fail"
            raise
        except Exception:
            run.kind = "error"
            raise
        finally:
            run.end = chaos_clock()

    # -- the instances and the controller ----------------------------------------------------------

    def _scheduler(self, incarnation: Incarnation) -> Scheduler[Work]:
        c = self.config
        return Scheduler(
            incarnation.process,
            self.handler_for(incarnation),
            workers=c.workers,
            buffer_size=c.buffer_size,
            fetch_interval=c.fetch_interval,
            visibility_timeout=c.visibility_timeout,
            shutdown_timeout=c.shutdown_timeout,
            store_backoff=c.store_backoff,
            retry=RetryPolicy(max_attempts=c.max_attempts, backoff=c.retry_backoff),
            job_timeout=c.job_timeout,
            clock=chaos_clock,
        )

    async def _instance(self, slot: int) -> None:
        """Run incarnation after incarnation of one scheduler instance until the chaos is over."""
        restart = random.Random(f"{self.config.seed}/restart/{slot}")
        number = 0
        while not self.stopping:
            number += 1
            incarnation = Incarnation(slot, number, Process(self.store, f"i{slot}.{number}"))
            incarnation.scheduler = self._scheduler(incarnation)
            self.incarnations.append(incarnation)
            self.current[slot] = incarnation
            with incarnation.scope:
                await incarnation.scheduler.run()
            self.current[slot] = None
            if not self.stopping:
                await anyio.sleep(restart.uniform(0.0, self.config.restart_delay))

    def kill(self, incarnation: Incarnation) -> None:
        """A process death: nothing the incarnation sends reaches the store any more; its tasks are torn down."""
        incarnation.dead = True
        incarnation.process.dead = True
        incarnation.scope.cancel()

    async def _control(self) -> None:
        """Every so many handler runs (seeded), cancel, shut down or kill a random instance."""
        c, rng = self.config, self._control_random
        gap = max(2, round(c.jobs * 1.15 / max(1, c.chaos_events)))
        first = list(ACTIONS)
        rng.shuffle(first)
        while not self.stopping:
            self._wake_at = len(self.runs) + rng.randint(gap // 2, gap + gap // 2)
            self._progress = anyio.Event()
            if self.chaos_done.is_set():
                return
            await self._progress.wait()
            if self.stopping or self.chaos_done.is_set():
                return
            await anyio.sleep(rng.uniform(0.0, 0.005))  # a random moment
            alive = [
                incarnation
                for incarnation in self.current
                if incarnation is not None and not (incarnation.dead or incarnation.cancelling or incarnation.graceful)
            ]
            if not alive:
                continue
            incarnation = rng.choice(alive)
            # Each kind once first (so a short run sees all three), then at random by weight.
            action = first.pop() if first else rng.choices(ACTIONS, weights=c.action_weights)[0]
            self.actions[action] += 1
            if action == "cancel":
                incarnation.cancelling = True
                incarnation.scope.cancel()
            elif action == "shutdown":
                incarnation.graceful = True
                assert incarnation.scheduler is not None
                incarnation.scheduler.shutdown()
            else:
                self.kill(incarnation)

    def _stop_all(self) -> None:
        self.stopping = True
        self._progress.set()
        for incarnation in self.current:
            if incarnation is not None and not incarnation.dead:
                incarnation.cancelling = True
                incarnation.scope.cancel()

    async def _drain(self) -> None:
        """One clean scheduler on a non-flaky proxy until every job has finished."""
        process = Process(self.store, "drain", flaky=False)
        incarnation = Incarnation(-1, 1, process, drain=True)
        incarnation.scheduler = self._scheduler(incarnation)
        self.incarnations.append(incarnation)
        with anyio.fail_after(self.config.drain_timeout):
            async with anyio.create_task_group() as tg:
                await tg.start(incarnation.scheduler.run)
                await self.finished.wait()
                incarnation.scheduler.shutdown()

    async def run(self) -> ChaosResult:
        wall, began = time.perf_counter(), anyio.current_time()
        now = chaos_clock()
        for n, job_id in enumerate(self.ids):
            await self.inner.add_job(Job.create(Work(n), id=job_id, process_after=now))
        async with anyio.create_task_group() as tg:
            for slot in range(self.config.instances):
                tg.start_soon(self._instance, slot)
            tg.start_soon(self._control)
            with anyio.move_on_after(self.config.chaos_timeout):
                await self.chaos_done.wait()
            self._stop_all()
        finished_in_chaos = len(self.finished_ids)
        await anyio.sleep(self.config.visibility_timeout * 1.05)  # every lease left behind has expired
        await self._drain()
        final = await _final_jobs(self.inner, self.ids)
        return self._check(
            final,
            finished_in_drain=len(self.finished_ids) - finished_in_chaos,
            elapsed=anyio.current_time() - began,
            wall=time.perf_counter() - wall,
        )

    def trace(self, job_id: str) -> str:
        """Every claim, accepted write and run of one job, in order: the material of a bug report."""
        lines: list[str] = []
        for claim in self.store.claims.get(job_id, []):
            lost = ", reply lost" if claim.reply_lost else ""
            lines.append(
                f"claim #{claim.end_seq} by {claim.process} at {claim.now:%H:%M:%S.%f}: lease {claim.lease[:8]}, "
                f"attempt {claim.attempts}, leased until {claim.visible_after:%H:%M:%S.%f}{lost}"
            )
            for write in claim.writes:
                until = "" if write.visible_after is None else f", until {write.visible_after:%H:%M:%S.%f}"
                lines.append(
                    f"  write #{write.end_seq} {write.kind} at {write.at:%H:%M:%S.%f}: {write.status}, "
                    f"attempts {write.attempts}{until}"
                )
            for run in self.runs:
                if run.lease == claim.lease:
                    end = "-" if run.end is None else f"{run.end:%H:%M:%S.%f}"
                    lines.append(
                        f"  run on {run.incarnation} ({run.action}): {run.start:%H:%M:%S.%f} - {end}, ended {run.kind}"
                    )
        return "\n".join(lines)

    # -- the checker ---------------------------------------------------------------------------------

    def _check(
        self, final: dict[str, Job[Work] | None], *, finished_in_drain: int, elapsed: float, wall: float
    ) -> ChaosResult:
        anomalies: list[str] = []
        lost = 0
        failed_by_reason: Counter[str] = Counter()
        for job_id in self.ids:
            job = final[job_id]
            if job is None or job.status is JobStatus.PENDING:
                lost += 1
                anomalies.append(f"{job_id}: lost ({'missing' if job is None else 'still pending'})")
            elif job.status is JobStatus.FAILED:
                reason = _failure_reason(job.last_error)
                if reason == "poison":
                    reason = "poison job" if job_id in self.poison else "out of attempts after lease expiries"
                failed_by_reason[reason] += 1

        runs_by_job: dict[str, list[Run]] = {}
        for run in self.runs:
            runs_by_job.setdefault(run.job_id, []).append(run)
        killed_in = {inc.name: inc.dead for inc in self.incarnations}

        # Every claim after a job's first must follow a release, a retry, or the real end of the previous lease.
        for job_id, claims in self.store.claims.items():
            for previous, claim in itertools.pairwise(claims):
                late = [w for w in previous.writes if w.start_seq > claim.end_seq]
                if late:
                    anomalies.append(
                        f"{job_id}: {len(late)} write(s) accepted under lease {previous.lease} after it was superseded"
                    )
                ending = previous.ending(before_seq=claim.end_seq)
                if ending in ("completed", "failed"):
                    anomalies.append(f"{job_id}: claimed again after it was {ending} (lease {claim.lease})")
                elif ending == "expired" and claim.now < previous.lease_end(before_seq=claim.end_seq):
                    anomalies.append(
                        f"{job_id}: claimed at {claim.now} while lease {previous.lease} held until "
                        f"{previous.lease_end(before_seq=claim.end_seq)}"
                    )

        extra: Counter[Cause] = Counter()
        overlaps = 0
        long_runs_renewed = 0
        dropped = 0
        for job_id, runs in runs_by_job.items():
            claims = self.store.claims.get(job_id, [])
            for run in runs:
                claim = self.store.by_lease.get((job_id, run.lease or ""))
                if claim is None:
                    anomalies.append(f"{job_id}: a run under lease {run.lease} the store never handed out")
                    continue
                problem = _inconsistency(run, claim, killed=killed_in.get(run.incarnation, False))
                if problem == DROPPED:
                    dropped += 1
                elif problem:
                    anomalies.append(f"{job_id}: {problem}")
                if run.action == "long" and run.kind == "completed" and any(w.kind == "renew" for w in claim.writes):
                    long_runs_renewed += 1
            for earlier, later in itertools.pairwise(runs):
                extra[self._cause(job_id, earlier, later, claims, anomalies)] += 1
            for i, earlier in enumerate(runs):
                for later in runs[i + 1 :]:
                    if earlier.end is not None and later.start >= earlier.end:
                        continue
                    first, second = (
                        self.store.by_lease.get((job_id, earlier.lease or "")),
                        self.store.by_lease.get((job_id, later.lease or "")),
                    )
                    if first is None or second is None or second.now < first.lease_end():
                        overlaps += 1
                        anomalies.append(f"{job_id}: runs on {earlier.lease} and {later.lease} overlapped while leased")

        runs_per_job: Counter[int] = Counter(len(runs_by_job.get(job_id, [])) for job_id in self.ids)
        return ChaosResult(
            backend=self.backend,
            store=self.store_name,
            jobs=len(self.ids),
            lost=lost,
            completed=sum(1 for job in final.values() if job is not None and job.status is JobStatus.COMPLETED),
            failed=sum(failed_by_reason.values()),
            failed_by_reason=failed_by_reason,
            runs=len(self.runs),
            runs_per_job=runs_per_job,
            extra_runs=extra,
            overlaps=overlaps,
            anomalies=anomalies,
            run_ends=Counter(run.kind for run in self.runs),
            actions=self.actions,
            events=self.store.events,
            long_runs_renewed=long_runs_renewed,
            dropped_outcomes=dropped,
            finished_in_drain=finished_in_drain,
            elapsed=elapsed,
            wall=wall,
        )

    def _cause(self, job_id: str, earlier: Run, later: Run, claims: list[Claim], anomalies: list[str]) -> Cause:
        """Why ``later`` ran although ``earlier`` had run: what ended ``earlier``'s lease."""
        if earlier.lease == later.lease:
            anomalies.append(f"{job_id}: two runs under one lease {later.lease}")
            return "unexplained"
        claim = self.store.by_lease.get((job_id, earlier.lease or ""))
        if claim is None:
            return "unexplained"
        ending = claim.ending()
        if ending in ("retry", "postpone"):
            return "retry"
        if ending == "release":
            return "interrupted"
        if ending == "expired":
            following = claims[claims.index(claim) + 1 :]
            if following and following[0].now >= claim.lease_end():
                return "lease expiry"
            anomalies.append(f"{job_id}: run again under {later.lease} before lease {claim.lease} expired")
            return "unexplained"
        anomalies.append(f"{job_id}: run again under {later.lease} after lease {claim.lease} recorded {ending}")
        return "unexplained"


ENDING_FITS: dict[Ending, frozenset[RunEnd]] = {
    "completed": frozenset({"completed"}),
    "retry": frozenset({"error", "timeout"}),
    "postpone": frozenset({"retry"}),
    "failed": frozenset({"fail", "error", "timeout"}),
    "release": frozenset({"interrupted"}),
}


DROPPED = "dropped"


def _inconsistency(run: Run, claim: Claim, *, killed: bool) -> str | None:
    """Why the store's record of ``run``'s lease does not fit how the handler ended, if it does not."""
    ending = claim.ending()
    if ending == "expired":  # nothing written: only a death or a lost lease explains that
        if killed or run.kind == "lost":
            return None
        end = run.end or run.start
        if claim.renewing_at(end) or end >= claim.lease_end() or any(at >= end for at in claim.outcome_attempts):
            return DROPPED  # a renewal that gave up, a lease gone before the result, or a write that never landed
        return f"run {run.kind} under {run.lease} on live {run.incarnation}, but nothing was written"
    if run.kind in ENDING_FITS[ending]:
        return None
    return f"run {run.kind} ({run.action}) under {run.lease} on {run.incarnation}, but the store recorded {ending}"


def _failure_reason(last_error: str | None) -> str:
    if last_error is None:
        return "no error recorded"
    if last_error.startswith("gave up after"):
        return "poison"
    if last_error == FAIL_REASON:
        return "FailJob"
    if "JobTimeoutError" in last_error:
        return "timed out on last attempt"
    return "retries exhausted"


async def _final_jobs(store: JobStore[Work], ids: list[str]) -> dict[str, Job[Work] | None]:
    """Every job as the store has it now (``None``: not in the store)."""
    if isinstance(store, MemoryStore):
        held: dict[str, Job[Work]] = {job.id: job for job in store.jobs()}
        return {job_id: held.get(job_id) for job_id in ids}
    if not isinstance(store, GetsJobs):
        raise TypeError(f"the chaos run cannot read jobs back from a {type(store).__name__}")
    get_job: Callable[[str], Awaitable[Job[Work]]] = store.get_job
    final: dict[str, Job[Work] | None] = {}
    for job_id in ids:
        try:
            final[job_id] = await get_job(job_id)
        except JobNotFoundError:
            final[job_id] = None
    return final


async def run_chaos(
    config: ChaosConfig, store: JobStore[Work] | None = None, *, store_name: str = "memory"
) -> ChaosResult:
    """Run the chaos on ``store`` (a fresh ``MemoryStore`` by default) on the current backend."""
    backend = "trio" if anyio.get_cancelled_exc_class().__module__.startswith("trio") else "asyncio"
    inner: JobStore[Work] = MemoryStore[Work]() if store is None else store
    return await ChaosRun(inner, config, backend=backend, store_name=store_name).run()


# -- the command line ------------------------------------------------------------------------------------


async def _main_memory(config: ChaosConfig) -> ChaosResult:
    return await run_chaos(config)


async def _main_mongo(config: ChaosConfig, uri: str, backend: str) -> ChaosResult:
    import uuid

    import pymongo

    from anysched.stores.mongo import MongoStore

    name = f"chaos_{uuid.uuid4().hex[:10]}"
    options: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": 10_000}
    if backend == "asyncio":
        client: Any = pymongo.AsyncMongoClient(uri, **options)
        try:
            return await run_chaos(config, MongoStore(client["anysched_chaos"][name], Work), store_name="mongo")
        finally:
            await client["anysched_chaos"].drop_collection(name)
            await client.close()
    sync_client: Any = pymongo.MongoClient(uri, **options)
    try:
        return await run_chaos(config, MongoStore(sync_client["anysched_chaos"][name], Work), store_name="mongo")
    finally:
        await anyio.to_thread.run_sync(lambda: sync_client["anysched_chaos"].drop_collection(name))
        sync_client.close()


def main(argv: list[str] | None = None) -> int:
    store_choice = "mongo" if "mongo" in (argv if argv is not None else sys.argv[1:]) else "memory"
    defaults = mongo_config() if store_choice == "mongo" else ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="jobs (default: %(default)s)")
    parser.add_argument("--backend", choices=("asyncio", "trio", "both"), default="both", help="(default: both)")
    parser.add_argument("--mock-clock", action="store_true", help="run trio on trio.testing.MockClock: sleeps are free")
    parser.add_argument(
        "--store",
        choices=("memory", "mongo"),
        default="memory",
        help="(default: memory; mongo has its own defaults, see mongo_config)",
    )
    parser.add_argument(
        "--uri", help="MongoDB URI for --store mongo (asyncio: pymongo async client; trio: sync client)"
    )
    parser.add_argument("--instances", type=int, default=defaults.instances, help="schedulers (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="per scheduler (default: %(default)s)")
    parser.add_argument(
        "--buffer-size", type=int, default=defaults.buffer_size, help="per scheduler (default: workers)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    parser.add_argument(
        "--fail-rate", type=float, default=defaults.fail_rate, help="store calls that fail (default: %(default)s)"
    )
    parser.add_argument(
        "--store-delay",
        type=float,
        default=defaults.store_delay,
        help="max delay of a store call (default: %(default)s s)",
    )
    parser.add_argument(
        "--visibility-timeout", type=float, default=defaults.visibility_timeout, help="(default: %(default)s s)"
    )
    parser.add_argument("--job-timeout", type=float, default=defaults.job_timeout, help="(default: %(default)s s)")
    parser.add_argument("--max-attempts", type=int, default=defaults.max_attempts, help="(default: %(default)s)")
    parser.add_argument("--poison-jobs", type=int, default=defaults.poison_jobs, help="(default: %(default)s)")
    parser.add_argument(
        "--chaos-events",
        type=int,
        default=defaults.chaos_events,
        help="cancellations/shutdowns/deaths (default: %(default)s)",
    )
    parser.add_argument("--p-error", type=float, default=defaults.p_error, help="(default: %(default)s)")
    parser.add_argument("--p-retry", type=float, default=defaults.p_retry, help="(default: %(default)s)")
    parser.add_argument("--p-fail", type=float, default=defaults.p_fail, help="(default: %(default)s)")
    parser.add_argument("--p-timeout", type=float, default=defaults.p_timeout, help="(default: %(default)s)")
    parser.add_argument("--p-long", type=float, default=defaults.p_long, help="(default: %(default)s)")
    parser.add_argument("--log-level", default=None, help="show anysched's log at this level (default: silent)")
    args = parser.parse_args(argv)
    if args.store == "mongo" and not args.uri:
        parser.error("--store mongo needs --uri")
    try:
        config = replace(
            defaults,
            jobs=args.jobs,
            instances=args.instances,
            workers=args.workers,
            buffer_size=args.buffer_size,
            seed=args.seed,
            fail_rate=args.fail_rate,
            store_delay=args.store_delay,
            visibility_timeout=args.visibility_timeout,
            job_timeout=args.job_timeout,
            max_attempts=args.max_attempts,
            poison_jobs=args.poison_jobs,
            chaos_events=args.chaos_events,
            p_error=args.p_error,
            p_retry=args.p_retry,
            p_fail=args.p_fail,
            p_timeout=args.p_timeout,
            p_long=args.p_long,
        )
    except ValueError as error:
        parser.error(str(error))
    if args.log_level:
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    else:
        for name in ("anysched", "stamina"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    backends = ("asyncio", "trio") if args.backend == "both" else (args.backend,)
    failures = 0
    for backend in backends:
        options: dict[str, Any] = {}
        if backend == "trio" and args.mock_clock:
            import trio.testing

            options["clock"] = trio.testing.MockClock(autojump_threshold=0)
        if args.store == "memory":
            result = anyio.run(_main_memory, config, backend=backend, backend_options=options)
        else:
            result = anyio.run(_main_mongo, config, args.uri, backend, backend=backend, backend_options=options)
        clock = " (mock clock)" if options else ""
        print(f"chaos run: seed {config.seed}, {config.instances} instances x {config.workers} workers{clock}")
        print(result.table(), flush=True)
        print()
        failures += not result.ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
