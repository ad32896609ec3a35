"""The scheduler at work: fetching, running, recording, renewing, recovering."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import anyio
import pytest

from anysched import Job, JobStatus, MemoryStore, Scheduler, open_scheduler
from support import FAST_RETRY, Recorder, SchedulerOptions, WrappedStore, add_jobs, checkpoints

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]


async def test_runs_every_job_once_and_records_it(clock: Clock) -> None:
    store = MemoryStore[int]()
    jobs = await add_jobs(store, 50, due=clock())
    handler = Recorder[int]()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=5, clock=clock):
            await handler.wait_finished(50)
    assert set(handler.runs) == {job.id for job in jobs}
    assert set(handler.runs.values()) == {1}
    for job in store.jobs():
        assert job.status is JobStatus.COMPLETED
        assert job.processed_at is not None
        assert job.visible_after is None
        assert job.attempts == 1


async def test_the_handler_receives_the_payload(clock: Clock) -> None:
    store = MemoryStore[dict[str, str]]()
    await store.add_job(Job.create({"to": "ada@example.com"}, process_after=clock()))
    seen: list[dict[str, str]] = []
    done = anyio.Event()

    async def handler(job: Job[dict[str, str]]) -> None:
        seen.append(job.payload)
        done.set()

    with anyio.fail_after(30):
        async with open_scheduler(store, handler, clock=clock):
            await done.wait()
    assert seen == [{"to": "ada@example.com"}]


async def test_jobs_run_oldest_due_first(clock: Clock) -> None:
    store = MemoryStore[int]()
    now = clock()
    for n in (3, 1, 4, 0, 2):
        await store.add_job(Job.create(n, process_after=now - timedelta(seconds=10 - n), id=f"job-{n}"))
    handler = Recorder[int]()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=1, buffer_size=0, clock=clock):
            await handler.wait_finished(5)
    assert handler.order == [f"job-{n}" for n in range(5)]


async def test_a_job_does_not_run_before_it_is_due(clock: Clock) -> None:
    store = MemoryStore[int]()
    start = clock()
    await store.add_job(Job.create(1, process_after=start + timedelta(seconds=0.5)))
    handler = Recorder[int]()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, fetch_interval=0.05, clock=clock):
            await handler.wait_finished(1)
    assert handler.started[0].visible_after is not None
    assert handler.started[0].visible_after - timedelta(seconds=30) >= start + timedelta(seconds=0.5)


async def test_a_failing_handler_marks_its_job_failed_and_the_scheduler_goes_on(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 10, due=clock())
    handler = Recorder[int](fail=lambda job: job.payload % 3 == 0)
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=2, clock=clock):
            await handler.wait_finished(10)
    failed = {job.id: job for job in store.jobs() if job.status is JobStatus.FAILED}
    assert set(failed) == {"job-00000", "job-00003", "job-00006", "job-00009"}
    assert failed["job-00003"].last_error == "ValueError: boom job-00003"
    assert failed["job-00003"].processed_at is not None
    assert await store.count(JobStatus.COMPLETED) == 6
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "job-00003 failed" in r.getMessage()]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


async def test_a_job_added_through_the_scheduler_starts_at_once(clock: Clock) -> None:
    store = MemoryStore[int]()
    handler = Recorder[int]()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, fetch_interval=3600, clock=clock) as scheduler:
            await anyio.wait_all_tasks_blocked()  # the fetcher sleeps: nothing is due
            added_at = anyio.current_time()
            await scheduler.add_job(Job.create(1, process_after=clock()))
            await handler.wait_finished(1)
            assert anyio.current_time() - added_at < 1.0


async def test_the_fetcher_sleeps_until_the_next_due_time_not_the_interval(clock: Clock) -> None:
    store = MemoryStore[int]()
    start = anyio.current_time()
    await store.add_job(Job.create(1, process_after=clock() + timedelta(seconds=0.3)))
    handler = Recorder[int]()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, fetch_interval=3600, clock=clock):
            await handler.wait_finished(1)
            assert 0.3 <= anyio.current_time() - start < 2.0


async def test_fetching_follows_demand_and_never_polls_while_the_stream_is_full(clock: Clock) -> None:
    store = WrappedStore[int]()
    await add_jobs(store.inner, 100, due=clock())
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=4, buffer_size=3, fetch_interval=0.01, clock=clock):
            await handler.wait_running(4)
            fetches = store.calls["fetch_pending_jobs"]
            leased = [job for job in store.inner.jobs() if job.visible_after is not None]
            assert len(leased) == 4 + 3  # exactly the running jobs plus a full buffer
            await anyio.sleep(0.5)  # fifty fetch intervals, every worker busy
            assert store.calls["fetch_pending_jobs"] == fetches
            handler.gate.set()
            await handler.wait_finished(100)
    assert await store.inner.count(JobStatus.COMPLETED) == 100


async def test_a_flaky_store_loses_nothing_and_runs_nothing_twice(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = WrappedStore[int](fail_rate=0.3, seed=7)
    await add_jobs(store.inner, 200, due=clock())
    handler = Recorder[int]()
    with anyio.fail_after(60):
        async with open_scheduler(store, handler, workers=8, store_backoff=FAST_RETRY, clock=clock) as scheduler:
            for n in range(200, 220):
                await scheduler.add_job(Job.create(n, process_after=clock(), id=f"job-{n:05d}"))
            await handler.wait_finished(220)
    assert await store.inner.count(JobStatus.COMPLETED) == 220
    assert set(handler.runs.values()) == {1}
    assert all(store.failures[op] > 0 for op in ("fetch_pending_jobs", "update_job", "add_job"))
    retries = [r.getMessage() for r in caplog.records if r.name == "anysched" and "retrying" in r.getMessage()]
    assert len(retries) == sum(store.failures.values())
    assert any(message.startswith("store update_job (completed) failed (attempt 1, job job-") for message in retries)


async def test_a_permanent_store_error_stops_the_scheduler_and_surfaces(clock: Clock) -> None:
    class BrokenStore(MemoryStore[int]):
        async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[int]]:
            raise PermissionError("authentication failed")

    with anyio.fail_after(30), pytest.RaisesGroup(PermissionError, flatten_subgroups=True):
        async with open_scheduler(BrokenStore(), Recorder[int](), clock=clock):
            await anyio.sleep_forever()


async def test_a_long_job_keeps_its_lease_and_runs_once(clock: Clock) -> None:
    store = MemoryStore[int]()
    [job] = await add_jobs(store, 1, due=clock())
    runs: list[str] = []
    long_job_started, long_job_done = anyio.Event(), anyio.Event()

    async def long_handler(job: Job[int]) -> None:
        runs.append("first")
        long_job_started.set()
        await anyio.sleep(3.0)  # ten visibility timeouts
        long_job_done.set()

    async def other_handler(job: Job[int]) -> None:
        runs.append("second")

    options: SchedulerOptions = {
        "visibility_timeout": 0.3,
        "fetch_interval": 0.05,
        "store_backoff": FAST_RETRY,
        "clock": clock,
    }
    with anyio.fail_after(30):
        async with open_scheduler(store, long_handler, **options):
            await long_job_started.wait()
            async with open_scheduler(store, other_handler, **options):
                await long_job_done.wait()  # the second scheduler polled all along
    assert runs == ["first"]
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
    assert (await store.get_job(job.id)).attempts == 1


async def test_a_job_whose_worker_died_runs_again_after_its_lease_expires(clock: Clock) -> None:
    store = MemoryStore[int]()
    [job] = await add_jobs(store, 1, due=clock())
    [dead] = await store.fetch_pending_jobs(clock(), 1, timedelta(seconds=0.5))  # a process that then died
    handler = Recorder[int]()
    start = anyio.current_time()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, fetch_interval=0.05, clock=clock):
            await handler.wait_finished(1)
    assert anyio.current_time() - start >= 0.499
    assert handler.started[0].attempts == 2
    assert handler.started[0].lease != dead.lease
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED


async def test_a_handler_whose_lease_is_lost_is_cancelled(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore[int]()
    [job] = await add_jobs(store, 1, due=clock())
    cancelled = anyio.Event()
    started = anyio.Event()

    async def handler(job: Job[int]) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    with anyio.fail_after(30):
        async with open_scheduler(store, handler, visibility_timeout=0.3, store_backoff=FAST_RETRY, clock=clock):
            await started.wait()
            # someone else takes the job over (as if our lease had expired unseen)
            stolen = await store.get_job(job.id)
            await store.update_job(replace(stolen, visible_after=None))
            [thief] = await store.fetch_pending_jobs(clock(), 1, timedelta(seconds=60))
            await cancelled.wait()
    assert (await store.get_job(job.id)).lease == thief.lease  # our scheduler wrote nothing after losing it
    assert (await store.get_job(job.id)).status is JobStatus.PENDING
    assert any("lease was lost" in r.getMessage() for r in caplog.records)


async def test_a_renewal_stuck_when_its_handler_returns_does_not_cost_the_outcome(clock: Clock) -> None:
    """The renewal never answers; the handler returns within the lease. The outcome's write is
    fenced by the lease token, so it is tried (and here lands) instead of being dropped."""
    store = WrappedStore[int]()
    store.block["update_job"] = 1  # the first update, the renewal, never returns
    [job] = await add_jobs(store.inner, 1, due=clock())
    returned = anyio.Event()

    async def handler(job: Job[int]) -> None:
        await store.blocked.wait()
        returned.set()

    options: SchedulerOptions = {"visibility_timeout": 0.3, "store_backoff": FAST_RETRY, "clock": clock}
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, **options):
            await returned.wait()
    assert (await store.inner.get_job(job.id)).status is JobStatus.COMPLETED
    assert store.calls["update_job"] == 2  # the stuck renewal, then the outcome


async def test_a_handler_that_ends_on_its_own_past_an_unanswered_renewal_has_its_outcome_written(
    clock: Clock,
) -> None:
    """The renewal never answers and the lease runs out, so the handler is cancelled; but it is in a
    shielded section and returns by itself. It has a result: the write, fenced by the lease token,
    lands (nobody else claimed the job) instead of the job running again."""
    store = WrappedStore[int]()
    store.block["update_job"] = 1  # the first update, the renewal, never returns
    [job] = await add_jobs(store.inner, 1, due=clock())
    returned = anyio.Event()

    async def handler(job: Job[int]) -> None:
        with anyio.CancelScope(shield=True):
            await store.blocked.wait()
            await anyio.sleep(0.4)  # past the lease's end (0.3 s)
        returned.set()

    options: SchedulerOptions = {"visibility_timeout": 0.3, "store_backoff": FAST_RETRY, "clock": clock}
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, **options):
            await returned.wait()
    stored = await store.inner.get_job(job.id)
    assert (stored.status, stored.attempts) == (JobStatus.COMPLETED, 1)  # recorded, never claimed again


async def test_a_job_that_waited_too_long_in_the_buffer_is_renewed_before_it_starts(clock: Clock) -> None:
    store = WrappedStore[int]()
    await add_jobs(store.inner, 2, due=clock())
    handler = Recorder[int]()
    handler.gate = anyio.Event()
    with anyio.fail_after(30):
        async with open_scheduler(
            store, handler, workers=1, buffer_size=1, visibility_timeout=0.3, store_backoff=FAST_RETRY, clock=clock
        ):
            await handler.wait_running(1)
            await anyio.sleep(0.2)  # the buffered job's lease is two thirds gone
            handler.gate.set()
            await handler.wait_finished(2)
    second = handler.started[1]
    assert second.visible_after is not None
    assert second.visible_after - clock() > timedelta(seconds=0.1)
    assert set(handler.runs.values()) == {1}


async def test_two_schedulers_on_one_store_run_each_job_once(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 300, due=clock())
    handler = Recorder[int]()
    first: list[str] = []
    second: list[str] = []

    async def via_first(job: Job[int]) -> None:
        first.append(job.id)
        await handler(job)

    async def via_second(job: Job[int]) -> None:
        second.append(job.id)
        await handler(job)

    with anyio.fail_after(30):
        async with (
            open_scheduler(store, via_first, workers=3, clock=clock),
            open_scheduler(store, via_second, workers=3, clock=clock),
        ):
            await handler.wait_finished(300)
    assert set(handler.runs.values()) == {1}
    assert len(handler.runs) == 300
    assert first
    assert second
    assert await store.count(JobStatus.COMPLETED) == 300


async def test_a_never_awaiting_handler_lets_other_tasks_run(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 2000, due=clock())
    done = 0
    seen_by_watcher: list[int] = []

    async def handler(job: Job[int]) -> None:  # never awaits
        nonlocal done
        done += 1

    async def watcher() -> None:
        while done < 2000:
            seen_by_watcher.append(done)
            await checkpoints(1)

    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=4, clock=clock), anyio.create_task_group() as tg:
            tg.start_soon(watcher)
    assert len({n for n in seen_by_watcher if 0 < n < 2000}) > 10  # it ran all along, not just before and after


async def test_embedding_with_task_group_start(clock: Clock) -> None:
    store = MemoryStore[int]()
    await add_jobs(store, 5, due=clock())
    handler = Recorder[int]()
    scheduler = Scheduler(store, handler, clock=clock)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            started = await tg.start(scheduler.run)
            assert started is scheduler
            await handler.wait_finished(5)
            scheduler.shutdown()
        await scheduler.wait_stopped()
    assert await store.count(JobStatus.COMPLETED) == 5


async def test_a_scheduler_runs_once(clock: Clock) -> None:
    scheduler = Scheduler(MemoryStore[int](), Recorder[int](), clock=clock)
    with pytest.raises(RuntimeError, match="not been started"):
        await scheduler.wait_stopped()
    scheduler.shutdown()  # before start: it stops at once when run
    with anyio.fail_after(30):
        await scheduler.run()
    with pytest.raises(RuntimeError, match="already been started"):
        await scheduler.run()
