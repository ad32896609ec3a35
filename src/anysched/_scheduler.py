"""The scheduler: a fetcher, N workers, a lease keeper and a wake-up listener in one anyio task group.

One job's path: the fetcher claims it (:mod:`._fetcher`) and streams it to a worker (here), whose
executor runs the handler (:mod:`._executor`); the outcome policy decides what the attempt comes
to (:mod:`._outcome`) and the completer writes it (:mod:`._completer`); meanwhile the lease keeper
renews its lease (:mod:`._lease`). What the scheduler holds is in :mod:`._holdings`. A store that
sends wake-ups (:mod:`._wake_ups`) wakes an idle fetcher when another process adds a job.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Generic, TypeVar, cast

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._adding import add_job_once
from ._completer import Completer
from ._exceptions import leaves
from ._executor import Executor, Handler
from ._fetcher import Fetcher
from ._holdings import Held, Holdings
from ._job import Job
from ._lease import LeaseKeeper
from ._outcome import beyond_budget, out_of_attempts
from ._retry import Backoff, RetryPolicy
from ._schedule import Schedule, check_schedules
from ._schedule_sync import ScheduleSync
from ._settings import Settings, check_handler, check_store
from ._store import JobStore, StoresSchedules
from ._ticker import Ticker
from ._time import Seconds, to_seconds, utc_now
from ._wake_ups import WakeUpListener, wake_ups_of

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

T = TypeVar("T")

logger = logging.getLogger("anysched")


@dataclass(frozen=True)
class SchedulerStatistics:
    """What a scheduler holds right now (:meth:`Scheduler.statistics`).

    :param held: leased jobs not yet finished or handed back (buffered, running, or being written)
    :param buffered: leased jobs waiting in the stream for a free worker
    :param running: handlers running
    :param renewing: lease renewals in flight
    :param listening: whether the store's wake-ups are being listened to right now
    """

    held: int
    buffered: int
    running: int
    renewing: int
    listening: bool = False


class Scheduler(Generic[T]):
    """Leases due jobs from a store and runs them on ``workers`` concurrent handler calls.

    Run it for the length of an ``async with`` block (``async with Scheduler(...) as scheduler``,
    or its alias ``open_scheduler``), or embed it in a task group of your own with
    ``await task_group.start(scheduler.run)``. Every option is keyword-only and checked here: a
    bad value raises ``ValueError`` or ``TypeError`` naming the option.

    :param store: where jobs live (any :class:`~anysched.JobStore`)
    :param handler: ``async def handler(job) -> None``; returning completes the job,
        raising an exception fails the attempt (``last_error`` says why)
    :param workers: how many handlers may run at once
    :param fetch_interval: how long to sleep when no job is due (at most; less when the
        store knows its next due time or a job is added through this scheduler)
    :param visibility_timeout: how long a lease lasts; running jobs renew theirs, so this
        only matters when a process dies
    :param shutdown_timeout: the bound on a stop's store calls: the claim in flight, the
        hand-backs (together), and each outcome of a handler that finishes later
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
    :param wake_ups: when the store sends wake-ups (:class:`~anysched.SendsWakeUps`), listen
        to them, so a job another process adds starts at once instead of within
        ``fetch_interval``; ``False`` turns that off (the fetcher then polls)
    :param schedules: recurring jobs (:class:`~anysched.Schedule`) whose slots this scheduler
        enqueues; every process may declare the same ones: each slot's job is added once. On a
        store that keeps schedules (:class:`~anysched.StoresSchedules`) they are put into it at
        start, and the scheduler ticks the store's schedules from then on
    :param schedule_refresh: how often (seconds) a scheduler on such a store looks for changed
        schedules: the bound on how long a change takes to reach it
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
        wake_ups: bool = True,
        schedules: Iterable[Schedule[T]] = (),
        schedule_refresh: Seconds = 10.0,
    ) -> None:
        check_store(store)
        check_handler(handler)
        self._settings = settings = Settings.of(
            workers=workers,
            fetch_interval=fetch_interval,
            visibility_timeout=visibility_timeout,
            shutdown_timeout=shutdown_timeout,
            buffer_size=buffer_size,
            store_backoff=store_backoff,
            retry=retry,
            job_timeout=job_timeout,
            clock=clock,
            wake_ups=wake_ups,
        )
        self._store = store
        self._holdings = Holdings[T]()
        self._completer = Completer(store, settings, self._holdings)
        self._executor = Executor(handler, settings, self._holdings)
        self._leases = LeaseKeeper(settings, self._holdings, self._completer)
        self._fetcher: Fetcher[T] | None = None  # made by run(): it needs the event loop
        self._listener: WakeUpListener | None = None  # made by run(), if the store sends wake-ups
        self._started = False
        self._stopped: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._buffer: MemoryObjectReceiveStream[Held[T]] | None = None
        self._host: TaskGroup | None = None
        self._ticker, self._schedule_sync = self._schedules_of(check_schedules(schedules), schedule_refresh)

    # -- public API ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[Scheduler[T]] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`shutdown` (or cancellation), then hand unstarted leased jobs back.

        Reports itself started (``await task_group.start(scheduler.run)`` returns the
        scheduler) once its tasks are running. A scheduler runs once.
        """
        if self._started:
            raise RuntimeError("this scheduler has already been started; create a new one")
        self._started = True
        self._stopped = anyio.Event()
        self._fetcher = fetcher = Fetcher(self._store, self._settings, self._holdings, self._completer)
        sender = wake_ups_of(self._store, enabled=self._settings.wake_ups)
        if sender is not None:
            self._listener = WakeUpListener(sender, fetcher.wake, self._settings.store_backoff)
        if self._holdings.stopping:  # shut down before it ran: start nothing new
            fetcher.stop()
        # Room for every job the scheduler may hold, so send_nowait never blocks.
        send, receive = anyio.create_memory_object_stream[Held[T]](self._settings.capacity)
        self._buffer = receive
        try:
            with anyio.CancelScope() as self._scope:
                await self._run_tasks(fetcher, send, receive, task_status)
        finally:
            try:
                await fetcher.hand_back_buffered(receive)  # none left, unless a task failed
            finally:
                receive.close()
                self._stopped.set()
                logger.info("scheduler stopped")

    def shutdown(self, *, cancel_running: bool = False) -> None:
        """Stop fetching, let running handlers finish, hand unstarted jobs back.

        Returns at once; the scheduler's ``run`` (or ``async with`` block) returns when the
        handlers are done, and from then on within ``shutdown_timeout`` whatever the store
        does. With ``cancel_running=True`` running handlers are cancelled too and their jobs
        handed back.
        """
        holdings = self._holdings
        first = not holdings.stopping
        if first:
            logger.info("scheduler shutting down: letting %d running job(s) finish", len(holdings.running))
        holdings.stopping = True
        self._ticker.stop()
        if self._fetcher is None:
            return  # run() will start nothing
        if self._listener is not None:
            self._listener.stop()  # first: a hint source must not delay the stop
        if first or cancel_running:  # a second, impatient stop gets its own time for its hand-backs
            holdings.stop_deadline = anyio.current_time() + self._settings.shutdown_timeout
            self._completer.stop(holdings.stop_deadline)
        self._fetcher.stop()
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
        await add_job_once(self._store, job, self._settings.store_backoff)
        if self._fetcher is not None:
            self._fetcher.wake()

    def statistics(self) -> SchedulerStatistics:
        """How many jobs the scheduler holds, buffers and runs, and renewals in flight."""
        buffered = 0 if self._buffer is None else self._buffer.statistics().current_buffer_used
        running = self._holdings.running
        renewing = sum(1 for held in running if held.renewal is not None)
        listening = self._listener is not None and self._listener.listening
        return SchedulerStatistics(self._holdings.held, buffered, len(running), renewing, listening)

    async def __aenter__(self) -> Scheduler[T]:
        """Start the scheduler in a task group of its own, for the length of the block."""
        host = anyio.create_task_group()
        await host.__aenter__()
        try:
            await host.start(self.run)
        except BaseException:
            await host.__aexit__(*sys.exc_info())
            raise
        self._host = host
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        """Leaving normally shuts the scheduler down gracefully; an exception cancels the handlers.

        An exception raised by the block leaves it as itself, not wrapped in an exception group:
        the scheduler merely hosted tasks beside it. The scheduler's own failures propagate as
        a task group's do.
        """
        assert self._host is not None
        self.shutdown()
        try:
            return await self._host.__aexit__(exc_type, exc, traceback)
        except BaseExceptionGroup as group:
            if exc is None or not _only(group, exc):
                raise
        raise exc

    # -- the task group ----------------------------------------------------------------------

    def _schedules_of(
        self, declared: tuple[Schedule[T], ...], refresh: Seconds
    ) -> tuple[Ticker[T], ScheduleSync[T] | None]:
        """The ticker, and what keeps it on the store's schedules when the store keeps them."""
        refresh_seconds = to_seconds("schedule_refresh", refresh)
        store = self._store
        if not isinstance(store, StoresSchedules):
            return Ticker(declared, self.add_job, self._settings.now), None
        ticker = Ticker(declared, self.add_job, self._settings.now, follows_store=True)
        stored = cast("StoresSchedules[T]", store)
        sync = ScheduleSync(stored, declared, ticker, refresh=refresh_seconds, backoff=self._settings.store_backoff)
        return ticker, sync

    async def _run_tasks(
        self,
        fetcher: Fetcher[T],
        send: MemoryObjectSendStream[Held[T]],
        receive: MemoryObjectReceiveStream[Held[T]],
        task_status: TaskStatus[Scheduler[T]],
    ) -> None:
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._leases.keep, outer, name="anysched-lease-keeper")
            if self._listener is not None and not self._holdings.stopping:
                outer.start_soon(self._listener.run, name="anysched-wake-ups")
            if self._ticker:
                outer.start_soon(self._ticker.run, name="anysched-ticker")
            if self._schedule_sync is not None:
                outer.start_soon(self._schedule_sync.run, name="anysched-schedule-sync")
            async with anyio.create_task_group() as tg:
                for worker in range(self._settings.workers):
                    tg.start_soon(self._work, fetcher, receive.clone(), worker, name=f"anysched-worker-{worker}")
                tg.start_soon(fetcher.run, send, receive.clone(), name="anysched-fetcher")
                logger.info("scheduler started with %d worker(s)", self._settings.workers)
                task_status.started(self)
            outer.cancel_scope.cancel()  # every worker is done: no lease left to keep, no fetcher to wake

    # -- the workers -------------------------------------------------------------------------

    async def _work(self, fetcher: Fetcher[T], receive: MemoryObjectReceiveStream[Held[T]], worker: int) -> None:
        # The worker's scope bounds its outcome writes once stopping (Completer.record); a write
        # it cuts off ends the worker, which was about to stop anyway.
        with receive, self._completer.worker_scope() as bound:
            while not self._holdings.stopping:
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
                    if await self._process(held, worker, bound):
                        fetcher.wake()  # a retry: the fetcher may sleep past its new due time
                finally:
                    self._holdings.take(held)
                fetcher.make_room()
                # A handler and a store that never await would otherwise let this loop
                # starve every other task: yield once per job.
                await anyio.lowlevel.checkpoint()

    async def _process(self, held: Held[T], worker: int, bound: anyio.CancelScope) -> bool:
        """Run one job and record its outcome; on our own cancellation, hand the job back.

        :param bound: the worker's scope, which a stop bounds while the outcome is written

        :returns: whether the job is due again (a retry or a postponement)
        """
        if self._holdings.stopping:  # taken from the stream just before the fetcher stopped
            await self._completer.hand_back([held], started=False)
            return False
        held.worker = worker
        started = False
        try:
            outcome = None
            if beyond_budget(held.job, self._settings.retry):
                outcome = out_of_attempts(held.job, self._settings.retry, self._settings.now())
                assert outcome is not None
                logger.error("job %s: %s", held.job.id, outcome.message)
            else:
                begin = await self._leases.fresh_lease(held)
                if begin is None:
                    return False
                started = True
                outcome = await self._executor.run(held, begin)
        except BaseException:
            await self._completer.hand_back([held], started=started)
            raise
        if outcome is None:
            return False
        await self._completer.record(outcome, worker, bound)
        return outcome.kind in ("retry", "postponed")


open_scheduler = Scheduler
"""``async with open_scheduler(store, handler, workers=10) as scheduler:`` runs a :class:`Scheduler`
for the length of the block (it is the same class, named as ``trio.open_nursery`` is). Leaving the
block normally shuts it down gracefully: fetching stops, running handlers finish, unstarted leased
jobs are handed back. An exception in the block cancels the handlers instead (their jobs are handed
back too) and propagates as itself."""


def _only(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    """Whether ``group`` holds ``exc`` and, besides it, nothing but cancellations."""
    found = leaves(group)
    cancelled = anyio.get_cancelled_exc_class()
    return any(leaf is exc for leaf in found) and all(leaf is exc or isinstance(leaf, cancelled) for leaf in found)
