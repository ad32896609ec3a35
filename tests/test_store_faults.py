"""Stores that hang, answer late, lose replies or fail for good: nothing is lost, every stop is bounded.

- a write abandoned by the scheduler that lands after the job's outcome is refused by the fence;
- a graceful shutdown returns within ``shutdown_timeout`` (plus the handlers' own time) while
  the store hangs or keeps failing, and the log names the jobs it could not write;
- a hand-back that raises neither skips the other jobs nor keeps ``wait_stopped()`` waiting;
- an ``add_job`` whose reply was lost succeeds on retry;
- after the store refuses a renewal, no outcome is even attempted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
import pytest

from anysched import (
    DuplicateJobError,
    Job,
    JobStatus,
    LeaseLostError,
    MemoryStore,
    Scheduler,
    TransientStoreError,
    open_scheduler,
)
from support import FAST_RETRY, Recorder, add_jobs, peek, until

pytestmark = pytest.mark.anyio

T = TypeVar("T")
Clock = Callable[[], datetime]


class FaultyStore(Generic[T]):
    """A MemoryStore behind switches: hang an operation, fail it, or apply a write late.

    - ``hang``: operations that block until cancelled;
    - ``fail``: operations that raise ``TransientStoreError`` (before reaching the store);
    - ``broken``: operations that raise a permanent ``RuntimeError``;
    - ``late_renewals``: a renewal is abandoned by its caller but applied when ``land`` is set,
      as a sync driver's worker thread does; what the store answered it is in ``landed``.
    """

    def __init__(self) -> None:
        self.inner = MemoryStore[T]()
        self.hang: set[str] = set()
        self.fail: set[str] = set()
        self.broken: set[str] = set()
        self.updates: list[Job[T]] = []
        self.late_renewals: anyio.abc.TaskGroup | None = None
        self.land = anyio.Event()
        self.landed: list[str] = []
        self.hanging = anyio.Event()
        self.lose_add_reply = False

    async def _enter(self, operation: str) -> None:
        if operation in self.hang:
            self.hanging.set()
            await anyio.sleep_forever()
        if operation in self.fail:
            raise TransientStoreError(f"{operation} failed")
        if operation in self.broken:
            raise RuntimeError(f"{operation} is broken")

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[T]]:
        await self._enter("fetch_pending_jobs")
        return await self.inner.fetch_pending_jobs(now, limit, visibility_timeout)

    async def update_job(self, job: Job[T]) -> None:
        renewal = job.status is JobStatus.PENDING and job.visible_after is not None
        await self._enter("renew" if renewal else "update_job")
        self.updates.append(job)
        if renewal and self.late_renewals is not None:
            self.late_renewals.start_soon(self._land_late, job)
            await anyio.sleep_forever()  # the caller gives up; the write goes on without it
        await self.inner.update_job(job)

    async def _land_late(self, job: Job[T]) -> None:
        await self.land.wait()
        try:
            await self.inner.update_job(job)
        except LeaseLostError:
            self.landed.append("refused")
        else:
            self.landed.append("applied")

    # inspection (anysched.InspectsJobs), straight through: the scheduler reads a job back with it

    async def get_job(self, job_id: str) -> Job[T]:
        return await self.inner.get_job(job_id)

    async def count(self, status: JobStatus | None = None) -> int:
        return await self.inner.count(status)

    async def list_jobs(
        self, status: JobStatus | None = None, *, limit: int = 100, after: str | None = None
    ) -> list[Job[T]]:
        return await self.inner.list_jobs(status, limit=limit, after=after)

    async def purge(self, *, completed_before: datetime) -> int:
        return await self.inner.purge(completed_before=completed_before)

    async def add_job(self, job: Job[T]) -> None:
        await self._enter("add_job")
        await self.inner.add_job(job)
        if self.lose_add_reply:
            self.lose_add_reply = False
            raise TransientStoreError("the insert landed; its reply was lost")


async def test_a_renewal_that_lands_after_the_outcome_is_refused(clock: Clock) -> None:
    """The review's most severe defect: a completed job came back and ran twice."""
    store = FaultyStore[int]()
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    [job] = await add_jobs(store.inner, 1, due=clock())
    with anyio.fail_after(30):
        async with anyio.create_task_group() as background:
            store.late_renewals = background
            # A lease long enough that the handler ends well before it would be cut off for a renewal
            # left unanswered: the renewal is abandoned because the handler finished, as in the review.
            async with open_scheduler(
                store, handler, clock=clock, visibility_timeout=3, store_backoff=FAST_RETRY, fetch_interval=0.05
            ):
                await handler.wait_running(1)
                await until(lambda: bool(store.updates))  # a renewal went out and hangs
                store.late_renewals = None
                handler.gate.set()
                await handler.wait_finished(1)
                await until(lambda: peek(store.inner, job.id).status is not JobStatus.PENDING)
                store.land.set()  # now the abandoned renewal lands
                await until(lambda: not (len(store.landed) < 1))
                await anyio.sleep(0.2)  # a fetch or two: nothing may claim the job again
    assert store.landed[0] == "refused"
    assert (await store.inner.get_job(job.id)).status is JobStatus.COMPLETED
    assert handler.runs[job.id] == 1


@pytest.mark.parametrize("operation", ["fetch_pending_jobs", "fail fetch_pending_jobs"])
async def test_graceful_shutdown_while_the_claim_hangs_or_keeps_failing(operation: str, clock: Clock) -> None:
    store = FaultyStore[int]()
    handler = Recorder[int]()
    with anyio.fail_after(30):
        async with open_scheduler(
            store, handler, clock=clock, shutdown_timeout=2, store_backoff=FAST_RETRY, fetch_interval=0.05
        ) as scheduler:
            if operation.startswith("fail"):
                store.fail.add("fetch_pending_jobs")
                await anyio.sleep(0.2)  # the fetcher is in its retry loop by now
            else:
                store.hang.add("fetch_pending_jobs")
                await store.hanging.wait()
            begin = anyio.current_time()
            scheduler.shutdown()
        assert anyio.current_time() - begin < 2.5  # the claim in flight gets shutdown_timeout at most


@pytest.mark.parametrize("fault", ["hang", "fail"])
async def test_graceful_shutdown_is_bounded_while_outcome_writes_hang_or_fail(
    fault: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyStore[int]()
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    jobs = await add_jobs(store.inner, 2, due=clock())
    with anyio.fail_after(30):
        async with open_scheduler(
            store, handler, workers=2, clock=clock, shutdown_timeout=2, store_backoff=FAST_RETRY
        ) as scheduler:
            await handler.wait_running(2)
            (store.hang if fault == "hang" else store.fail).add("update_job")
            scheduler.shutdown()
            begin = anyio.current_time()
            handler.gate.set()
        stopped_in = anyio.current_time() - begin
    assert 1.5 < stopped_in < 3  # the outcome writes gave up at shutdown_timeout, not before, not never
    for job in jobs:
        assert f"job {job.id} on worker" in caplog.text
    assert "outcome not recorded within shutdown_timeout" in caplog.text
    assert all(job.status is JobStatus.PENDING and job.visible_after is not None for job in store.inner.jobs())


async def test_handing_back_buffered_jobs_is_bounded_while_the_store_hangs(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyStore[int]()
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    await add_jobs(store.inner, 5, due=clock())
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=1, buffer_size=4, clock=clock, shutdown_timeout=2) as s:
            await handler.wait_running(1)
            while s.statistics().buffered < 4:
                await anyio.lowlevel.checkpoint()
            store.hang.add("update_job")
            begin = anyio.current_time()
            s.shutdown(cancel_running=True)
        assert anyio.current_time() - begin < 5  # two bounded hand-backs (buffer, running job) at most
    assert "not handed back within shutdown_timeout" in caplog.text


async def test_a_hand_back_that_raises_tries_the_others_and_stops(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """The review's case: a raise in run()'s clean-up left wait_stopped() waiting forever."""
    store = FaultyStore[int]()
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    await add_jobs(store.inner, 5, due=clock())
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=1, buffer_size=4, clock=clock) as scheduler:
            await handler.wait_running(1)
            while scheduler.statistics().buffered < 4:
                await anyio.lowlevel.checkpoint()
            store.broken.add("update_job")
            scheduler.shutdown()
            handler.gate.set()
        await scheduler.wait_stopped()
    assert caplog.text.count("could not hand it back") == 4  # every buffered job was tried
    assert "outcome not recorded" in caplog.text  # the running job's write failed too: logged, not raised
    assert scheduler.statistics().held == 0


async def test_an_add_whose_reply_was_lost_succeeds_on_retry(clock: Clock) -> None:
    store = FaultyStore[int]()
    handler = Recorder[int]()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, clock=clock, store_backoff=FAST_RETRY) as scheduler:
            store.lose_add_reply = True
            await scheduler.add_job(Job.create(1, id="once", process_after=clock()))
            await handler.wait_finished(1)
            # A real duplicate still is one, and so is a retry that finds another job under the id.
            with pytest.raises(DuplicateJobError):
                await scheduler.add_job(Job.create(1, id="once", process_after=clock()))
            await store.add_job(Job.create(2, id="taken", process_after=clock() + timedelta(hours=1)))
            other = Job.create(3, id="taken", process_after=clock())
            store.fail.add("add_job")

            async def recover() -> None:
                await anyio.sleep(0.05)
                store.fail.discard("add_job")

            async with anyio.create_task_group() as tg:
                tg.start_soon(recover)
                with pytest.raises(DuplicateJobError):
                    await scheduler.add_job(other)
    assert [job.id for job in store.inner.jobs()] == ["once", "taken"]
    assert handler.runs["once"] == 1


class _PostponedBeforeTheRetry(MemoryStore[int]):
    """Loses the reply of the first insert, after another scheduler has claimed the job and its
    handler postponed it (``RetryJob``: the attempt given back, due later)."""

    lost = False

    async def add_job(self, job: Job[int]) -> None:
        await super().add_job(job)
        if not self.lost:
            self.lost = True
            [claimed] = await self.fetch_pending_jobs(job.process_after, 1, timedelta(seconds=30))
            later = job.process_after + timedelta(minutes=5)
            await self.update_job(replace(claimed, attempts=0, process_after=later, visible_after=None, last_error="x"))
            raise TransientStoreError("the insert landed; its reply was lost")


async def test_a_lost_add_reply_is_recognised_after_the_job_was_postponed(clock: Clock) -> None:
    """Found by the chaos run: a postponement gives the attempt back and moves the due time, so
    the job read back had neither the same due time nor an attempt, and the retry's duplicate stood."""
    store = _PostponedBeforeTheRetry()
    scheduler = Scheduler(store, Recorder[int](), clock=clock, store_backoff=FAST_RETRY)
    with anyio.fail_after(30):
        await scheduler.add_job(Job.create(1, id="mine", process_after=clock()))
    assert store.lost
    assert (await store.get_job("mine")).last_error == "x"


async def test_no_outcome_is_attempted_after_the_store_refused_a_renewal(clock: Clock) -> None:
    """Fencing would hide such a write in the stored state: the write must not even be tried."""
    store = FaultyStore[int]()
    started = anyio.Event()

    async def stubborn(job: Job[int]) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            return  # swallows the cancellation and returns as if it had succeeded

    [job] = await add_jobs(store.inner, 1, due=clock())
    with anyio.fail_after(30):
        async with open_scheduler(
            store, stubborn, clock=clock, visibility_timeout=0.3, store_backoff=FAST_RETRY
        ) as scheduler:
            await started.wait()
            await store.inner.fetch_pending_jobs(clock() + timedelta(hours=1), 1, timedelta(hours=2))  # a thief
            await until(lambda: not (scheduler.statistics().running))
    assert store.updates  # the refused renewal
    assert all(update.status is JobStatus.PENDING and update.visible_after is not None for update in store.updates)
    assert (await store.inner.get_job(job.id)).status is JobStatus.PENDING


async def test_a_job_whose_lease_is_lost_in_the_buffer_is_counted_once(clock: Clock) -> None:
    """A job dropped before it started leaves the scheduler's count of held jobs exactly once."""
    store = FaultyStore[int]()
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    jobs = await add_jobs(store.inner, 2, due=clock())
    with anyio.fail_after(30):
        async with open_scheduler(
            store, handler, workers=1, buffer_size=1, clock=clock, visibility_timeout=0.3, store_backoff=FAST_RETRY
        ) as scheduler:
            await handler.wait_running(1)
            assert scheduler.statistics().held == 2
            waiting = await store.inner.get_job(jobs[1].id)
            stolen = replace(waiting, visible_after=clock() + timedelta(hours=1), lease="thief")
            store.inner._jobs[waiting.id] = stolen  # pyright: ignore[reportPrivateUsage]  # claimed elsewhere meanwhile
            await anyio.sleep(0.2)  # over a third of its lease waited in the buffer
            handler.gate.set()
            await handler.wait_finished(1)
            await until(lambda: not (scheduler.statistics().held))
            assert scheduler.statistics() == type(scheduler.statistics())(0, 0, 0, 0)
    assert handler.runs == {jobs[0].id: 1}


async def test_a_handler_that_never_awaits_lets_others_run_between_jobs(clock: Clock) -> None:
    """One worker and a deep buffer: receive_nowait never yields, so only the per-job checkpoint does."""
    store = MemoryStore[int]()
    done: list[int] = []

    async def busy(job: Job[int]) -> None:
        done.append(job.payload)  # never awaits

    await add_jobs(store, 50, due=clock())
    seen: list[int] = []
    with anyio.fail_after(30):
        async with open_scheduler(store, busy, workers=1, buffer_size=60, clock=clock):
            while len(done) < 50:
                seen.append(len(done))
                await anyio.lowlevel.checkpoint()
    assert any(0 < count < 50 for count in seen)  # this task ran while the worker went through the buffer


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anysched")
