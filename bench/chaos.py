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
  their process every time they run. Misbehaving handlers too (the table ``HANDLERS``): a **foreign
  cancellation** (asyncio: a ``CancelledError`` of an inner task the handler cancelled itself; trio: an
  inner nursery cancelled, then an error), **exception groups** of the handler's own task group (with
  and without a sibling cancelled inside it), **errors raised while being cancelled** (the clean-up
  after our timeout, lost lease or shutdown raises a ``ValueError`` or a group) and **swallowed
  cancellations** (caught, a shielded moment, a normal return);
- **store faults** beyond failures (the ``StoreFaults`` draw): calls that **hang** until their caller
  cancels them (renewals most often), writes that an abandoned caller left behind **landing late**
  from a background task (as a sync driver's worker thread would), claims **cancelled after the store
  made them**, and ``add_job`` replies lost after the insert, for jobs a producer adds during the run
  through ``Scheduler.add_job``;
- **instances** schedulers, each through its own "process" (a proxy in front of the store); a seeded
  controller, every so many handler runs, picks an instance and cancels it from outside (its clean-up
  hands jobs back through the flaky store), shuts it down gracefully, or **kills** it: its process
  proxy drops every later call (fetches return nothing, writes vanish), its task group is torn down,
  its leases are left to expire. A fresh incarnation with a fresh proxy then starts in its place.
  Instance 0's wall clock is **stepped** forward and back by a few visibility timeouts (the store
  decides claims by its own clock, as a database server does).

When every job has finished (or ``chaos_timeout`` passed) everything is cancelled, the run waits out
the visibility timeout and drains the store with one clean scheduler on a non-flaky proxy. The store
wrapper records every claim (lease token, claim time, lease end) and every write the store accepted,
the handlers record every run (job, lease, attempt, incarnation, start, end, how it ended); the checker
then reports jobs lost (must be 0), completed, failed for good by reason, handler runs per job, and
every run beyond a job's first classified by its cause: a retry, an interruption (handed back), a real
lease expiry, or **unexplained** (must be 0). It also checks that no two runs of a job overlapped while
the earlier one's lease held, that no claim happened while another lease held or after the job
finished, and that each run's recorded ending matches what its handler did. And that no
scheduler stopped or crashed unless told to, that every stop ended within its bound, that every job
added during the run was added exactly once without an error, that no write landed after its lease's
outcome, and that a clock step did not cancel every running handler of the stepped instance.

Two of those rules are timing-sensitive on a real clock: a loaded machine's event loop may wake
late enough to lose renewals (a 0.25 s lease) or to stretch a stop. A heartbeat measures the loop's
lag; a clock step's lost-lease cancellations, or a stop's overrun, that the lag around it explains
are excused, shown and counted in the table ("excused for lag"), never hidden. On trio's mock clock
there is no lag, so there both rules are enforced in full.

Usage::

    python bench/chaos.py                               # 10,000 jobs, asyncio and trio (real clocks)
    python bench/chaos.py --backend trio --mock-clock   # trio on a mock clock: every sleep is free
    python bench/chaos.py --jobs 50000 --instances 5 --seed 7 --fail-rate 0.3
    python bench/chaos.py --store mongo --uri mongodb://localhost:27017/?directConnection=true --jobs 300
"""

from __future__ import annotations

import argparse
import inspect
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
from anyio.abc import TaskGroup

from anysched import (
    Backoff,
    FailJob,
    Job,
    JobNotFoundError,
    JobStatus,
    JobStore,
    LeaseLostError,
    MemoryStore,
    RetryJob,
    RetryPolicy,
    Scheduler,
    TransientStoreError,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

R = TypeVar("R")

EPOCH = datetime(2030, 1, 1, tzinfo=timezone.utc)

Action = Literal[
    "ok",
    "error",
    "retry",
    "fail",
    "timeout",
    "long",
    "kill",
    "foreign cancel",
    "group",
    "group with cancel",
    "error in cancel",
    "swallow cancel",
]
RunEnd = Literal["running", "completed", "error", "retry", "fail", "timeout", "interrupted", "died", "lost"]
WriteKind = Literal["renew", "release", "retry", "postpone", "completed", "failed"]
Ending = Literal["release", "retry", "postpone", "completed", "failed", "expired"]
Cause = Literal["retry", "interrupted", "lease expiry", "unexplained"]

FAIL_REASON = "chaos: the handler gave up (FailJob)"
ERROR_MESSAGE = "chaos: the handler raised"
POISON_OUTSIDE_CHAOS = "chaos: a poison job run outside the chaos phase"
FOREIGN_MESSAGE = "chaos: the handler's inner work was cancelled"
GROUP_MESSAGE = "chaos: a task in the handler's task group failed"
CLEANUP_MESSAGE = "chaos: the handler's clean-up failed while it was cancelled"
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


STEPPED_SLOT = 0
"""The instance whose wall clock the controller steps."""


class SteppedClock:
    """The chaos clock plus an offset the controller steps (one scheduler instance's wall clock)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.steps: list[tuple[float, float]] = []
        """(event-loop time, new offset) of every step."""

    def __call__(self) -> datetime:
        return chaos_clock() + timedelta(seconds=self.offset)

    def step(self, offset: float) -> None:
        if offset != self.offset:
            self.offset = offset
            self.steps.append((anyio.current_time(), offset))


LAG_PERIOD = 0.01
"""The lag monitor's heartbeat: it sleeps this long, then records how late it woke."""

LAG_EXCUSE = 0.25
"""Lag that excuses a clock step's lost-lease cancellations: one stall of the event loop (a wake-up
this fraction of the visibility timeout late) within a lease either side of the step. Not the sum
of small delays: a loop merely busy (under coverage, every wake-up a few ms late) keeps its leases."""


class LagMonitor:
    """How late the event loop runs: a heartbeat sleeps ``LAG_PERIOD`` on the event loop's clock
    and records how much later than asked it woke (a loaded machine, coverage, a busy loop).

    On trio's mock clock there is no lag (every wake-up is on time), so every rule it excuses is
    enforced in full there.
    """

    def __init__(self) -> None:
        self.late: list[tuple[float, float]] = []
        """(event-loop time of the wake-up, seconds late) of every wake-up later than asked."""
        self.ticks = 0
        self._scope = anyio.CancelScope()

    async def run(self) -> None:
        with self._scope:
            while True:
                asked = anyio.current_time() + LAG_PERIOD
                await anyio.sleep(LAG_PERIOD)
                self.ticks += 1
                late = anyio.current_time() - asked
                if late > 0:
                    self.late.append((anyio.current_time(), late))

    def stop(self) -> None:
        self._scope.cancel()

    def lag(self, start: float, end: float) -> float:
        """Event-loop seconds lost to lag between ``start`` and ``end``: the lateness of every
        wake-up in that span (a stall that began before ``start`` counts in full)."""
        return sum(late for at, late in self.late if start <= at and at - late <= end)

    def longest(self, start: float, end: float) -> float:
        """The longest single stall of the event loop that overlaps ``start`` to ``end``."""
        return max((late for at, late in self.late if start <= at and at - late <= end), default=0.0)

    def max_late(self) -> float:
        return max((late for _, late in self.late), default=0.0)


async def _never_called(job: Job[Work]) -> None:
    raise AssertionError("the producer's scheduler only adds jobs")


def _describe(error: BaseException) -> str:
    """An exception's type and message; a group's leaves too."""
    if isinstance(error, BaseExceptionGroup):
        leaves = ", ".join(_describe(leaf) for leaf in error.exceptions)
        return f"{type(error).__name__}[{leaves}]"
    return f"{type(error).__name__}: {error}"


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
    p_foreign_cancel: float = 0.01
    """A handler raises a cancellation of its own (asyncio) or an error after its inner nursery was cancelled (trio)."""
    p_group: float = 0.01
    """A handler's own task group raises several errors."""
    p_group_with_cancel: float = 0.01
    """A handler's own task group: one task raises while its sibling is cancelled (and cleans up)."""
    p_error_in_cancel: float = 0.004
    """A handler runs until we cancel it (timeout, lost lease, shutdown) and raises from its clean-up."""
    p_swallow_cancel: float = 0.004
    """A handler runs until we cancel it, catches the cancellation, waits a shielded moment, returns."""
    retry_delay: float = 0.03
    """A handler's RetryJob asks for up to this delay."""
    p_hang: float = 0.0005
    """Chance that a store call (fetch or write) blocks until its caller cancels it."""
    p_renew_hang: float = 0.03
    """The same for a lease renewal (whose caller gives up when the lease runs out)."""
    p_claim_cancelled: float = 0.002
    """Chance that a fetch claims its jobs and then blocks until its caller cancels it (jobs never delivered)."""
    p_late_landing: float = 0.7
    """Chance that an update_job whose caller gave up on it still lands, from a background task."""
    late_delay: float = 0.5
    """... after up to this long."""
    added_during_run: float = 0.05
    """Fraction of the jobs a producer adds during the run through ``Scheduler.add_job`` (not before it)."""
    p_add_lost_reply: float = 0.3
    """Chance that the producer's add_job inserts the job and then loses its reply."""
    clock_step: float = 3.0
    """Instance 0's wall clock steps by this many visibility timeouts (forward, back to 0, back, to 0, ...)."""
    clock_step_interval: float = 1.0
    """About this long between steps (0: no steps)."""
    stop_margin: float = 1.0
    """Slack on every stop's bound (shutdown_timeout, plus the handlers' time left for a graceful one)."""
    stall_after: float = 1.0
    """The controller also acts when no handler has started for this long (every instance may be stuck)."""
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
        "p_error_in_cancel": 0.01,
        "p_swallow_cancel": 0.01,
        "p_hang": 0.003,
        "p_renew_hang": 0.15,
        "p_claim_cancelled": 0.02,
        "late_delay": 2.0,
        "clock_step_interval": 3.0,
        "stop_margin": 2.0,
        "stall_after": 3.0,
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
    late: bool = False
    """Landed from the background after its caller had given up on it."""
    reply_lost: bool = False
    """Its caller got an error instead of the reply (it learns of the write only if a retry lands too)."""


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
    renewal_hung: bool = False
    """A renewal under this lease hung until its caller gave up (the lease was then lost for a store's reason)."""
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

    def holder_lease_end(self, moment: datetime, length: timedelta) -> datetime:
        """The latest the holder can have reckoned this lease to end, as of ``moment``.

        A scheduler times its lease on its own clock: ``length`` after the start of the last
        renewal it heard back from (or before its claim), which is never later than the end the
        store wrote for it. Bounded here by the claim's end and, for each renewal the store
        accepted by ``moment`` and answered (not landed late after its caller gave up on it, nor
        with its reply lost), the lower of its stored end and ``length`` after the last renewal
        try made before it landed.
        """
        ends = [self.visible_after]
        for write in self.writes:
            unheard = write.late or write.reply_lost
            if write.kind != "renew" or unheard or write.visible_after is None or write.at > moment:
                continue
            tries = [at for at in self.renew_attempts if at <= write.at]
            ends.append(min(write.visible_after, max(tries) + length) if tries else write.visible_after)
        return max(ends)

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
    began: float = 0.0
    """Event-loop time of ``start``."""
    ended: float | None = None
    after_cancel: Literal["raised", "swallowed"] | None = None
    """The handler raised something else, or returned, after we had cancelled it (``kind`` says why we did)."""


@dataclass(eq=False)
class StopRequest:
    """The controller asked an incarnation to stop (or it died): when, how, and the bound on how long it may take."""

    how: Literal["cancel", "shutdown", "kill"]
    at: float
    bound: float


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
    running: set[Run] = field(default_factory=set[Run])
    stops: list[StopRequest] = field(default_factory=list[StopRequest])
    stopped: anyio.Event = field(default_factory=anyio.Event)
    stopped_at: float | None = None

    @property
    def name(self) -> str:
        return "drain" if self.drain else f"i{self.slot}.{self.number}"

    @property
    def alive(self) -> bool:
        """Not dead, not asked to stop."""
        return not (self.dead or self.cancelling or self.graceful)


Fault = Literal["none", "fail before", "lost reply", "hang", "hang after claim"]


class StoreFaults:
    """What goes wrong with one store call of a flaky process, by a seeded draw.

    - ``fail before``: ``TransientStoreError`` before the call reaches the store;
    - ``lost reply``: the store does the work, then the caller gets ``TransientStoreError``
      (for ``add_job`` with its own, higher chance ``p_add_lost_reply``);
    - ``hang``: the call blocks before the store until its caller cancels it (renewals most often);
    - ``hang after claim``: a fetch claims its jobs, then blocks until its caller cancels it;
    - otherwise a random delay of up to ``store_delay``.

    ``add_job`` never hangs (the producer has no one to cancel it).
    """

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self._random = random.Random(f"{config.seed}/store")

    def draw(self, operation: str, *, renewal: bool = False) -> Fault:
        c = self.config
        odds: list[tuple[Fault, float]] = [("fail before", c.fail_rate / 2)]
        if operation == "add_job":
            odds.append(("lost reply", c.p_add_lost_reply))
        else:
            odds += [("lost reply", c.fail_rate / 2), ("hang", c.p_renew_hang if renewal else c.p_hang)]
        if operation == "fetch_pending_jobs":
            odds.append(("hang after claim", c.p_claim_cancelled))
        x = self._random.random()
        for fault, p in odds:
            if x < p:
                return fault
            x -= p
        return "none"

    def delay(self) -> float:
        return self._random.uniform(0.0, self.config.store_delay)

    def lands_late(self) -> float | None:
        """How long after its caller gave up an abandoned write lands, or ``None``: it never does."""
        if self._random.random() >= self.config.p_late_landing:
            return None
        return self._random.uniform(0.0, self.config.late_delay)


class ChaosStore:
    """The shared store behind a recorder that also injects failures, delays and hangs (per process).

    Calls arrive through a :class:`Process`; a dead process's calls are dropped after the
    random delay (nothing it sends reaches the store). The inner call itself is shielded:
    once sent, its effect is waited for and recorded, so the record is exactly what the
    store accepted. An ``update_job`` whose caller gave up on it before it was sent (cancelled
    while delayed or hung) may still land later, from ``background`` (a sync driver's
    abandoned worker thread would).

    Claims are decided by the chaos clock, not by the ``now`` the caller passes: the ``now``
    forwarded to the inner store is replaced, as a database server's own ``now()`` would be,
    so a scheduler whose wall clock is stepped tests only its own lease arithmetic.
    """

    def __init__(self, inner: JobStore[Work], config: ChaosConfig, on_finished: Callable[[str], None]) -> None:
        self.inner = inner
        self.config = config
        self.claims: dict[str, list[Claim]] = {}
        self.by_lease: dict[tuple[str, str], Claim] = {}
        """Claims by (job id, lease token): a store may claim a batch under one token (MongoStore does)."""
        self.events: Counter[str] = Counter()
        self.inserted: Counter[str] = Counter()
        """Inserts the store accepted, by job id."""
        self.faults = StoreFaults(config)
        self.background: TaskGroup | None = None
        """Where abandoned writes land late from (none: they never land)."""
        self._seq = 0
        self._millis = type(inner).__name__ == "MongoStore"
        """The store keeps times in whole milliseconds (BSON dates): a renewal's end is stored cut to them."""
        self._on_finished = on_finished

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _enter(
        self, process: Process, operation: str, *, renewal: bool = False, held: Claim | None = None
    ) -> Fault | None:
        """Fail before the store, hang, or delay; the call's fault, ``None`` if the caller's process is dead by then."""
        self.events[f"calls {operation}"] += 1
        fault: Fault = "none"
        if process.flaky:
            fault = self.faults.draw(operation, renewal=renewal)
            if fault == "fail before":
                self.events["store failures before"] += 1
                raise TransientStoreError(f"chaos: {operation} failed before reaching the store")
            if fault == "hang":
                self.events["renewals hung" if renewal else "store calls hung"] += 1
                if renewal and held is not None:
                    held.renewal_hung = True
                await process.hang()
            if fault == "none":
                await anyio.sleep(self.faults.delay())
        else:
            await anyio.lowlevel.checkpoint()
        return None if process.dead else fault

    def _exit(self, fault: Fault, operation: str) -> None:
        """Lose the reply of a call that reached the store, if the draw said so."""
        if fault == "lost reply":
            self.events["store failures after (lost reply)"] += 1
            raise TransientStoreError(f"chaos: {operation} reached the store but its reply was lost")

    async def fetch_pending_jobs(
        self, process: Process, now: datetime, limit: int, visibility_timeout: timedelta
    ) -> list[Job[Work]]:
        fault = await self._enter(process, "fetch_pending_jobs")
        if fault is None:
            return []
        now = chaos_clock()  # the server's clock decides, not the caller's (see the class docstring)
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
            return []
        if jobs and fault == "hang after claim":
            for claim in claims:
                claim.reply_lost = True
            try:
                await process.hang()
            finally:
                self.events["claims cancelled after the store claimed"] += 1
                self.events["jobs in cancelled claims"] += len(jobs)
        if jobs and fault == "lost reply":
            self.events["lost fetch replies"] += 1
            self.events["jobs in lost fetch replies"] += len(jobs)
            for claim in claims:
                claim.reply_lost = True
        self._exit(fault, "fetch_pending_jobs")
        return jobs

    async def update_job(self, process: Process, job: Job[Work]) -> None:
        held = self.by_lease.get((job.id, job.lease or ""))
        renewal = job.status is JobStatus.PENDING and job.visible_after is not None
        if held is not None:
            (held.renew_attempts if renewal else held.outcome_attempts).append(chaos_clock())
        try:
            fault = await self._enter(process, "update_job", renewal=renewal, held=held)
        except anyio.get_cancelled_exc_class():
            self._abandon(process, job)
            raise
        if fault is None:
            return
        start = self._next_seq()
        await _shielded(lambda: self.inner.update_job(job))  # LeaseLostError, JobNotFoundError: nothing written
        self._record(job, start, reply_lost=fault == "lost reply" and not process.dead)
        if not process.dead:
            self._exit(fault, "update_job")

    def _record(self, job: Job[Work], start: int, *, late: bool = False, reply_lost: bool = False) -> None:
        """Record an update the store accepted."""
        end = self._next_seq()
        assert job.lease is not None
        claim = self.by_lease.get((job.id, job.lease))
        if claim is None:
            self.events["writes under an unknown lease"] += 1
            return
        kind = write_kind(claim, job)
        at = chaos_clock()
        until = job.visible_after
        if until is not None and self._millis:  # as the store keeps it, which is what its claims compare with
            until -= timedelta(microseconds=until.microsecond % 1000)
        claim.writes.append(Write(kind, at, until, job.attempts, job.status, start, end, late, reply_lost))
        self.events[f"writes {kind}"] += 1
        if kind in ("completed", "failed"):
            self._on_finished(job.id)

    def _abandon(self, process: Process, job: Job[Work]) -> None:
        """The caller gave up on ``job``'s write before it was sent: maybe it lands later anyway."""
        delay = self.faults.lands_late() if process.flaky else None
        if delay is None or self.background is None:
            return
        self.events["abandoned writes"] += 1
        self.background.start_soon(self._land_late, process, job, delay)

    async def _land_late(self, process: Process, job: Job[Work], delay: float) -> None:
        await anyio.sleep(delay)
        if process.dead:  # its thread died with it
            return
        kind = "renewals" if job.status is JobStatus.PENDING and job.visible_after is not None else "other writes"
        start = self._next_seq()
        try:
            await _shielded(lambda: self.inner.update_job(job))
        except (LeaseLostError, JobNotFoundError):
            self.events[f"late {kind} refused"] += 1
            claim = self.by_lease.get((job.id, job.lease or ""))
            if claim is not None and claim.ending() != "expired":
                self.events[f"late {kind} refused after the lease's outcome"] += 1
            return
        self.events[f"late {kind} landed"] += 1
        self._record(job, start, late=True)

    async def get_job(self, process: Process, job_id: str) -> Job[Work]:
        """The inner store's job (``MemoryStore.get_job`` answers at once, the others are awaited); no faults."""
        self.events["calls get_job"] += 1
        await anyio.lowlevel.checkpoint()
        found: Any = getattr(self.inner, "get_job")(job_id)  # noqa: B009 -- not every JobStore has one
        job: Job[Work] = await found if inspect.isawaitable(found) else found
        return job

    async def add_job(self, process: Process, job: Job[Work]) -> None:
        fault = await self._enter(process, "add_job")
        if fault is None:
            return
        await _shielded(lambda: self.inner.add_job(job))
        self.inserted[job.id] += 1
        if fault == "lost reply":
            self.events["lost add_job replies"] += 1
        self._exit(fault, "add_job")


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
        self.hung = 0
        """Calls of this process blocked until cancelled, right now."""

    async def hang(self) -> None:
        """Block until the caller cancels the call."""
        self.hung += 1
        try:
            await anyio.sleep_forever()
        finally:
            self.hung -= 1

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[Work]]:
        return await self.store.fetch_pending_jobs(self, now, limit, visibility_timeout)

    async def update_job(self, job: Job[Work]) -> None:
        await self.store.update_job(self, job)

    async def add_job(self, job: Job[Work]) -> None:
        await self.store.add_job(self, job)

    async def get_job(self, job_id: str) -> Job[Work]:
        """Read a job back (a scheduler does, to tell its own lost add_job reply from a duplicate)."""
        return await self.store.get_job(self, job_id)


# -- the handlers' behaviours -----------------------------------------------------------------------------


@dataclass(eq=False)
class Attempt:
    """What a handler behaviour works with: the knobs, its own seeded draw, and a way to die (poison)."""

    config: ChaosConfig
    backend: str
    draw: random.Random
    die: Callable[[], Awaitable[None]]
    foreign: bool = False
    """Set just before the behaviour lets a cancellation of its own out (nobody cancelled the scheduler)."""


Behaviour = Callable[[Attempt], Awaitable[None]]


async def _quick(a: Attempt) -> None:
    await anyio.sleep(a.draw.uniform(0.0, a.config.quick_run))


async def _error(a: Attempt) -> None:
    await _quick(a)
    raise ValueError(ERROR_MESSAGE)


async def _retry(a: Attempt) -> None:
    await _quick(a)
    raise RetryJob("chaos: not now", delay=a.draw.uniform(0.001, a.config.retry_delay))


async def _fail(a: Attempt) -> None:
    await _quick(a)
    raise FailJob(FAIL_REASON)


async def _past_timeout(a: Attempt) -> None:
    await anyio.sleep(a.config.job_timeout * 3)


async def _long(a: Attempt) -> None:
    await anyio.sleep(a.draw.uniform(a.config.visibility_timeout * 1.2, a.config.job_timeout * 0.8))


async def _poison(a: Attempt) -> None:
    await a.die()


async def _foreign_cancel(a: Attempt) -> None:
    """asyncio: the handler cancels an inner task and awaits its result: ``CancelledError`` comes out
    though nobody cancelled the scheduler. trio has no such thing: the handler's inner nursery is
    cancelled (its own scope), then it raises an error."""
    await _quick(a)
    if a.backend == "asyncio":
        import asyncio

        inner = asyncio.ensure_future(asyncio.sleep(3600))
        inner.cancel()
        await asyncio.wait([inner])  # our own cancellation, if one comes, interrupts this wait
        a.foreign = True
        inner.result()  # raises the inner task's CancelledError
        raise AssertionError("unreachable: a cancelled task has no result")
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep_forever)
        await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    raise ValueError(FOREIGN_MESSAGE)


async def _raise(error: Exception) -> None:
    raise error


async def _group(a: Attempt) -> None:
    """The handler's own task group: two tasks raise at once (an ``ExceptionGroup`` of two)."""
    await _quick(a)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_raise, ValueError(GROUP_MESSAGE))
        tg.start_soon(_raise, KeyError(GROUP_MESSAGE))


async def _group_with_cancel(a: Attempt) -> None:
    """The handler's own task group: one task raises while its sibling is cancelled and cleans up."""

    async def sibling() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(a.config.quick_run)

    async def failing() -> None:
        await _quick(a)
        raise ValueError(GROUP_MESSAGE)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sibling)
        tg.start_soon(failing)


async def _error_in_cancel(a: Attempt) -> None:
    """Runs until we cancel it (timeout, lost lease, shutdown); its clean-up raises a ``ValueError``, a
    group of errors, or a group of an error and our own cancellation (a nursery in the clean-up)."""
    variant = a.draw.randrange(3)
    try:
        await anyio.sleep(a.config.job_timeout * 3)
    except anyio.get_cancelled_exc_class() as cancelled:
        if variant == 0:
            raise ValueError(CLEANUP_MESSAGE) from None
        if variant == 1:
            raise ExceptionGroup(CLEANUP_MESSAGE, [ValueError(CLEANUP_MESSAGE), KeyError(CLEANUP_MESSAGE)]) from None
        raise BaseExceptionGroup(CLEANUP_MESSAGE, [ValueError(CLEANUP_MESSAGE), cancelled]) from None


async def _swallow_cancel(a: Attempt) -> None:
    """Runs until we cancel it, catches the cancellation, waits a shielded moment, returns normally."""
    try:
        await anyio.sleep(a.config.job_timeout * 3)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await anyio.sleep(a.draw.uniform(0.0, a.config.quick_run))


HANDLERS: tuple[tuple[Action, str, Behaviour], ...] = (
    ("error", "p_error", _error),
    ("retry", "p_retry", _retry),
    ("fail", "p_fail", _fail),
    ("timeout", "p_timeout", _past_timeout),
    ("long", "p_long", _long),
    ("foreign cancel", "p_foreign_cancel", _foreign_cancel),
    ("group", "p_group", _group),
    ("group with cancel", "p_group_with_cancel", _group_with_cancel),
    ("error in cancel", "p_error_in_cancel", _error_in_cancel),
    ("swallow cancel", "p_swallow_cancel", _swallow_cancel),
)
"""Every behaviour a handler may draw: (action, the config knob of its chance, what it does)."""

BEHAVIOURS: dict[Action, Behaviour] = {"ok": _quick, "kill": _poison}
BEHAVIOURS.update((action, run) for action, _, run in HANDLERS)


def _cancel_requested() -> bool:
    """Whether a scope around us (the scheduler's: timeout, lost lease, shutdown, death) has been cancelled."""
    return anyio.current_effective_deadline() == -math.inf


def _why_cancelled(incarnation: Incarnation, deadline: float) -> RunEnd:
    if incarnation.dead:
        return "died"
    if incarnation.cancelling:
        return "interrupted"
    if anyio.current_time() >= deadline:
        return "timeout"
    return "lost"


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
    timed_out_in_doubt: int
    """Runs cut off at their job timeout once their holder's lease had run out by the holder's own
    clock (a renewal unanswered, or none sent, until then), with nothing written: the scheduler
    puts such a lease in doubt and records no outcome for a handler it cut off. The store's end of
    the lease may be later: a renewal abandoned then and landing late, or the store's end running
    ahead of the holder's by the renewal's delay (the job runs again: a lease-expiry re-run)."""
    finished_in_drain: int
    elapsed: float
    """Event-loop seconds (virtual on trio's mock clock)."""
    wall: float
    cpu: float = 0.0
    """CPU seconds of this process (threads included): about the wall time on an idle machine."""
    behaviours: Counter[str] = field(default_factory=Counter[str])
    """Handler runs by drawn behaviour."""
    after_cancel: Counter[str] = field(default_factory=Counter[str])
    """Runs that raised something else, or returned, after we cancelled them (and why we did)."""
    adds: Counter[str] = field(default_factory=Counter[str])
    """Jobs the producer added during the run through Scheduler.add_job, and how those adds went."""
    stops: Counter[str] = field(default_factory=Counter[str])
    clock_steps: int = 0
    lost_after_steps: tuple[int, int] = (0, 0)
    """(handlers of the stepped instance cancelled for a lost lease within a lease after a step, at risk)."""
    run_violations: list[str] = field(default_factory=list[str])
    """Crashes, stops nobody asked for, stops past their bound, adds that raised or inserted twice, clock
    steps that cancelled (nearly) every running handler."""
    excused_for_lag: list[str] = field(default_factory=list[str])
    """Breaches of a timing-sensitive rule that the event loop's lag explains (never on a mock clock)."""
    lag_excused: Counter[str] = field(default_factory=Counter[str])
    """How many breaches of each timing-sensitive rule the event loop's lag excused."""
    loop_lag: tuple[float, float, int] = (0.0, 0.0, 0)
    traces: dict[str, str] = field(default_factory=dict[str, str])
    """``ChaosRun.trace`` of the first few jobs an anomaly names: the material of a bug report."""
    """The event loop's lag: (longest single stall, total seconds lost, heartbeats)."""

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
        return problems + self.anomalies + self.run_violations

    def _must_be_zero(self) -> dict[str, int]:
        return {"lost": self.lost, "unexplained": self.unexplained, "overlapping": self.overlaps}

    def new_fault_events(self) -> dict[str, int]:
        """How often each misbehaving handler and each store fault beyond failures happened."""
        return {
            "handler raised a foreign cancellation": self.behaviours["foreign cancel"],
            "handler's task group raised several errors": self.behaviours["group"],
            "handler's task group: error while a sibling was cancelled": self.behaviours["group with cancel"],
            "handler raised from its clean-up after our cancellation": sum(
                n for what, n in self.after_cancel.items() if what.startswith("raised")
            ),
            "handler swallowed our cancellation": sum(
                n for what, n in self.after_cancel.items() if what.startswith("swallowed")
            ),
            "store call hung until cancelled": self.events["store calls hung"],
            "renewal hung until cancelled": self.events["renewals hung"],
            "abandoned write landed late": self.events["late renewals landed"]
            + self.events["late other writes landed"]
            + self.events["late renewals refused"]
            + self.events["late other writes refused"],
            "claim cancelled after the store claimed": self.events["claims cancelled after the store claimed"],
            "job added during the run": self.adds["added during the run"],
            "add_job reply lost after the insert": self.events["lost add_job replies"],
            "clock step": self.clock_steps,
        }

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
        behaviours = ", ".join(f"{name} {n:,}" for name, n in sorted(self.behaviours.items()))
        after_cancel = ", ".join(f"{name} {n:,}" for name, n in sorted(self.after_cancel.items()))
        hangs = ", ".join(
            f"{name} {self.events[name]:,}"
            for name in (
                "store calls hung",
                "renewals hung",
                "claims cancelled after the store claimed",
                "jobs in cancelled claims",
                "abandoned writes",
                "late renewals landed",
                "late renewals refused",
                "late renewals refused after the lease's outcome",
                "late other writes landed",
                "late other writes refused",
            )
        )
        adds = (
            f"{self.adds['added during the run']:,} through Scheduler.add_job, "
            f"{self.events['lost add_job replies']:,} replies lost after the insert, "
            f"{self.adds['adds that raised']:,} raised, {self.adds['added twice or more']:,} inserted twice"
        )
        lost, at_risk = self.lost_after_steps
        steps = f"{self.clock_steps:,}; handlers cancelled for a lost lease right after one: {lost:,} of {at_risk:,}"
        stops = ", ".join(
            f"{how} {self.stops[how + 's']:,} ({self.stops[how + 's over bound']:,} over bound, "
            f"longest {self.stops['longest ' + how + ' ms'] / 1000:.2f}s)"
            for how in ("cancel", "shutdown", "kill")
        )
        longest, total, ticks = self.loop_lag
        lag = f"longest stall {longest * 1000:.0f} ms, {total:.2f}s lost in all, over {ticks:,} heartbeats"
        excused = ", ".join(f"{rule} {n:,}" for rule, n in sorted(self.lag_excused.items())) or "none"
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
            ("timeouts not recorded, lease in doubt by then", f"{self.timed_out_in_doubt:,}"),
            ("instance events", actions),
            ("store chaos", store),
            ("handler behaviours", behaviours),
            ("raised/returned after our cancel", after_cancel or "none"),
            ("store hangs and late writes", hangs),
            ("jobs added during the run", adds),
            ("clock steps (instance 0)", steps),
            ("stops", stops),
            ("violations (must be 0)", f"{len(self.run_violations):,}"),
            ("event-loop lag", lag),
            ("excused for lag", excused),
            ("finished in the drain", f"{self.finished_in_drain:,}"),
            ("time", f"{self.elapsed:.2f}s event loop, {self.wall:.2f}s wall, {self.cpu:.2f}s CPU"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"  ANOMALY: {anomaly}" for anomaly in self.anomalies[:20]]
        lines += [f"  VIOLATION: {violation}" for violation in self.run_violations[:20]]
        lines += [f"  EXCUSED (lag): {excused}" for excused in self.excused_for_lag[:20]]
        for job_id, trace in self.traces.items():
            lines.append(f"  TRACE {job_id}:")
            lines += [f"    {line}" for line in trace.splitlines()]
        return "\n".join(lines)


CAUSES: tuple[Cause, ...] = ("retry", "interrupted", "lease expiry", "unexplained")

TRACED = 5
"""The table traces this many of the jobs that anomalies name."""


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
        self._tg: TaskGroup | None = None
        self.violations: list[str] = []
        """What the instances did that they must not: crash, stop unasked, overrun a stop's bound; failed adds."""
        self.stepped_clock = SteppedClock()
        self.lag = LagMonitor()
        self.added_late = round(config.jobs * config.added_during_run)
        self.adds: Counter[str] = Counter()

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
        for action, knob, _ in HANDLERS:
            p: float = getattr(c, knob)
            if draw < p:
                return action
            draw -= p
        return "ok"

    def handler_for(self, incarnation: Incarnation) -> Callable[[Job[Work]], Awaitable[None]]:
        async def handle(job: Job[Work]) -> None:
            await self._handle(incarnation, job)

        return handle

    async def _handle(self, incarnation: Incarnation, job: Job[Work]) -> None:
        """Run the drawn behaviour and record how the run ended (and, if we cancelled it, why)."""
        number = self.runs_of[job.id]
        self.runs_of[job.id] += 1
        action = self._decide(job, number)
        run = Run(job.id, job.lease, job.attempts, incarnation.name, action, chaos_clock(), began=anyio.current_time())
        self.runs.append(run)
        incarnation.running.add(run)
        if len(self.runs) >= self._wake_at:
            self._progress.set()
        # The scheduler's job-timeout deadline, exactly: a cancellation at or past it is the
        # timeout (elapsed time measured from here would fall short by the lines run before).
        deadline = anyio.current_effective_deadline()
        attempt = Attempt(
            self.config,
            self.backend,
            random.Random(f"{self.config.seed}/{job.id}/{number}/length"),
            lambda: self._die_of_poison(incarnation),
        )
        try:
            await BEHAVIOURS[action](attempt)
            run.kind = "completed"
        except anyio.get_cancelled_exc_class():
            foreign = attempt.foreign and not _cancel_requested()
            run.kind = "error" if foreign else _why_cancelled(incarnation, deadline)
            raise
        except BaseException as error:  # errors and groups, some with our cancellation inside
            run.kind = "retry" if isinstance(error, RetryJob) else "fail" if isinstance(error, FailJob) else "error"
            if _cancel_requested():
                run.kind, run.after_cancel = _why_cancelled(incarnation, deadline), "raised"
            raise
        else:
            if _cancel_requested():
                run.kind, run.after_cancel = _why_cancelled(incarnation, deadline), "swallowed"
        finally:
            run.end, run.ended = chaos_clock(), anyio.current_time()
            incarnation.running.discard(run)

    async def _die_of_poison(self, incarnation: Incarnation) -> None:
        if incarnation.drain:
            raise RuntimeError(POISON_OUTSIDE_CHAOS)
        self.actions["death by poison job"] += 1
        self.kill(incarnation)
        await anyio.sleep_forever()

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
            clock=self.stepped_clock if incarnation.slot == STEPPED_SLOT else chaos_clock,
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
            await self._live(incarnation)
            self.current[slot] = None
            if not self.stopping:
                await anyio.sleep(restart.uniform(0.0, self.config.restart_delay))

    async def _live(self, incarnation: Incarnation) -> None:
        """Run one incarnation; a crash, or a stop nobody asked for, is a violation (the run goes on)."""
        assert incarnation.scheduler is not None
        try:
            with incarnation.scope:
                await incarnation.scheduler.run()
        except BaseException as error:
            if _cancel_requested():  # the whole chaos run is being cancelled
                raise
            self.violations.append(f"{incarnation.name} crashed: {_describe(error)}")
        else:
            if not incarnation.stops:
                self.violations.append(f"{incarnation.name}: run() returned though nobody asked it to stop")
        finally:
            incarnation.stopped_at = anyio.current_time()
            incarnation.stopped.set()

    def _ask_stop(self, incarnation: Incarnation, how: Literal["cancel", "shutdown", "kill"]) -> None:
        """Record the request and its bound, and watch that the incarnation stops within it."""
        c, now = self.config, anyio.current_time()
        bound = c.shutdown_timeout + c.stop_margin
        if how == "shutdown":  # the handlers still running may take the rest of their job timeout
            bound += max((run.began + c.job_timeout - now for run in incarnation.running), default=0.0)
        request = StopRequest(how, now, max(bound, c.shutdown_timeout + c.stop_margin))
        incarnation.stops.append(request)
        if self._tg is not None and not incarnation.stopped.is_set():
            self._tg.start_soon(self._watch_stop, incarnation, request)

    async def _watch_stop(self, incarnation: Incarnation, request: StopRequest) -> None:
        with anyio.move_on_after(request.bound):
            await incarnation.stopped.wait()
        if incarnation.stopped.is_set():
            return
        if request.how == "shutdown" and not (incarnation.cancelling or incarnation.dead):
            self._cancel(incarnation)  # escalate, so the run goes on (_stop_violations reports the overrun)

    def _cancel(self, incarnation: Incarnation) -> None:
        incarnation.cancelling = True
        self._ask_stop(incarnation, "cancel")
        incarnation.scope.cancel()

    def kill(self, incarnation: Incarnation) -> None:
        """A process death: nothing the incarnation sends reaches the store any more; its tasks are torn down."""
        incarnation.dead = True
        incarnation.process.dead = True
        self._ask_stop(incarnation, "kill")
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
            with anyio.move_on_after(c.stall_after):  # every instance may be stuck on a hung store call
                await self._progress.wait()
            if self.stopping or self.chaos_done.is_set():
                return
            await anyio.sleep(rng.uniform(0.0, 0.005))  # a random moment
            alive = [incarnation for incarnation in self.current if incarnation is not None and incarnation.alive]
            if not alive:
                continue
            stuck = [incarnation for incarnation in alive if incarnation.process.hung]
            incarnation = rng.choice(stuck if stuck and rng.random() < 0.7 else alive)
            # Each kind once first (so a short run sees all three), then at random by weight.
            action = first.pop() if first else rng.choices(ACTIONS, weights=c.action_weights)[0]
            self.actions[action] += 1
            if action == "cancel":
                self._cancel(incarnation)
            elif action == "shutdown":
                incarnation.graceful = True
                self._ask_stop(incarnation, "shutdown")
                assert incarnation.scheduler is not None
                incarnation.scheduler.shutdown()
            else:
                self.kill(incarnation)

    async def _step_clock(self) -> None:
        """Step instance 0's wall clock forward, back to true, back, to true, ... by ``clock_step`` leases."""
        c = self.config
        if c.clock_step_interval <= 0 or c.instances <= STEPPED_SLOT:
            return
        rng = random.Random(f"{c.seed}/clock")
        step = c.clock_step * c.visibility_timeout
        for offset in itertools.cycle((step, 0.0, -step, 0.0)):
            await anyio.sleep(rng.uniform(c.clock_step_interval / 2, c.clock_step_interval * 1.5))
            if self.stopping or self.chaos_done.is_set():
                return
            self.stepped_clock.step(offset)

    async def _produce(self) -> None:
        """Add the last jobs during the run, in batches as the first ones finish, through
        ``Scheduler.add_job`` on a flaky process whose add_job replies are often lost after the insert."""
        c = self.config
        late = self.ids[len(self.ids) - self.added_late :]
        if not late:
            return
        producer = Scheduler(Process(self.store, "producer"), _never_called, store_backoff=c.store_backoff)
        batches = min(20, len(late))
        early = len(self.ids) - len(late)
        for i in range(batches):
            while len(self.finished_ids) < early * 0.7 * i / batches and not self.stopping:  # noqa: ASYNC110
                await anyio.sleep(c.fetch_interval)  # a poll is simplest: jobs finish in many places
            for job_id in late[i::batches]:
                n = int(job_id.rsplit("-", 1)[1])
                self.adds["added during the run"] += 1
                try:
                    await producer.add_job(Job.create(Work(n), id=job_id, process_after=chaos_clock()))
                except Exception as error:
                    self.adds["adds that raised"] += 1
                    self.violations.append(f"{job_id}: Scheduler.add_job raised {_describe(error)}")

    def _stop_all(self) -> None:
        self.stopping = True
        self._progress.set()
        self.stepped_clock.step(0.0)
        for incarnation in self.current:
            if incarnation is not None and not incarnation.dead and not incarnation.cancelling:
                self._cancel(incarnation)

    async def _drain(self) -> None:
        """One clean scheduler on a non-flaky proxy until every job has finished."""
        process = Process(self.store, "drain", flaky=False)
        incarnation = Incarnation(-1, 1, process, drain=True)
        incarnation.scheduler = self._scheduler(incarnation)
        self.incarnations.append(incarnation)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._live, incarnation)
            with anyio.move_on_after(self.config.drain_timeout):
                while not (self.finished.is_set() or incarnation.stopped.is_set()):
                    with anyio.move_on_after(0.1):  # or the drain's scheduler crashed
                        await self.finished.wait()
            if self.finished.is_set():
                incarnation.graceful = True
                self._ask_stop(incarnation, "shutdown")
                incarnation.scheduler.shutdown()
            else:
                unfinished = len(self.ids) - len(self.finished_ids)
                self.violations.append(f"the drain ended with {unfinished} job(s) unfinished")
                self._cancel(incarnation)

    async def run(self) -> ChaosResult:
        wall, cpu, began = time.perf_counter(), time.process_time(), anyio.current_time()
        now = chaos_clock()
        for n, job_id in enumerate(self.ids[: len(self.ids) - self.added_late]):
            await self.inner.add_job(Job.create(Work(n), id=job_id, process_after=now))
            self.store.inserted[job_id] += 1
        async with anyio.create_task_group() as background:  # late writes land from here
            self.store.background = background
            background.start_soon(self.lag.run)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for slot in range(self.config.instances):
                    tg.start_soon(self._instance, slot)
                tg.start_soon(self._control)
                tg.start_soon(self._step_clock)
                tg.start_soon(self._produce)
                with anyio.move_on_after(self.config.chaos_timeout):
                    await self.chaos_done.wait()
                self._stop_all()
            self._tg = None
            finished_in_chaos = len(self.finished_ids)
            await anyio.sleep(self.config.visibility_timeout * 1.05)  # every lease left behind has expired
            await self._drain()
            self.lag.stop()
        self.store.background = None
        final = await _final_jobs(self.inner, self.ids)
        return self._check(
            final,
            finished_in_drain=len(self.finished_ids) - finished_in_chaos,
            elapsed=anyio.current_time() - began,
            wall=time.perf_counter() - wall,
            cpu=time.process_time() - cpu,
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
                how = ", landed late" if write.late else ", reply lost" if write.reply_lost else ""
                lines.append(
                    f"  write #{write.end_seq} {write.kind} at {write.at:%H:%M:%S.%f}: {write.status}, "
                    f"attempts {write.attempts}{until}{how}"
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
        self, final: dict[str, Job[Work] | None], *, finished_in_drain: int, elapsed: float, wall: float, cpu: float
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
            claims[:] = _in_server_order(job_id, claims)  # in place: _cause and trace read this order too
            for previous, claim in itertools.pairwise(claims):
                anomalies += _succession_anomalies(job_id, previous, claim)

        anomalies += self._writes_after_outcome()
        grace = timedelta(seconds=self.config.visibility_timeout)
        """How long past its lease a handler may take to notice and end."""
        extra: Counter[Cause] = Counter()
        overlaps = 0
        long_runs_renewed = 0
        dropped = 0
        timed_out_in_doubt = 0
        lease = timedelta(seconds=self.config.visibility_timeout)
        for job_id, runs in runs_by_job.items():
            claims = self.store.claims.get(job_id, [])
            for run in runs:
                held = self.store.by_lease.get((job_id, run.lease or ""))
                if held is None:
                    anomalies.append(f"{job_id}: a run under lease {run.lease} the store never handed out")
                    continue
                problem = _inconsistency(run, held, killed=killed_in.get(run.incarnation, False), lease=lease)
                if problem == DROPPED:
                    dropped += 1
                elif problem == TIMED_OUT_IN_DOUBT:
                    timed_out_in_doubt += 1
                elif problem:
                    anomalies.append(f"{job_id}: {problem}")
                if run.action == "long" and run.kind == "completed" and any(w.kind == "renew" for w in held.writes):
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
                    elif earlier.end is None or earlier.end > first.lease_end() + grace:
                        overlaps += 1
                        anomalies.append(
                            f"{job_id}: run on {earlier.lease} ({earlier.incarnation}) went on past its lease's end "
                            f"while {later.lease} held the job (two holders)"
                        )

        runs_per_job: Counter[int] = Counter(len(runs_by_job.get(job_id, [])) for job_id in self.ids)
        step_violations, steps_excused = self._step_verdicts()
        named = dict.fromkeys(a.split(":", 1)[0] for a in anomalies if a.startswith("chaos-"))
        traces = {job_id: self.trace(job_id) for job_id in list(named)[:TRACED]}
        stop_violations, stops_excused = self._stop_verdicts()
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
            timed_out_in_doubt=timed_out_in_doubt,
            finished_in_drain=finished_in_drain,
            elapsed=elapsed,
            wall=wall,
            cpu=cpu,
            behaviours=Counter(run.action for run in self.runs),
            after_cancel=Counter(f"{run.after_cancel} ({run.kind})" for run in self.runs if run.after_cancel),
            adds=self.adds + Counter({"added twice or more": self._added_twice()}),
            stops=self._stop_figures(),
            clock_steps=len(self.stepped_clock.steps),
            lost_after_steps=self._lost_after_steps(),
            run_violations=self.violations + stop_violations + self._add_violations() + step_violations,
            excused_for_lag=steps_excused + stops_excused,
            traces=traces,
            lag_excused=Counter(
                {"clock step lost-lease rule": len(steps_excused), "stop bound rule": len(stops_excused)}
            ),
            loop_lag=(self.lag.max_late(), self.lag.lag(-math.inf, math.inf), self.lag.ticks),
        )

    def _writes_after_outcome(self) -> list[str]:
        """A write accepted under a lease after that lease's outcome (or release) was: the fence let it in."""
        found: list[str] = []
        for claims in self.store.claims.values():
            for claim in claims:
                ends = [w for w in claim.writes if w.kind != "renew"]
                if ends:
                    after = [w for w in claim.writes if w.start_seq > ends[0].end_seq]
                    found += [
                        f"{claim.job_id}: {'late ' if w.late else ''}{w.kind} accepted under lease {claim.lease} "
                        f"after its {ends[0].kind}"
                        for w in after
                    ]
        return found

    def _added_twice(self) -> int:
        return sum(1 for job_id in self.ids if self.store.inserted[job_id] > 1)

    def _add_violations(self) -> list[str]:
        return [f"{job_id}: inserted {n} times" for job_id in self.ids if (n := self.store.inserted[job_id]) != 1]

    def _stop_figures(self) -> Counter[str]:
        """Stops by kind, how many overran their bound, and the longest (ms) and the tightest bound (ms) of each."""
        figures: Counter[str] = Counter()
        for incarnation in self.incarnations:
            if not incarnation.stops or incarnation.stopped_at is None:
                continue
            first = incarnation.stops[0]
            took = incarnation.stopped_at - first.at
            figures[f"{first.how}s"] += 1
            figures[f"{first.how}s over bound"] += took > first.bound
            figures[f"longest {first.how} ms"] = max(figures[f"longest {first.how} ms"], round(took * 1000))
        return figures

    def _stop_verdicts(self) -> tuple[list[str], list[str]]:
        """Every stop request that the incarnation outlived by more than its bound: (violations, those
        excused because the event loop lost at least the overrun to lag during the stop)."""
        found: list[str] = []
        excused: list[str] = []
        for incarnation in self.incarnations:
            end = incarnation.stopped_at
            for request in incarnation.stops:
                took = math.inf if end is None else end - request.at
                if took > request.bound:
                    lag = 0.0 if end is None else self.lag.lag(request.at, end)
                    what = (
                        f"{incarnation.name}: {request.how} took {took:.2f}s, over its bound of {request.bound:.2f}s "
                        f"(event loop {lag:.2f}s late meanwhile)"
                    )
                    (excused if took - request.bound <= lag else found).append(what)
        return found, excused

    def _stepped_runs_at(self, moment: float) -> list[Run]:
        """The stepped instance's runs going on at event-loop time ``moment``."""
        prefix = f"i{STEPPED_SLOT}."
        return [
            run
            for run in self.runs
            if run.incarnation.startswith(prefix) and run.began <= moment and (run.ended is None or run.ended > moment)
        ]

    def _lost_after_step(self, at: float) -> tuple[int, int]:
        """(handlers cancelled for a lost lease within one lease after the step at ``at``, handlers at risk):
        at risk are those running at the step and still running a third of a lease later, or lost."""
        vt = self.config.visibility_timeout
        running = self._stepped_runs_at(at)
        lost = [r for r in running if r.kind == "lost" and r.ended is not None and r.ended <= at + vt]
        lost = [r for r in lost if not self._renewal_hung(r)]  # lost to the store, not to the step
        at_risk = [r for r in running if r in lost or r.ended is None or r.ended > at + vt / 3]
        return len(lost), len(at_risk)

    def _renewal_hung(self, run: Run) -> bool:
        claim = self.store.by_lease.get((run.job_id, run.lease or ""))
        return claim is not None and claim.renewal_hung

    def _lost_after_steps(self) -> tuple[int, int]:
        pairs = [self._lost_after_step(at) for at, _ in self.stepped_clock.steps]
        return sum(lost for lost, _ in pairs), sum(at_risk for _, at_risk in pairs)

    def _step_verdicts(self) -> tuple[list[str], list[str]]:
        """The rule "a clock step must not cancel (nearly) every running handler of the stepped
        instance for a lost lease": (violations, cases excused because the event loop stalled for
        more than ``LAG_EXCUSE`` of a lease within a lease of the step, which alone loses renewals)."""
        vt = self.config.visibility_timeout
        found: list[str] = []
        excused: list[str] = []
        for at, offset in self.stepped_clock.steps:
            lost, at_risk = self._lost_after_step(at)
            if lost >= 2 and 2 * lost >= at_risk:
                lag = self.lag.longest(at - vt, at + vt)
                what = (
                    f"clock step to {offset:+.2f}s at {at:.2f}s: {lost} of {at_risk} running handlers on "
                    f"i{STEPPED_SLOT} cancelled for a lost lease"
                )
                stall = f"{what} (longest event-loop stall within a lease of it: {lag * 1000:.0f} ms)"
                (excused if lag > LAG_EXCUSE * vt else found).append(stall)
        return found, excused

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


AFTER_CANCEL_FITS: dict[str | None, frozenset[Ending]] = {
    "raised": frozenset({"retry", "failed", "release"}),
    "swallowed": frozenset({"completed", "retry", "failed", "release"}),
}
"""A handler that raised something else, or returned, after we cancelled it: the scheduler may record
that as the attempt's outcome, or as the interruption it caused."""


def _succession_anomalies(job_id: str, previous: Claim, claim: Claim) -> list[str]:
    """What is wrong with ``claim`` taking the job over from ``previous``, if the store made them in that order."""
    found: list[str] = []
    late = [w for w in previous.writes if w.start_seq > claim.end_seq]
    if late:
        found.append(f"{job_id}: {len(late)} write(s) accepted under lease {previous.lease} after it was superseded")
    ending = previous.ending(before_seq=claim.end_seq)
    if ending in ("completed", "failed"):
        found.append(f"{job_id}: claimed again after it was {ending} (lease {claim.lease})")
    elif ending == "expired" and claim.now < previous.lease_end(before_seq=claim.end_seq):
        found.append(
            f"{job_id}: claimed at {claim.now} while lease {previous.lease} held until "
            f"{previous.lease_end(before_seq=claim.end_seq)}"
        )
    return found


def _in_server_order(job_id: str, claims: list[Claim]) -> list[Claim]:
    """A job's claims in the order the store made them, as far as the record can tell.

    Claims are recorded when their ``fetch_pending_jobs`` returns, and a store may claim in
    rounds: ``MongoStore``'s batch claim makes up to three find and ``update_many`` rounds, each
    at the call's one ``now``, seconds apart on a loaded machine. A call that began first and
    claimed a job in an early round can then return after a call that began later and claimed
    the same job, legitimately, once the first lease had ended: recorded second, claimed first.

    So two neighbours whose calls overlapped (the later-recorded one began before the other
    returned: the store may have made either claim first) are swapped when the recorded order
    breaks the lease rules and the swapped order keeps them. A pair that no order explains
    stays as recorded, and is reported.
    """
    ordered = list(claims)
    for _ in range(len(ordered)):
        swapped = False
        for i in range(len(ordered) - 1):
            first, second = ordered[i], ordered[i + 1]
            overlapped = second.start_seq < first.end_seq
            if (
                overlapped
                and _succession_anomalies(job_id, first, second)
                and not _succession_anomalies(job_id, second, first)
            ):
                ordered[i], ordered[i + 1] = second, first
                swapped = True
        if not swapped:
            break
    return ordered


DROPPED = "dropped"
TIMED_OUT_IN_DOUBT = "timed out in doubt"


def _inconsistency(run: Run, claim: Claim, *, killed: bool, lease: timedelta) -> str | None:
    """Why the store's record of ``run``'s lease does not fit how the handler ended, if it does not."""
    ending = claim.ending()
    if ending == "expired":  # nothing written: only a death or a lost lease explains that
        if killed or run.kind == "lost":
            return None
        end = run.end or run.start
        if claim.renewing_at(end) or end >= claim.lease_end() or any(at >= end for at in claim.outcome_attempts):
            return DROPPED  # a renewal that gave up, a lease gone before the result, or a write that never landed
        if run.kind == "timeout" and end >= claim.holder_lease_end(end, lease):
            return TIMED_OUT_IN_DOUBT  # cut off at its timeout as its holder's lease ran out: in doubt, no outcome
        return f"run {run.kind} under {run.lease} on live {run.incarnation}, but nothing was written"
    if run.kind in ENDING_FITS[ending] or ending in AFTER_CANCEL_FITS.get(run.after_cancel, frozenset[Ending]()):
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


FAULT_KNOBS = (
    "p_foreign_cancel",
    "p_group",
    "p_group_with_cancel",
    "p_error_in_cancel",
    "p_swallow_cancel",
    "p_hang",
    "p_renew_hang",
    "p_claim_cancelled",
    "p_late_landing",
    "p_add_lost_reply",
    "added_during_run",
    "clock_step",
    "clock_step_interval",
)
"""The knobs of the faults beyond store failures and process deaths, each a --option (see ChaosConfig)."""


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
    for knob in FAULT_KNOBS:
        parser.add_argument(
            f"--{knob.replace('_', '-')}", type=float, default=getattr(defaults, knob), help="(default: %(default)s)"
        )
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
            **{knob: getattr(args, knob) for knob in FAULT_KNOBS},
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
