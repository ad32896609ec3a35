"""The scheduler: one fetcher, N workers and a lease keeper in one anyio task group."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._exceptions import FailJob, JobNotFoundError, JobTimeoutError, LeaseLostError, RetryJob, decisive, describe
from ._job import Job, JobStatus
from ._retry import Backoff, RetryPolicy, call_store
from ._store import JobStore, KnowsNextDueTime
from ._time import Seconds, require_utc, to_seconds, utc_now

T = TypeVar("T")

Handler = Callable[[Job[T]], Awaitable[object]]
"""``async def handler(job: Job[T]) -> None``: returning completes the job, raising fails it
(retried while the retry policy allows; :class:`RetryJob` and :class:`FailJob` decide for it)."""

logger = logging.getLogger("anysched")

RENEW_WHEN_REMAINING = 2 / 3
"""Renew a running job's lease once a third of the visibility timeout has passed, so two
renewals can fail before the lease runs out."""

DEFAULT_RETRY = RetryPolicy()
"""The backoff for a job that sets its own ``max_attempts`` on a scheduler without a policy."""


@dataclass(eq=False)
class _Running(Generic[T]):
    """A job whose handler is running, as the lease keeper sees it."""

    job: Job[T]
    worker: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    renewing: anyio.Event | None = None
    finished: bool = False
    lost: bool = False
    """The store refused a renewal: someone else may own the job, so its outcome is not written."""


class Scheduler(Generic[T]):
    """Leases due jobs from a store and runs them on ``workers`` concurrent handler calls.

    Use :func:`open_scheduler` to run one for the length of an ``async with`` block, or
    ``await task_group.start(scheduler.run)`` to embed it in a task group of your own.
    Every option is keyword-only and checked here: a bad value raises ``ValueError`` or
    ``TypeError`` naming the option.

    :param store: where jobs live (any :class:`~anysched.JobStore`)
    :param handler: ``async def handler(job) -> None``; returning completes the job,
        raising an exception fails the attempt (``last_error`` says why)
    :param workers: how many handlers may run at once
    :param fetch_interval: how long to sleep when no job is due (at most; less when the
        store knows its next due time or a job is added through this scheduler)
    :param visibility_timeout: how long a lease lasts; running jobs renew theirs, so this
        only matters when a process dies
    :param shutdown_timeout: the bound on the shielded clean-up that hands leased jobs back
        on shutdown or cancellation
    :param buffer_size: how many leased jobs may wait for a free worker (default: ``workers``)
    :param store_backoff: the backoff between retries of a failed store call
    :param retry: how failed jobs are retried (attempts and backoff). ``None``, the default,
        is go-sched's behaviour: a failed job stays failed, and a job whose process died
        runs again when its lease expires, however often. A job's own ``max_attempts``
        overrides the policy's.
    :param job_timeout: how long a handler may run before it is cancelled and the attempt
        fails with :class:`JobTimeoutError` (``None``: no limit). A job's own ``timeout``
        overrides it. It may exceed ``visibility_timeout``: leases are renewed.
    :param clock: returns the current time (timezone-aware); tests pass one that follows
        the event loop's clock
    """

    def __init__(
        self,
        store: JobStore[T],
        handler: Handler[T],
        *,
        workers: int = 10,
        fetch_interval: Seconds = 1.0,
        visibility_timeout: Seconds = 30.0,
        shutdown_timeout: Seconds = 10.0,
        buffer_size: int | None = None,
        store_backoff: Backoff = Backoff(),  # noqa: B008 -- immutable
        retry: RetryPolicy | None = None,
        job_timeout: Seconds | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        _check_store(store)
        _check_handler(handler)
        self._store = store
        self._handler = handler
        self._workers = _check_count("workers", workers, minimum=1)
        self._buffer_size = workers if buffer_size is None else _check_count("buffer_size", buffer_size, minimum=0)
        self._fetch_interval = to_seconds("fetch_interval", fetch_interval)
        self._visibility_timeout = timedelta(seconds=to_seconds("visibility_timeout", visibility_timeout))
        self._shutdown_timeout = to_seconds("shutdown_timeout", shutdown_timeout)
        if not isinstance(store_backoff, Backoff):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"store_backoff must be an anysched.Backoff, not {type(store_backoff).__name__}")
        self._backoff = store_backoff
        _check_lease_can_be_renewed(self._visibility_timeout, store_backoff)
        if retry is not None and not isinstance(retry, RetryPolicy):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"retry must be an anysched.RetryPolicy or None, not {type(retry).__name__}")
        self._retry = retry
        self._job_timeout = None if job_timeout is None else to_seconds("job_timeout", job_timeout)
        if not callable(clock):
            raise TypeError("clock must be a callable returning a timezone-aware datetime")
        self._clock = clock
        self._next_due_time = store.next_due_time if isinstance(store, KnowsNextDueTime) else None
        self._running: set[_Running[T]] = set()
        self._stopping = False
        self._started = False
        self._waiting_for_space = False
        self._held = 0
        """Jobs leased and not yet finished: buffered or running. Never more than
        workers + buffer_size; the fetcher leases exactly the difference. Counted here rather
        than read off the stream, whose statistics miss a job handed to a worker that has not
        resumed yet."""
        self._nudge: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None

    # -- public API ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[Scheduler[T]] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`shutdown` (or cancellation), then hand unstarted leased jobs back.

        Reports itself started (``await task_group.start(scheduler.run)`` returns the
        scheduler) once its tasks are running. A scheduler runs once.
        """
        if self._started:
            raise RuntimeError("this scheduler has already been started; create a new one")
        self._started = True
        self._nudge, self._stopped = anyio.Event(), anyio.Event()
        # Room for every job the scheduler may hold, so send_nowait never blocks.
        send, receive = anyio.create_memory_object_stream[Job[T]](self._workers + self._buffer_size)
        try:
            with anyio.CancelScope() as self._scope:
                await self._run_tasks(send, receive, task_status)
        finally:
            await self._release_buffered(receive)
            receive.close()
            self._stopped.set()
            logger.info("scheduler stopped")

    def shutdown(self, *, cancel_running: bool = False) -> None:
        """Stop fetching, let running handlers finish, hand unstarted jobs back.

        Returns at once; the scheduler's ``run`` (or ``open_scheduler`` block) returns when
        the handlers are done. With ``cancel_running=True`` running handlers are cancelled
        too and their jobs handed back.
        """
        if not self._stopping:
            logger.info("scheduler shutting down: letting %d running job(s) finish", len(self._running))
        self._stopping = True
        if self._nudge is not None:
            self._nudge.set()
        if cancel_running and self._scope is not None:
            self._scope.cancel()

    async def wait_stopped(self) -> None:
        """Wait until the scheduler has stopped and handed its leased jobs back."""
        if self._stopped is None:
            raise RuntimeError("the scheduler has not been started")
        await self._stopped.wait()

    async def add_job(self, job: Job[T]) -> None:
        """Add a job to the store and wake the fetcher so a due job starts at once.

        :raises DuplicateJobError: a job with this id exists
        """
        await call_store("add_job", job.id, lambda: self._store.add_job(job), self._backoff)
        self._wake_fetcher()

    # -- the task group ----------------------------------------------------------------------

    async def _run_tasks(
        self,
        send: MemoryObjectSendStream[Job[T]],
        receive: MemoryObjectReceiveStream[Job[T]],
        task_status: TaskStatus[Scheduler[T]],
    ) -> None:
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._keep_leases, outer, name="anysched-lease-keeper")
            async with anyio.create_task_group() as tg:
                for worker in range(self._workers):
                    tg.start_soon(self._work, receive.clone(), worker, name=f"anysched-worker-{worker}")
                tg.start_soon(self._fetch, send, name="anysched-fetcher")
                logger.info("scheduler started with %d worker(s)", self._workers)
                task_status.started(self)
            outer.cancel_scope.cancel()  # every worker is done: no lease left to keep

    # -- the fetcher -------------------------------------------------------------------------

    async def _fetch(self, send: MemoryObjectSendStream[Job[T]]) -> None:
        """Lease as many jobs as there is room for (idle workers plus buffer) and send them.

        No polling: with no room it waits for a worker to finish a job; with nothing due it
        sleeps until the next due time, a job added through the scheduler, or shutdown.
        """
        async with send:
            while not self._stopping:
                self._nudge = anyio.Event()  # a nudge from now on ends the next wait at once
                free = self._workers + self._buffer_size - self._held
                if free == 0:
                    await self._wait(None, for_space=True)
                    continue
                jobs = await call_store("fetch_pending_jobs", None, partial(self._claim, free), self._backoff)
                if len(jobs) > free:
                    jobs = await self._hand_back_excess(jobs, free)
                self._held += len(jobs)
                for job in jobs:
                    send.send_nowait(job)
                if len(jobs) < free and not self._stopping:
                    await self._wait(await self._idle_delay(), for_space=False)

    async def _hand_back_excess(self, jobs: list[Job[T]], limit: int) -> list[Job[T]]:
        """A store that breaks the contract by returning more than ``limit`` jobs loses none."""
        logger.error("the store returned %d jobs for a limit of %d; handing the rest back", len(jobs), limit)
        for job in jobs[limit:]:
            await self._hand_back(job, started=False)
        return jobs[:limit]

    def _claim(self, limit: int) -> Awaitable[list[Job[T]]]:
        return self._store.fetch_pending_jobs(self._now(), limit, self._visibility_timeout)

    async def _idle_delay(self) -> float:
        """Sleep ``fetch_interval``, or less if the store knows when its next job is due."""
        if self._next_due_time is None:
            return self._fetch_interval
        try:
            due = await self._next_due_time()
        except Exception as error:  # only an optimisation: the interval is a safe fallback
            logger.debug("next_due_time failed: %r; sleeping the whole fetch interval", error)
            return self._fetch_interval
        if due is None:
            return self._fetch_interval
        return max(0.0, min(self._fetch_interval, (due - self._now()).total_seconds()))

    async def _wait(self, seconds: float | None, *, for_space: bool) -> None:
        """Wait for a nudge (a worker finished a job, a job was added, shutdown) or ``seconds``."""
        assert self._nudge is not None
        self._waiting_for_space = for_space
        with anyio.move_on_after(math.inf if seconds is None else seconds):
            await self._nudge.wait()
        self._waiting_for_space = False

    # -- the workers -------------------------------------------------------------------------

    async def _work(self, receive: MemoryObjectReceiveStream[Job[T]], worker: int) -> None:
        with receive:
            while True:
                try:
                    job = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        job = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                try:
                    await self._process(job, worker)
                finally:
                    self._held -= 1
                self._make_room()
                # A handler and a store that never await would otherwise let this loop
                # starve every other task: yield once per job.
                await anyio.lowlevel.checkpoint()

    def _wake_fetcher(self) -> None:
        """End the fetcher's idle sleep, so it looks again for the next due time."""
        if self._nudge is not None and not self._waiting_for_space:
            self._nudge.set()

    def _make_room(self) -> None:
        """Tell a fetcher that waits for room that a worker has finished a job."""
        if self._waiting_for_space:
            assert self._nudge is not None
            self._nudge.set()

    async def _process(self, job: Job[T], worker: int) -> None:
        """Run one job and record its outcome; on any interruption, hand the job back."""
        started = False
        try:
            if self._stopping:
                await self._hand_back(job, started=False)
                return
            outcome = self._out_of_attempts(job)
            if outcome is None:
                fresh = await self._fresh_lease(job)
                if fresh is None:
                    return
                started = True
                outcome = await self._run_handler(fresh, worker)
        except BaseException:
            await self._shielded_hand_back([job], started=started)
            raise
        if outcome is not None:
            await self._record(outcome, worker)
            if outcome.status is JobStatus.PENDING:  # a retry: the fetcher may sleep past its due time
                self._wake_fetcher()

    def _out_of_attempts(self, job: Job[T]) -> Job[T] | None:
        """The job failed for good, if this claim is beyond its last attempt; else ``None``.

        Attempts are counted at claim, so only a job whose earlier attempts never reported
        an outcome (their process died, their lease expired) gets here: a poison job.
        """
        budget = self._max_attempts(job)
        if budget is None or job.attempts <= budget:
            return None
        message = (
            f"gave up after {budget} attempt(s): the last ended without an outcome "
            "(its process died or its lease expired)"
        )
        if job.last_error is not None:
            message += f"; last error: {job.last_error}"
        logger.error("job %s: %s", job.id, message)
        return replace(job, status=JobStatus.FAILED, processed_at=self._now(), visible_after=None, last_error=message)

    def _max_attempts(self, job: Job[T]) -> int | None:
        if job.max_attempts is not None:
            return job.max_attempts
        return None if self._retry is None else self._retry.max_attempts

    async def _fresh_lease(self, job: Job[T]) -> Job[T] | None:
        """The job with a lease that will outlast the first renewal, or ``None`` if it is lost.

        A job that waited in the buffer may be near its lease's end; renewing it first
        means the handler never starts on a job someone else may already have claimed.
        """
        if self._lease_remaining(job) >= RENEW_WHEN_REMAINING:
            return job
        renewed = replace(job, visible_after=self._now() + self._visibility_timeout)
        try:
            await self._update(renewed, "renew lease")
        except (LeaseLostError, JobNotFoundError):
            logger.warning("job %s: lease lost while it waited for a worker; not running it", job.id)
            return None
        return renewed

    async def _run_handler(self, job: Job[T], worker: int) -> Job[T] | None:
        """Await the handler; return the job's new state, or ``None`` when the lease was lost."""
        running = _Running(job, worker)
        self._running.add(running)
        logger.debug("job %s started on worker %d (attempt %d)", job.id, worker, job.attempts)
        begin = anyio.current_time()
        error: Exception | None = None
        timeout = self._job_timeout if job.timeout is None else job.timeout
        try:
            with running.scope:
                try:
                    if timeout is None:
                        await self._handler(job)
                    else:
                        error = await self._run_with_timeout(job, timeout)
                except Exception as exc:
                    error = exc
        finally:
            running.finished = True
            if running.renewing is not None:  # never let a renewal land after the outcome
                with anyio.CancelScope(shield=True):
                    await running.renewing.wait()
            self._running.discard(running)
        duration = anyio.current_time() - begin
        if running.lost or running.scope.cancelled_caught:  # refused, or cut off before it had a result
            logger.warning("job %s on worker %d: lease lost after %.3fs; result not recorded", job.id, worker, duration)
            return None
        return self._outcome(running.job, worker, duration, error)

    async def _run_with_timeout(self, job: Job[T], seconds: float) -> JobTimeoutError | None:
        with anyio.move_on_after(seconds) as deadline:
            await self._handler(job)
        if deadline.cancelled_caught:
            return JobTimeoutError(f"the handler ran past the job's timeout of {seconds:g}s and was cancelled")
        return None

    def _outcome(self, job: Job[T], worker: int, duration: float, error: Exception | None) -> Job[T]:
        """The job as this attempt leaves it: completed, failed, or pending again for a retry."""
        now = self._now()
        if error is None:
            logger.info("job %s completed on worker %d in %.3fs", job.id, worker, duration)
            return replace(job, status=JobStatus.COMPLETED, processed_at=now, visible_after=None)
        error = decisive(error)
        if isinstance(error, RetryJob):
            delay = self._retry_delay(job) if error.delay is None else error.delay
            logger.info("job %s postponed by its handler (%s); due again in %.2fs", job.id, error.reason, delay)
            # A postponement, not a failure: the attempt is given back.
            return self._due_again(replace(job, attempts=max(0, job.attempts - 1)), now, delay, error.reason)
        message = error.reason if isinstance(error, FailJob) else describe(error)
        budget = self._max_attempts(job)
        of_budget = "" if budget is None else f" of {budget}"
        if budget is not None and job.attempts < budget and not isinstance(error, FailJob):
            delay = self._retry_delay(job)
            logger.warning(
                "job %s failed on worker %d after %.3fs (attempt %d%s); retrying in %.2fs",
                *(job.id, worker, duration, job.attempts, of_budget, delay),
                exc_info=error,
            )
            return self._due_again(job, now, delay, message)
        logger.error(
            "job %s failed for good on worker %d after %.3fs (attempt %d%s): %s",
            *(job.id, worker, duration, job.attempts, of_budget, message),
            exc_info=None if isinstance(error, FailJob) else error,  # a decision, not a crash: no traceback
        )
        return replace(job, status=JobStatus.FAILED, processed_at=now, visible_after=None, last_error=message)

    def _retry_delay(self, job: Job[T]) -> float:
        return (self._retry or DEFAULT_RETRY).delay(max(1, job.attempts))

    @staticmethod
    def _due_again(job: Job[T], now: datetime, delay: float, why: str) -> Job[T]:
        """Pending again, due after ``delay`` (the end of time at most), lease released."""
        try:
            due = now + timedelta(seconds=delay)
        except OverflowError:  # a delay of millennia: the job waits forever rather than crash the worker
            due = datetime.max.replace(tzinfo=timezone.utc)
        return replace(job, process_after=due, visible_after=None, last_error=why)

    async def _record(self, outcome: Job[T], worker: int) -> None:
        """Write a finished job's outcome; if cancelled meanwhile, try once more, shielded and bounded."""
        try:
            await self._write(outcome, str(outcome.status))
        except BaseException:
            with anyio.move_on_after(self._shutdown_timeout, shield=True) as scope:
                await self._write(outcome, str(outcome.status))
            if scope.cancelled_caught:
                logger.error(
                    "job %s on worker %d: outcome not recorded within shutdown_timeout; "
                    "it runs again when its lease expires",
                    outcome.id,
                    worker,
                )
            raise

    async def _hand_back(self, job: Job[T], *, started: bool) -> None:
        """Release a leased job so it is visible again at once, with its attempt given back.

        A job the scheduler interrupts (shutdown with ``cancel_running``, cancellation) did
        not fail, so its attempt does not count against ``max_attempts`` either.
        """
        released = replace(job, visible_after=None, attempts=max(0, job.attempts - 1))
        await self._write(released, "release")
        logger.info("job %s handed back%s", job.id, " (interrupted)" if started else "")

    async def _shielded_hand_back(self, jobs: list[Job[T]], *, started: bool) -> None:
        """Hand jobs back even while being cancelled, within ``shutdown_timeout`` in all."""
        left = list(jobs)
        with anyio.move_on_after(self._shutdown_timeout, shield=True):
            while left:
                await self._hand_back(left[0], started=started)
                del left[0]
        if left:
            logger.error(
                "%d job(s) not handed back within shutdown_timeout (%s); they run again when their leases expire",
                len(left),
                ", ".join(job.id for job in left),
            )

    async def _write(self, job: Job[T], why: str) -> None:
        """Update the job; a lost lease is logged, not raised: the job is someone else's now."""
        try:
            await self._update(job, why)
        except (LeaseLostError, JobNotFoundError) as error:
            logger.warning("job %s: update_job (%s) not written: %s", job.id, why, error)

    async def _update(self, job: Job[T], why: str) -> None:
        await call_store(f"update_job ({why})", job.id, lambda: self._store.update_job(job), self._backoff)

    async def _release_buffered(self, receive: MemoryObjectReceiveStream[Job[T]]) -> None:
        """Hand back every job still waiting in the stream, at the very end."""
        buffered: list[Job[T]] = []
        while True:
            try:
                buffered.append(receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        await self._shielded_hand_back(buffered, started=False)

    # -- the lease keeper --------------------------------------------------------------------

    async def _keep_leases(self, tg: TaskGroup) -> None:
        """Renew the lease of every running job once a third of it has passed."""
        period = self._visibility_timeout.total_seconds() / 6
        while True:
            await anyio.sleep(period)
            for running in list(self._running):
                due = self._lease_remaining(running.job) < RENEW_WHEN_REMAINING
                if due and running.renewing is None and not running.finished:
                    running.renewing = anyio.Event()
                    tg.start_soon(self._renew, running, name=f"anysched-renew-{running.job.id}")

    async def _renew(self, running: _Running[T]) -> None:
        job = running.job
        renewed = replace(job, visible_after=self._now() + self._visibility_timeout)
        assert job.visible_after is not None
        try:
            with anyio.move_on_after(max(0.0, (job.visible_after - self._now()).total_seconds())):
                await self._update(renewed, "renew lease")
                running.job = renewed
                return
            self._lose(running, "its lease expired before the store could renew it", refused=False)
        except (LeaseLostError, JobNotFoundError):
            self._lose(running, "the store says its lease was lost", refused=True)
        finally:
            assert running.renewing is not None
            running.renewing.set()
            running.renewing = None

    def _lose(self, running: _Running[T], why: str, *, refused: bool) -> None:
        """Stop a handler whose lease may be gone.

        Only a refusal by the store is certain. A renewal that went unanswered until the lease
        ended may have landed; a handler that ends on its own before its cancellation arrives
        still has its outcome written, fenced by the lease token, so it lands only if the
        lease is still ours.
        """
        running.lost = running.lost or refused
        if running.finished:
            logger.debug("job %s: lease in doubt after its handler ended: %s", running.job.id, why)
            return
        logger.warning("job %s on worker %d: cancelling the handler: %s", running.job.id, running.worker, why)
        running.scope.cancel()

    # -- helpers -------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return require_utc("clock()", self._clock())

    def _lease_remaining(self, job: Job[T]) -> float:
        """The fraction of the visibility timeout left on ``job``'s lease."""
        if job.visible_after is None:
            return 0.0
        return (job.visible_after - self._now()) / self._visibility_timeout


@asynccontextmanager
async def open_scheduler(
    store: JobStore[T],
    handler: Handler[T],
    *,
    workers: int = 10,
    fetch_interval: Seconds = 1.0,
    visibility_timeout: Seconds = 30.0,
    shutdown_timeout: Seconds = 10.0,
    buffer_size: int | None = None,
    store_backoff: Backoff = Backoff(),  # noqa: B008 -- immutable
    retry: RetryPolicy | None = None,
    job_timeout: Seconds | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> AsyncGenerator[Scheduler[T], None]:
    """Run a :class:`Scheduler` for the length of an ``async with`` block.

    Leaving the block normally shuts the scheduler down gracefully: fetching stops, running
    handlers finish, unstarted leased jobs are handed back. An exception in the block
    cancels the handlers instead (their jobs are handed back too) and propagates.
    The options are :class:`Scheduler`'s.
    """
    scheduler = Scheduler(
        store,
        handler,
        workers=workers,
        fetch_interval=fetch_interval,
        visibility_timeout=visibility_timeout,
        shutdown_timeout=shutdown_timeout,
        buffer_size=buffer_size,
        store_backoff=store_backoff,
        retry=retry,
        job_timeout=job_timeout,
        clock=clock,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        try:
            yield scheduler
        finally:
            scheduler.shutdown()


def _check_lease_can_be_renewed(visibility_timeout: timedelta, store_backoff: Backoff) -> None:
    """A lease is renewed when a third of it has passed; a renewal that fails must have time
    to be retried before the lease runs out, or one blip of the store loses every lease."""
    initial = to_seconds("store_backoff.initial", store_backoff.initial)
    if visibility_timeout.total_seconds() <= 3 * initial:
        raise ValueError(
            f"visibility_timeout ({visibility_timeout.total_seconds():g}s) must be more than 3 x "
            f"store_backoff.initial ({initial:g}s): leases are renewed when a third of them has passed, "
            "and a failed renewal must be retried before the lease runs out"
        )


def _check_count(name: str, value: int, *, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_store(store: object) -> None:
    if not isinstance(store, JobStore):
        raise TypeError(
            f"store must implement the JobStore protocol (fetch_pending_jobs, update_job, add_job), "
            f"not {type(store).__name__}"
        )


def _check_handler(handler: object) -> None:
    call = getattr(handler, "__call__", None)  # noqa: B004 -- an async __call__ counts too
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise TypeError(f"handler must be an async function (async def handler(job): ...), got {handler!r}")
