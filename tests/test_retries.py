"""Failed jobs: retry policies, explicit retries and failures, poison jobs, per-job timeouts."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest

from anysched import (
    Backoff,
    FailJob,
    Job,
    JobStatus,
    MemoryStore,
    RetryJob,
    RetryPolicy,
    open_scheduler,
)
from anysched.testing import Payload
from support import FAST_RETRY, RetryScenario, SchedulerOptions

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]

QUICK = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0))
"""Retries 50 ms, then 100 ms apart: real time on asyncio, so keep it short."""


class Script:
    """A handler that plays one step per run: ``"ok"``, an exception to raise, or ``"hang"``."""

    def __init__(self, *steps: str | Exception, clock: Clock) -> None:
        self.steps = list(steps)
        self.seen: list[Job[int]] = []
        self.started_at: list[datetime] = []
        self.done = anyio.Event()
        self._clock = clock

    async def __call__(self, job: Job[int]) -> None:
        self.seen.append(job)
        self.started_at.append(self._clock())
        step = self.steps[min(len(self.seen), len(self.steps)) - 1]
        if len(self.seen) >= len(self.steps):
            self.done.set()
        if step == "hang":
            await anyio.sleep_forever()
        if isinstance(step, Exception):
            raise step


async def run_until_done(store: MemoryStore[int], handler: Script, clock: Clock, **options: Any) -> Job[int]:
    """Run one job until the handler has played its last step; return the job as stored after."""
    job = Job.create(7, process_after=clock(), id="the-job")
    await store.add_job(job)
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, fetch_interval=5, clock=clock, **options):
            await handler.done.wait()
    return await store.get_job(job.id)


async def test_without_a_policy_a_failed_job_stays_failed(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Script(ValueError("boom"), clock=clock)
    job = await run_until_done(store, handler, clock)
    assert (job.status, job.attempts, job.last_error) == (JobStatus.FAILED, 1, "ValueError: boom")
    assert len(handler.seen) == 1


async def test_a_failed_attempt_is_retried_after_the_backoff(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Script(ValueError("first"), ValueError("second"), "ok", clock=clock)
    job = await run_until_done(store, handler, clock, retry=QUICK)
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 3)
    assert [seen.attempts for seen in handler.seen] == [1, 2, 3]
    assert [seen.last_error for seen in handler.seen] == [None, "ValueError: first", "ValueError: second"]
    waits = [later - earlier for earlier, later in itertools.pairwise(handler.started_at)]
    # due again after 50 ms, then 100 ms (doubling); the fetcher wakes for it although
    # its fetch_interval is 5 s
    assert timedelta(seconds=0.05) <= waits[0] < timedelta(seconds=1)
    assert timedelta(seconds=0.1) <= waits[1] < timedelta(seconds=1)


async def test_the_last_failed_attempt_fails_the_job(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Script(*(ValueError(f"boom {n}") for n in range(1, 4)), clock=clock)
    job = await run_until_done(store, handler, clock, retry=QUICK)
    assert (job.status, job.attempts, job.last_error) == (JobStatus.FAILED, 3, "ValueError: boom 3")
    assert job.processed_at is not None
    assert len(handler.seen) == 3


async def test_a_jobs_own_max_attempts_overrides_the_policy(clock: Clock) -> None:
    store = MemoryStore[int]()
    await store.add_job(Job.create(1, process_after=clock(), id="own", max_attempts=3))
    handler = Script(ValueError("a"), ValueError("b"), "ok", clock=clock)
    with anyio.fail_after(30):
        one = RetryPolicy(max_attempts=1, backoff=QUICK.backoff)
        async with open_scheduler(store, handler, retry=one, fetch_interval=5, clock=clock):
            await handler.done.wait()
    assert ((await store.get_job("own")).status, (await store.get_job("own")).attempts) == (JobStatus.COMPLETED, 3)


async def test_fail_job_fails_for_good_whatever_the_policy(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Script(FailJob("the address does not exist"), clock=clock)
    job = await run_until_done(store, handler, clock, retry=QUICK)
    assert (job.status, job.attempts, job.last_error) == (JobStatus.FAILED, 1, "the address does not exist")


async def test_retry_job_postpones_without_using_an_attempt(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Script(RetryJob("not ready", delay=0.2), RetryJob("still not ready", delay=0.2), "ok", clock=clock)
    job = await run_until_done(store, handler, clock)  # no policy: an explicit retry happens anyway
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 1)
    assert [seen.attempts for seen in handler.seen] == [1, 1, 1]
    assert handler.seen[2].last_error == "still not ready"
    assert handler.started_at[1] - handler.started_at[0] >= timedelta(seconds=0.2)


async def test_retry_job_without_a_delay_waits_the_policys_backoff(clock: Clock) -> None:
    store = MemoryStore[int]()
    slow = RetryPolicy(max_attempts=1, backoff=Backoff(initial=0.3, maximum=0.3, jitter=0))
    handler = Script(RetryJob(), "ok", clock=clock)
    job = await run_until_done(store, handler, clock, retry=slow)
    assert job.status is JobStatus.COMPLETED
    assert handler.started_at[1] - handler.started_at[0] >= timedelta(seconds=0.3)


async def test_a_poison_job_fails_once_its_attempts_are_used_up(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """A job whose process dies every time: each claim counts, none reports an outcome."""
    store = MemoryStore[int]()
    await store.add_job(Job.create(1, process_after=clock(), id="poison"))
    short = timedelta(seconds=0.1)
    claims: list[Job[int]] = []
    for _ in range(2):  # two processes claim it and die with it
        claims += await store.fetch_pending_jobs(clock(), 1, short)
        await anyio.sleep(0.15)
    assert [claim.attempts for claim in claims] == [1, 2]
    await store.add_job(Job.create(2, process_after=clock(), id="canary"))  # due after the poison job
    handler = Script("ok", clock=clock)
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=1, retry=RetryPolicy(max_attempts=2), clock=clock):
            await handler.done.wait()  # one worker: the poison job was dealt with first
    job = await store.get_job("poison")
    assert (job.status, job.attempts) == (JobStatus.FAILED, 3)
    assert job.last_error is not None
    assert job.last_error.startswith("gave up after 2 attempt(s)")
    assert [seen.id for seen in handler.seen] == ["canary"]  # the poison job never ran a third time
    assert any("gave up after 2 attempt(s)" in record.getMessage() for record in caplog.records)


async def test_without_a_policy_a_crashed_job_runs_again(clock: Clock) -> None:
    store = MemoryStore[int]()
    await store.add_job(Job.create(1, process_after=clock(), id="crashed"))
    for _ in range(3):
        await store.fetch_pending_jobs(clock(), 1, timedelta(seconds=0.1))
        await anyio.sleep(0.15)
    handler = Script("ok", clock=clock)
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, fetch_interval=0.05, clock=clock):
            await handler.done.wait()
    assert (await store.get_job("crashed")).status is JobStatus.COMPLETED
    assert (await store.get_job("crashed")).attempts == 4


async def test_a_handler_past_its_timeout_is_cancelled_and_the_attempt_fails(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Script("hang", "hang", clock=clock)
    policy = RetryPolicy(max_attempts=2, backoff=Backoff(initial=0.01, maximum=0.01, jitter=0))
    job = await run_until_done(store, handler, clock, retry=policy, job_timeout=0.2)
    assert (job.status, job.attempts) == (JobStatus.FAILED, 2)
    assert (
        job.last_error == "anysched.JobTimeoutError: the handler ran past the job's timeout of 0.2s and was cancelled"
    )
    assert handler.seen[1].last_error == job.last_error


async def test_a_jobs_own_timeout_overrides_the_schedulers(clock: Clock) -> None:
    store = MemoryStore[int]()
    await store.add_job(Job.create(1, process_after=clock(), id="own", timeout=0.1))
    handler = Script("hang", clock=clock)
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, job_timeout=3600, fetch_interval=0.05, clock=clock):
            await handler.done.wait()
    assert (await store.get_job("own")).status is JobStatus.FAILED
    assert (await store.get_job("own")).last_error is not None
    assert "timeout of 0.1s" in str((await store.get_job("own")).last_error)


async def test_a_job_timeout_longer_than_the_lease_keeps_the_lease(clock: Clock) -> None:
    store = MemoryStore[int]()
    finished = anyio.Event()

    async def long_handler(job: Job[int]) -> None:
        await anyio.sleep(1.0)  # five visibility timeouts
        finished.set()

    await store.add_job(Job.create(1, process_after=clock(), id="long"))
    options: SchedulerOptions = {
        "visibility_timeout": 0.2,
        "store_backoff": FAST_RETRY,
        "job_timeout": 10,
        "clock": clock,
        "retry": QUICK,
    }
    with anyio.fail_after(30):
        async with open_scheduler(store, long_handler, **options):
            await finished.wait()
    job = await store.get_job("long")
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 1)


async def test_shutdown_that_cancels_a_job_with_a_timeout_hands_it_back(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Script("hang", clock=clock)
    await store.add_job(Job.create(1, process_after=clock(), id="cut"))
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, job_timeout=60, retry=QUICK, clock=clock) as scheduler:
            await handler.done.wait()
            scheduler.shutdown(cancel_running=True)
    job = await store.get_job("cut")
    assert (job.status, job.attempts, job.visible_after, job.last_error) == (JobStatus.PENDING, 0, None, None)


async def test_retries_are_logged_with_the_attempt(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anysched")
    store = MemoryStore[int]()
    handler = Script(ValueError("flaky"), "ok", clock=clock)
    await run_until_done(store, handler, clock, retry=QUICK)
    messages = [record.getMessage() for record in caplog.records]
    assert any("failed on worker" in m and "(attempt 1 of 3); retrying in" in m for m in messages)
    assert any("job the-job completed" in m for m in messages)


async def test_the_retry_scenario_on_the_memory_store(clock: Clock) -> None:
    store = MemoryStore[Payload]()
    scenario = RetryScenario()
    await scenario.run(store, clock=clock)
    scenario.check({job.id: job for job in store.jobs()})


async def fail_in_a_task_group(error: Exception) -> None:
    async def raise_it() -> None:
        raise error

    async with anyio.create_task_group() as tg:
        tg.start_soon(raise_it)
        tg.start_soon(anyio.sleep_forever)


async def test_fail_job_inside_the_handlers_task_group_still_decides(clock: Clock) -> None:
    store = MemoryStore[int]()
    await store.add_job(Job.create(1, process_after=clock(), id="grouped"))
    ran = anyio.Event()

    async def handler(job: Job[int]) -> None:
        ran.set()
        await fail_in_a_task_group(FailJob("not deliverable"))

    with anyio.fail_after(30):
        async with open_scheduler(store, handler, retry=QUICK, clock=clock):
            await ran.wait()
    job = await store.get_job("grouped")
    assert (job.status, job.attempts, job.last_error) == (JobStatus.FAILED, 1, "not deliverable")


async def test_retry_job_inside_the_handlers_task_group_postpones(clock: Clock) -> None:
    store = MemoryStore[int]()
    await store.add_job(Job.create(1, process_after=clock(), id="grouped"))
    runs: list[Job[int]] = []
    done = anyio.Event()

    async def handler(job: Job[int]) -> None:
        runs.append(job)
        if len(runs) == 1:
            await fail_in_a_task_group(RetryJob("later", delay=0.05))
        done.set()

    with anyio.fail_after(30):
        async with open_scheduler(store, handler, clock=clock):  # no policy: RetryJob decides
            await done.wait()
    assert [job.attempts for job in runs] == [1, 1]
    assert (await store.get_job("grouped")).status is JobStatus.COMPLETED


async def test_an_ordinary_error_in_a_task_group_is_a_failed_attempt(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Script(ValueError("plain"), "ok", clock=clock)

    async def grouped(job: Job[int]) -> None:
        try:
            await handler(job)
        except ValueError as error:
            await fail_in_a_task_group(error)

    handler_done = handler.done
    await store.add_job(Job.create(1, process_after=clock(), id="grouped"))
    with anyio.fail_after(30):
        async with open_scheduler(store, grouped, retry=QUICK, clock=clock):
            await handler_done.wait()
    job = await store.get_job("grouped")
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 2)
    assert handler.seen[1].last_error is not None
    assert "ExceptionGroup" in handler.seen[1].last_error


async def test_a_store_that_does_not_count_attempts_does_not_crash_the_scheduler(clock: Clock) -> None:
    """Giving an attempt back never goes below zero, even when a store broke the contract."""

    class Uncounting(MemoryStore[int]):
        async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[int]]:
            return [
                replace(job, attempts=0) for job in await super().fetch_pending_jobs(now, limit, visibility_timeout)
            ]

    store = Uncounting()
    await store.add_job(Job.create(1, process_after=clock(), id="uncounted"))
    handler = Script(RetryJob(delay=0.01), "ok", clock=clock)
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, clock=clock):
            await handler.done.wait()
    assert (await store.get_job("uncounted")).status is JobStatus.COMPLETED


async def test_a_retry_delay_past_the_end_of_time_parks_the_job(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Script(RetryJob("never mind", delay=1e13), clock=clock)  # ~300,000 years
    job = await run_until_done(store, handler, clock)
    assert job.status is JobStatus.PENDING
    assert job.process_after.year == 9999
