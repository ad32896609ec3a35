"""The scheduler: one fetcher, N workers and a lease keeper in one anyio task group."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._adding import add_job_once
from ._cancellation import being_cancelled, is_control_flow
from ._exceptions import JobNotFoundError, JobTimeoutError, LeaseLostError
from ._job import Job
from ._lease import RENEW_WHEN_REMAINING, Held
from ._outcome import Outcome, decide, out_of_attempts
from ._retry import Backoff, CountedCall, RetryPolicy, call_store
from ._store import JobStore, KnowsNextDueTime
from ._time import Seconds, require_utc, to_seconds, utc_now

T = TypeVar("T")

Handler = Callable[[Job[T]], Awaitable[object]]
"""``async def handler(job: Job[T]) -> None``: returning completes the job, raising fails it
(retried while the retry policy allows; :class:`RetryJob` and :class:`FailJob` decide for it)."""

logger = logging.getLogger("anysched")

CLOCK_STEP_WARNING = 1.0
"""Seconds by which the wall clock may drift from the monotonic clock between two lease-keeper
rounds before the scheduler says, once per step, that the wall clock stepped."""


@dataclass(frozen=True)
class SchedulerStatistics:
    """What a scheduler holds right now (:meth:`Scheduler.statistics`).

    :param held: leased jobs not yet finished or handed back (buffered, running, or being written)
    :param buffered: leased jobs waiting in the stream for a free worker
    :param running: handlers running
    :param renewing: lease renewals in flight
    """

    held: int
    buffered: int
    running: int
    renewing: int


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
    :param shutdown_timeout: the bound on each store write once the scheduler is stopping
        (outcomes of handlers that finish, and the shielded hand-back of leased jobs)
    :param buffer_size: how many leased jobs may wait for a free worker (default: ``workers``)
    :param store_backoff: the backoff between retries of a failed store call
    :param retry: how failed jobs are retried (attempts and backoff). ``None``, the default,
        is go-sched's behaviour: a failed job stays failed, and a job whose process died
        runs again when its lease expires, however often. A job's own ``max_attempts``
        overrides the policy's.
    :param job_timeout: how long a handler may run before it is cancelled and the attempt
        fails with :class:`JobTimeoutError` (``None``: no limit). A job's own ``timeout``
        overrides it. It may exceed ``visibility_timeout``: leases are renewed.
    :param clock: returns the current wall-clock time (timezone-aware), for what is stored;
        renewals and deadlines run on the event loop's monotonic clock
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
        self._running: set[Held[T]] = set()
        self._holding: dict[str, Held[T]] = {}
        """Every job this scheduler holds (buffered or running), by id: a claim that returns one
        of them again (a duplicate, or a wall clock stepped forward) must not run it twice."""
        self._stopping = False
        self._started = False
        self._waiting_for_space = False
        self._held = 0
        """Jobs leased and not yet finished: buffered or running. Never more than
        workers + buffer_size; the fetcher leases exactly the difference. Counted here rather
        than read off the stream, whose statistics miss a job handed to a worker that has not
        resumed yet."""
        self._idle_claims = 0
        """Claims in a row that found nothing although the store said a job was due: a store
        whose next due time is wrong must not make the fetcher spin."""
        self._bounded: set[anyio.CancelScope] = set()
        """Scopes of store writes that shutdown bounds by ``shutdown_timeout``."""
        self._stop_deadline: float | None = None
        """When a stop must be over (monotonic), but for the outcomes of handlers still running."""
        self._claiming = False
        self._nudge: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._fetch_scope: anyio.CancelScope | None = None
        self._buffer: MemoryObjectReceiveStream[Held[T]] | None = None

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
        self._fetch_scope = anyio.CancelScope()
        if self._stopping:  # shut down before it ran: start nothing new
            self._fetch_scope.cancel()
        # Room for every job the scheduler may hold, so send_nowait never blocks.
        send, receive = anyio.create_memory_object_stream[Held[T]](self._workers + self._buffer_size)
        self._buffer = receive
        try:
            with anyio.CancelScope() as self._scope:
                await self._run_tasks(send, receive, task_status)
        finally:
            try:
                await self._hand_back_buffered(receive)  # none left, unless a task failed
            finally:
                receive.close()
                self._stopped.set()
                logger.info("scheduler stopped")

    def shutdown(self, *, cancel_running: bool = False) -> None:
        """Stop fetching, let running handlers finish, hand unstarted jobs back.

        Returns at once; the scheduler's ``run`` (or ``open_scheduler`` block) returns when
        the handlers are done, and from then on within ``shutdown_timeout`` whatever the store
        does. With ``cancel_running=True`` running handlers are cancelled too and their jobs
        handed back.
        """
        if not self._stopping:
            logger.info("scheduler shutting down: letting %d running job(s) finish", len(self._running))
        first = not self._stopping
        self._stopping = True
        if not self._started:
            return  # run() will start nothing
        if first or cancel_running:  # a second, impatient stop gets its own time for its hand-backs
            self._stop_deadline = anyio.current_time() + self._shutdown_timeout
        assert self._stop_deadline is not None
        assert self._fetch_scope is not None
        if self._claiming:  # a claim in flight may have leased jobs: wait for its answer, within the bound
            self._fetch_scope.deadline = min(self._fetch_scope.deadline, self._stop_deadline)
        else:
            self._fetch_scope.cancel()
        for scope in self._bounded:
            scope.deadline = min(scope.deadline, self._stop_deadline)
        if cancel_running and self._scope is not None:
            self._scope.cancel()

    async def wait_stopped(self) -> None:
        """Wait until the scheduler has stopped and handed its leased jobs back."""
        if self._stopped is None:
            raise RuntimeError("the scheduler has not been started")
        await self._stopped.wait()

    async def add_job(self, job: Job[T]) -> None:
        """Add a job to the store and wake the fetcher so a due job starts at once.

        A transient store error is retried; a retry that finds the job its lost attempt added
        succeeds.

        :raises DuplicateJobError: another job with this id exists
        """
        await add_job_once(self._store, job, self._backoff)
        self._wake_fetcher()

    def statistics(self) -> SchedulerStatistics:
        """How many jobs the scheduler holds, buffers and runs, and renewals in flight."""
        buffered = 0 if self._buffer is None else self._buffer.statistics().current_buffer_used
        renewing = sum(1 for held in self._running if held.renewal is not None)
        return SchedulerStatistics(self._held, buffered, len(self._running), renewing)

    # -- the task group ----------------------------------------------------------------------

    async def _run_tasks(
        self,
        send: MemoryObjectSendStream[Held[T]],
        receive: MemoryObjectReceiveStream[Held[T]],
        task_status: TaskStatus[Scheduler[T]],
    ) -> None:
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._keep_leases, outer, name="anysched-lease-keeper")
            async with anyio.create_task_group() as tg:
                for worker in range(self._workers):
                    tg.start_soon(self._work, receive.clone(), worker, name=f"anysched-worker-{worker}")
                tg.start_soon(self._fetch, send, receive.clone(), name="anysched-fetcher")
                logger.info("scheduler started with %d worker(s)", self._workers)
                task_status.started(self)
            outer.cancel_scope.cancel()  # every worker is done: no lease left to keep

    # -- the fetcher -------------------------------------------------------------------------

    async def _fetch(self, send: MemoryObjectSendStream[Held[T]], buffer: MemoryObjectReceiveStream[Held[T]]) -> None:
        """Lease as many jobs as there is room for (idle workers plus buffer) and send them.

        No polling: with no room it waits for a worker to finish a job; with nothing due it
        sleeps until the next due time, a job added through the scheduler, or shutdown. When
        it stops, it hands back what still waits in the buffer at once: nobody will run it.
        """
        assert self._fetch_scope is not None
        try:
            with self._fetch_scope:
                while not self._stopping:
                    await self._fetch_once(send)
        finally:
            await self._hand_back_buffered(buffer, close=send)

    async def _fetch_once(self, send: MemoryObjectSendStream[Held[T]]) -> None:
        self._nudge = anyio.Event()  # a nudge from now on ends the next wait at once
        free = self._workers + self._buffer_size - self._held
        if free == 0:
            await self._wait(None, for_space=True)
            return
        anchor = anyio.current_time()  # before the claim: the lease cannot end earlier than this says
        self._claiming = True
        try:
            claimed = await call_store("fetch_pending_jobs", None, partial(self._claim, free), self._backoff)
        finally:
            self._claiming = False
        jobs = self._new_to_us(claimed, anchor)
        if len(jobs) > free:
            jobs = await self._hand_back_excess(jobs, free, anchor)
        self._held += len(jobs)
        for job in jobs:
            send.send_nowait(self._holding[job.id])
        if len(claimed) < free and not self._stopping:
            await self._wait(await self._idle_delay(found=len(claimed)), for_space=False)

    def _new_to_us(self, claimed: list[Job[T]], anchor: float) -> list[Job[T]]:
        """The claimed jobs this scheduler does not hold yet.

        A store may hand out a job we hold: twice in one claim (a broken store), or again
        because our wall clock stepped forward and its lease looked expired. Running it twice
        at once is never right: the holder keeps the job, under the newer lease (the store
        knows only that one now); the attempt the claim added is undone by the holder's next write.
        """
        new: list[Job[T]] = []
        for job in claimed:
            holder = self._holding.get(job.id)
            if holder is None:
                self._holding[job.id] = Held(job, anchor)
                new.append(job)
                continue
            logger.warning("job %s: claimed again while this scheduler holds it; keeping one run", job.id)
            # Only the token changes hands: the lease's timing stays the holder's, so its next
            # renewal writes the end in the holder's time line, not in a stepped clock's.
            holder.job = replace(holder.job, lease=job.lease)
        return new

    async def _hand_back_excess(self, jobs: list[Job[T]], limit: int, anchor: float) -> list[Job[T]]:
        """A store that breaks the contract by returning more than ``limit`` jobs loses none."""
        logger.error("the store returned %d jobs for a limit of %d; handing the rest back", len(jobs), limit)
        excess = [self._holding.pop(job.id) for job in jobs[limit:]]
        await self._hand_back(excess, started=False)
        return jobs[:limit]

    def _claim(self, limit: int) -> Awaitable[list[Job[T]]]:
        return self._store.fetch_pending_jobs(self._now(), limit, self._visibility_timeout)

    async def _idle_delay(self, *, found: int) -> float:
        """Sleep ``fetch_interval``, or less if the store knows when its next job is due.

        A store that says a job is due, yet whose claims keep finding none, gets a wait that
        doubles from a millisecond: the fetcher never spins.
        """
        if self._next_due_time is None:
            return self._fetch_interval
        due: datetime | None = None
        try:
            with anyio.move_on_after(self._fetch_interval):  # no answer in time: the interval it is
                found_due = await self._next_due_time()
                due = None if found_due is None else require_utc("next_due_time()", found_due)
        except Exception as error:  # only an optimisation: the interval is a safe fallback
            logger.debug("next_due_time failed: %r; sleeping the whole fetch interval", error)
        if due is None:
            return self._fetch_interval
        delay = min(self._fetch_interval, (due - self._now()).total_seconds())
        self._idle_claims = self._idle_claims + 1 if delay <= 0 and found == 0 else 0
        floor = 0.0 if self._idle_claims == 0 else 0.001 * 2.0 ** min(self._idle_claims - 1, 20)
        return min(self._fetch_interval, max(delay, floor))

    async def _wait(self, seconds: float | None, *, for_space: bool) -> None:
        """Wait for a nudge (a worker finished a job, a job was added, shutdown) or ``seconds``."""
        assert self._nudge is not None
        self._waiting_for_space = for_space
        try:
            if seconds is None:
                await self._nudge.wait()
            else:
                with anyio.move_on_after(seconds):
                    await self._nudge.wait()
        finally:
            self._waiting_for_space = False

    def _wake_fetcher(self) -> None:
        """End the fetcher's idle sleep, so it looks again for the next due time."""
        if self._nudge is not None and not self._waiting_for_space:
            self._nudge.set()

    def _make_room(self) -> None:
        """Tell a fetcher that waits for room that a worker has finished a job."""
        if self._waiting_for_space:
            assert self._nudge is not None
            self._nudge.set()

    # -- the workers -------------------------------------------------------------------------

    async def _work(self, receive: MemoryObjectReceiveStream[Held[T]], worker: int) -> None:
        with receive:
            while not self._stopping:
                try:
                    held = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        held = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                try:
                    await self._process(held, worker)
                finally:
                    self._held -= 1
                    self._holding.pop(held.job.id, None)
                self._make_room()
                # A handler and a store that never await would otherwise let this loop
                # starve every other task: yield once per job.
                await anyio.lowlevel.checkpoint()

    async def _process(self, held: Held[T], worker: int) -> None:
        """Run one job and record its outcome; on our own cancellation, hand the job back."""
        if self._stopping:  # taken from the stream just before the fetcher stopped
            await self._hand_back([held], started=False)
            return
        held.worker = worker
        started = False
        try:
            outcome = out_of_attempts(held.job, self._retry, self._now())
            if outcome is not None:
                logger.error("job %s: %s", held.job.id, outcome.message)
            else:
                if not await self._fresh_lease(held):
                    return
                started = True
                outcome = await self._run_handler(held)
        except BaseException:
            await self._hand_back([held], started=started)
            raise
        if outcome is not None:
            await self._record(outcome, worker)
            if outcome.kind in ("retry", "postponed"):  # the fetcher may sleep past its new due time
                self._wake_fetcher()

    async def _fresh_lease(self, held: Held[T]) -> bool:
        """Whether the job's lease will outlast the first renewal (renewing it if need be).

        A job that waited in the buffer may be near its lease's end; renewing it first
        means the handler never starts on a job someone else may already have claimed.
        """
        if held.lease_left(self._visibility_timeout) >= RENEW_WHEN_REMAINING:
            return True
        now = anyio.current_time()
        renewed = held.renewed(now, self._visibility_timeout, self._now())
        why = "its lease ended before the store renewed it"
        try:
            # Bounded like the renewals of running jobs (by the lease's end) and, once stopping,
            # by shutdown_timeout: a store that hangs must not hold a worker, or a stop, forever.
            with anyio.move_on_after(held.lease_end(self._visibility_timeout) - now), self._bounded_once_stopping():
                await self._update(renewed, "renew lease")
                held.job, held.anchor = renewed, now
                return True
        except (LeaseLostError, JobNotFoundError):
            why = "the store says its lease was lost"
        except Exception as error:  # a permanent store error: this job waits out its lease
            why = f"its lease could not be renewed: {error!r}"
        logger.warning("job %s waited for a worker and %s; not running it", held.job.id, why)
        return False

    async def _run_handler(self, held: Held[T]) -> Outcome[T] | None:
        """Await the handler under its scope; the job's next state, or ``None`` if nothing may be written.

        Whatever the handler raises is this attempt's failure, except the scheduler's own
        cancellation (shutdown with ``cancel_running``, a cancel from outside), which
        propagates so that the job is handed back.
        """
        job, worker = held.job, held.worker
        timeout = self._job_timeout if job.timeout is None else job.timeout
        begin = anyio.current_time()
        if timeout is not None:
            held.scope.deadline = begin + timeout
        self._running.add(held)
        logger.debug("job %s started on worker %d (attempt %d)", job.id, worker, job.attempts)
        error: BaseException | None = None
        try:
            with held.scope:
                await self._handler(job)
        except BaseException as raised:
            if is_control_flow(raised) or being_cancelled():
                await self._propagate_cancellation(held, raised)
            error = raised
        finally:
            held.finished = True
            if held.renewal is not None:  # its answer no longer matters: the outcome's write ends the lease
                held.renewal.cancel()
            self._running.discard(held)
        return self._judge(held, error, anyio.current_time() - begin)

    async def _propagate_cancellation(self, held: Held[T], raised: BaseException) -> None:
        """Re-raise our cancellation, never a handler's error that came with it.

        A handler that raises while being cancelled (an error from its cleanup, its task
        group's exception group) must not crash the scheduler: the error is logged and the
        cancellation of the scope that is cancelling us is raised in its place, so that the
        caller hands the job back. Returns only if nothing is cancelling us after all: then
        ``raised`` is the attempt's failure.
        """
        if is_control_flow(raised) or isinstance(raised, anyio.get_cancelled_exc_class()):
            raise raised
        logger.warning(
            "job %s on worker %d: the handler raised while being cancelled; handing the job back",
            *(held.job.id, held.worker),
            exc_info=raised,
        )
        await anyio.lowlevel.checkpoint()  # raises the cancellation of the scope that is cancelling us

    def _judge(self, held: Held[T], error: BaseException | None, duration: float) -> Outcome[T] | None:
        """The outcome to write for a finished handler, or ``None`` when none may be written."""
        job, worker = held.job, held.worker
        if held.refused or (held.in_doubt and (error is not None or held.scope.cancelled_caught)):
            # Refused: someone else may own the job. In doubt and cut off: it had no result;
            # the job runs again when its lease expires.
            logger.warning("job %s on worker %d: lease lost after %.3fs; result not recorded", job.id, worker, duration)
            return None
        if held.scope.cancel_called and not held.in_doubt:  # the job's deadline, even if the handler swallowed it
            timeout = self._job_timeout if job.timeout is None else job.timeout
            error = JobTimeoutError(f"the handler ran past the job's timeout of {timeout:g}s and was cancelled")
        outcome = decide(job, error, self._retry, self._now())
        _log_outcome(outcome, worker, duration, error)
        return outcome

    async def _record(self, outcome: Outcome[T], worker: int) -> None:
        """Write a finished job's outcome; once stopping, within ``shutdown_timeout``.

        If cancelled meanwhile, try once more, shielded and bounded. A write that does not
        finish in time, or fails for good, leaves the job to run again when its lease expires:
        one job's write does not stop the scheduler.
        """
        job = outcome.job
        try:
            with self._bounded_once_stopping() as bound:
                await self._write_logged(job, worker)
        except BaseException:
            with anyio.move_on_after(self._shutdown_timeout, shield=True) as bound:
                await self._write_logged(job, worker)
            self._log_unrecorded(job, worker, bound)
            raise
        self._log_unrecorded(job, worker, bound)

    async def _write_logged(self, job: Job[T], worker: int) -> None:
        try:
            await self._write(job, str(job.status))
        except Exception as error:
            logger.error(
                "job %s on worker %d: outcome not recorded: %r; it runs again when its lease expires",
                *(job.id, worker, error),
            )

    @staticmethod
    def _log_unrecorded(job: Job[T], worker: int, bound: anyio.CancelScope) -> None:
        if bound.cancelled_caught:
            logger.error(
                "job %s on worker %d: outcome not recorded within shutdown_timeout; "
                "it runs again when its lease expires",
                *(job.id, worker),
            )

    @contextmanager
    def _bounded_once_stopping(self) -> Generator[anyio.CancelScope]:
        """A scope that :meth:`shutdown` bounds by ``shutdown_timeout`` (bounded at once if stopping)."""
        scope = anyio.CancelScope()
        if self._stopping:
            scope.deadline = anyio.current_time() + self._shutdown_timeout
        self._bounded.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._bounded.discard(scope)

    async def _hand_back_buffered(
        self, buffer: MemoryObjectReceiveStream[Held[T]], *, close: MemoryObjectSendStream[Held[T]] | None = None
    ) -> None:
        """Hand back every job still waiting in the stream: nobody will run them.

        They are taken out before ``close`` (the send end) is closed, without awaiting, so no
        worker can take one meanwhile.
        """
        unstarted = _drain(buffer)
        self._held -= len(unstarted)
        for held in unstarted:
            self._holding.pop(held.job.id, None)
        if close is not None:
            buffer.close()
            close.close()
        await self._hand_back(unstarted, started=False)

    async def _hand_back(self, jobs: list[Held[T]], *, started: bool) -> None:
        """Release leased jobs so they are visible again at once, with their attempt given back.

        Shielded, and within ``shutdown_timeout`` in all, whatever the store does: a job that
        cannot be handed back (the store fails, hangs, or refuses) is logged by id and runs
        again when its lease expires. A job the scheduler interrupts did not fail, so its
        attempt does not count against ``max_attempts`` either.
        """
        left = [held.job for held in jobs]
        deadline = anyio.current_time() + self._shutdown_timeout
        if self._stop_deadline is not None:  # one bound for the whole stop
            deadline = min(deadline, self._stop_deadline)
        with anyio.CancelScope(deadline=deadline, shield=True):
            while left:
                job = left[0]
                released = replace(job, visible_after=None, attempts=max(0, job.attempts - 1))
                try:
                    await self._write(released, "release")
                except Exception as error:  # a permanent store error: try the others all the same
                    logger.error("job %s: could not hand it back: %r", job.id, error)
                else:
                    logger.info("job %s handed back%s", job.id, " (interrupted)" if started else "")
                del left[0]
        if left:
            logger.error(
                "%d job(s) not handed back within shutdown_timeout (%s); they run again when their leases expire",
                len(left),
                ", ".join(job.id for job in left),
            )

    async def _write(self, job: Job[T], why: str) -> None:
        """Update the job; a lost lease is logged, not raised: the job is someone else's now."""
        update = CountedCall(lambda: self._store.update_job(job))
        try:
            await call_store(f"update_job ({why})", job.id, update, self._backoff)
        except (LeaseLostError, JobNotFoundError) as error:
            if update.count > 1:  # an earlier attempt may have landed, its reply lost, and ended the lease
                logger.info(
                    "job %s: update_job (%s) refused on retry; the attempt whose reply was lost "
                    "may have written it: %s",
                    *(job.id, why, error),
                )
            else:
                logger.warning("job %s: update_job (%s) not written: %s", job.id, why, error)

    async def _update(self, job: Job[T], why: str) -> None:
        await call_store(f"update_job ({why})", job.id, lambda: self._store.update_job(job), self._backoff)

    # -- the lease keeper --------------------------------------------------------------------

    async def _keep_leases(self, tg: TaskGroup) -> None:
        """Renew the lease of every running job once a third of it has passed (monotonic clock)."""
        period = self._visibility_timeout.total_seconds() / 6
        watch = _ClockWatch(self._clock)
        while True:
            await anyio.sleep(period)
            watch.check()
            for held in list(self._running):
                if held.renewal is not None or held.finished or held.in_doubt:
                    continue
                left = held.lease_left(self._visibility_timeout)
                if left <= 0:  # every renewal failed (a permanent store error, say)
                    self._lose(held, "its lease ended without a renewal", refused=False)
                elif left < RENEW_WHEN_REMAINING:
                    held.renewal = anyio.CancelScope()
                    tg.start_soon(self._renew, held, held.renewal, name=f"anysched-renew-{held.job.id}")

    async def _renew(self, held: Held[T], scope: anyio.CancelScope) -> None:
        now = anyio.current_time()
        renewed = held.renewed(now, self._visibility_timeout, self._now())
        try:
            with scope, anyio.move_on_after(held.lease_end(self._visibility_timeout) - now) as lease_left:
                try:
                    await self._update(renewed, "renew lease")
                except (LeaseLostError, JobNotFoundError):
                    if held.job.lease == renewed.lease:  # not re-leased by one of our own claims meanwhile
                        self._lose(held, "the store says its lease was lost", refused=True)
                except Exception as error:  # permanent: the keeper tries again, until the lease ends
                    logger.error("job %s: its lease could not be renewed: %r", held.job.id, error)
                else:
                    if held.job.lease == renewed.lease:
                        held.job, held.anchor = renewed, now
            if lease_left.cancelled_caught:
                self._lose(held, "its lease expired before the store could renew it", refused=False)
        finally:
            held.renewal = None

    def _lose(self, held: Held[T], why: str, *, refused: bool) -> None:
        """Stop a handler whose lease may be gone.

        Only a refusal by the store is certain. A renewal that went unanswered until the lease
        ended may have landed; a handler that ends on its own before its cancellation arrives
        still has its outcome written, fenced by the lease token, so it lands only if the
        lease is still ours.
        """
        held.refused = held.refused or refused
        if held.finished:
            logger.debug("job %s: lease in doubt after its handler ended: %s", held.job.id, why)
            return
        held.in_doubt = True
        logger.warning("job %s on worker %d: cancelling the handler: %s", held.job.id, held.worker, why)
        held.scope.cancel()

    # -- helpers -------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return require_utc("clock()", self._clock())


class _ClockWatch:
    """Notices a step of the wall clock against the monotonic one, and says so once per step.

    Leases are stored in wall-clock time that every process sharing the store compares with its
    own: a process whose clock is off by more than a lease can claim jobs others still hold.
    Timing here does not depend on it; the log line is for the operator.
    """

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._wall, self._monotonic = clock(), anyio.current_time()

    def check(self) -> None:
        wall, monotonic = self._clock(), anyio.current_time()
        step = (wall - self._wall).total_seconds() - (monotonic - self._monotonic)
        if abs(step) > CLOCK_STEP_WARNING:
            logger.warning(
                "the wall clock stepped %s by %.1fs; leases keep their timing (monotonic), but processes "
                "sharing a store must agree on the time to well within visibility_timeout",
                "forward" if step > 0 else "back",
                abs(step),
            )
        self._wall, self._monotonic = wall, monotonic


def _drain(receive: MemoryObjectReceiveStream[Held[T]]) -> list[Held[T]]:
    """Every job waiting in the stream, without waiting."""
    drained: list[Held[T]] = []
    while True:
        try:
            drained.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return drained


def _log_outcome(outcome: Outcome[T], worker: int, duration: float, error: BaseException | None) -> None:
    job = outcome.job
    of_budget = "" if outcome.budget is None else f" of {outcome.budget}"
    if outcome.kind == "completed":
        logger.info("job %s completed on worker %d in %.3fs", job.id, worker, duration)
    elif outcome.kind == "postponed":
        logger.info("job %s postponed by its handler (%s); due again in %.2fs", job.id, outcome.message, outcome.delay)
    elif outcome.kind == "retry":
        logger.warning(
            "job %s failed on worker %d after %.3fs (attempt %d%s); retrying in %.2fs",
            *(job.id, worker, duration, job.attempts, of_budget, outcome.delay),
            exc_info=error,
        )
    else:
        logger.error(
            "job %s failed for good on worker %d after %.3fs (attempt %d%s): %s",
            *(job.id, worker, duration, job.attempts, of_budget, outcome.message),
            exc_info=None if outcome.decided else error,  # a FailJob is a decision, not a crash: no traceback
        )


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
