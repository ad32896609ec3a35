"""The flaky store: one shared store behind a recorder that injects failures, delays, hangs and late
writes, reached through one :class:`Process` per scheduler incarnation (which can die)."""

from __future__ import annotations

import inspect
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from anysched import Job, JobNotFoundError, JobStatus, JobStore, LeaseLostError, MemoryStore, TransientStoreError

from .clock import chaos_clock
from .config import ChaosConfig
from .records import Claim, Write, write_kind
from .workload import Work

R = TypeVar("R")

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
            odds.append(("lost reply", c.fail_rate / 2))
            odds.append(("hang", c.p_renew_hang if renewal else c.p_hang))
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


async def final_jobs(store: JobStore[Work], ids: list[str]) -> dict[str, Job[Work] | None]:
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
