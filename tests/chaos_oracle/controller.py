"""The controller: scheduler instances on the flaky store, started, cancelled, shut down and killed at
random, a producer adding jobs, one instance's clock stepped; then a drain, and the checker's verdict."""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
from anyio.abc import TaskGroup

from anysched import Job, JobStore, MemoryStore, RetryPolicy, Scheduler

from .checker import Checker
from .clock import STEPPED_SLOT, LagMonitor, SteppedClock, chaos_clock
from .config import ChaosConfig
from .incarnation import Incarnation, perform
from .proxy import ChaosStore, Process, final_jobs
from .records import Run, StopRequest
from .result import ChaosResult
from .workload import (
    POISON_OUTSIDE_CHAOS,
    Attempt,
    Work,
    cancel_requested,
    describe,
    draw_action,
)

ACTIONS: tuple[str, ...] = ("cancel", "shutdown", "kill")
"""What the controller does to an instance: cancel it from outside, shut it down gracefully, kill its process."""


async def _never_called(job: Job[Work]) -> None:
    raise AssertionError("the producer's scheduler only adds jobs")


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

    def handler_for(self, incarnation: Incarnation) -> Callable[[Job[Work]], Awaitable[None]]:
        async def handle(job: Job[Work]) -> None:
            await self._handle(incarnation, job)

        return handle

    async def _handle(self, incarnation: Incarnation, job: Job[Work]) -> None:
        """Run the drawn behaviour and record how the run ended (and, if we cancelled it, why)."""
        number = self.runs_of[job.id]
        self.runs_of[job.id] += 1
        action = "kill" if job.id in self.poison else draw_action(self.config, job.id, number)
        run = Run(job.id, job.lease, job.attempts, incarnation.name, action, chaos_clock(), began=anyio.current_time())
        self.runs.append(run)
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
        await perform(run, attempt, incarnation, deadline)

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
            if cancel_requested():  # the whole chaos run is being cancelled
                raise
            self.violations.append(f"{incarnation.name} crashed: {describe(error)}")
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
                    self.violations.append(f"{job_id}: Scheduler.add_job raised {describe(error)}")

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
        finished_in_chaos = 0  # bound here too: a type checker cannot tell that a task group never swallows errors
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
        final = await final_jobs(self.inner, self.ids)
        return Checker(self).check(
            final,
            finished_in_drain=len(self.finished_ids) - finished_in_chaos,
            elapsed=anyio.current_time() - began,
            wall=time.perf_counter() - wall,
            cpu=time.process_time() - cpu,
        )


async def run_chaos(
    config: ChaosConfig, store: JobStore[Work] | None = None, *, store_name: str = "memory"
) -> ChaosResult:
    """Run the chaos on ``store`` (a fresh ``MemoryStore`` by default) on the current backend."""
    backend = "trio" if anyio.get_cancelled_exc_class().__module__.startswith("trio") else "asyncio"
    inner: JobStore[Work] = MemoryStore[Work]() if store is None else store
    return await ChaosRun(inner, config, backend=backend, store_name=store_name).run()
