"""Schedulers on a PostgresStore: a batch end to end, several schedulers sharing one table, the
retry scenario, and the server killing the store's connections mid-run."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from postgres_support import terminate_backends

from anysched import Backoff, Job, JobStatus, open_scheduler
from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload
from support import Done, RetryScenario, SchedulerOptions

pytestmark = pytest.mark.anyio

STORE_BACKOFF = Backoff(initial=0.05, maximum=0.5, jitter=0.05)


def fast(workers: int) -> SchedulerOptions:
    """A scheduler of ``workers`` that polls often and retries the store soon."""
    return {"workers": workers, "fetch_interval": 0.2, "store_backoff": STORE_BACKOFF}


async def _add(store: PostgresStore[Payload], count: int) -> list[str]:
    jobs = [Job.create(Payload(n), id=f"j{n:03d}") for n in range(count)]
    await store.add_jobs(jobs)
    return [job.id for job in jobs]


async def test_a_scheduler_processes_a_batch_end_to_end(store: PostgresStore[Payload]) -> None:
    ids = await _add(store, 24)
    done = Done(len(ids))

    async def handler(job: Job[Payload]) -> None:
        done.record(job)
        if job.payload.n % 6 == 5:
            raise ValueError(f"job {job.payload.n} fails on purpose")

    with anyio.fail_after(60):
        async with open_scheduler(store, handler, **fast(4)):
            await done.all_done.wait()
    assert set(done.handled) == set(ids)
    assert all(count == 1 for count in done.handled.values())
    assert await store.count(JobStatus.COMPLETED) == 20
    assert await store.count(JobStatus.FAILED) == 4
    failed = await store.get_job("j005")
    assert failed.last_error == "ValueError: job 5 fails on purpose"
    assert failed.attempts == 1


async def test_schedulers_sharing_a_table_never_share_a_job(postgres_url: str, schema: str) -> None:
    schedulers, count = 3, 60
    done = Done(count)

    async def run_one(who: int, ready: anyio.Event) -> None:
        async with PostgresStore(postgres_url, Payload, schema=schema) as store:

            async def handler(job: Job[Payload]) -> None:
                done.record(job, who)
                await anyio.lowlevel.checkpoint()

            async with open_scheduler(store, handler, **fast(3)):
                ready.set()
                await done.all_done.wait()

    ids: list[str] = []  # the adder's; bound before the blocks, which might swallow an exception to pyright
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            started = [anyio.Event() for _ in range(schedulers)]
            for who, ready in enumerate(started):
                tg.start_soon(run_one, who, ready)
            for ready in started:
                await ready.wait()
            async with PostgresStore(postgres_url, Payload, schema=schema) as adder:
                ids = await _add(adder, count)
    assert set(done.handled) == set(ids)
    assert len({who for owners in done.by.values() for who in owners}) > 1  # the work was shared
    assert [job_id for job_id, n in done.handled.items() if n != 1] == []


async def test_retries_timeouts_and_explicit_outcomes_on_postgres(store: PostgresStore[Payload]) -> None:
    scenario = RetryScenario()
    await scenario.run(store, store_backoff=STORE_BACKOFF)
    scenario.check({job_id: await store.get_job(job_id) for job_id in scenario.runs})


# A connection the server killed while a worker thread held it (on trio a cancelled call abandons its
# thread) can be finalised by psycopg after the pool let it go, with a ResourceWarning from its
# __del__: psycopg's clean-up of a connection the test killed on purpose, not a leak of ours. Seen once
# in a heavily loaded CI run; only that finaliser's warning is let through, and only here.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*BaseConnection.__del__:pytest.PytestUnraisableExceptionWarning"
)
async def test_the_run_goes_on_when_the_server_kills_the_stores_connections(
    postgres_url: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    name = f"anysched_kill_{schema[-12:]}"
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={name}"
    count, kill_at = 60, (10, 25, 40)
    done = Done(count)
    kills: list[int] = []

    async def handler(job: Job[Payload]) -> None:
        done.record(job)
        if len(done.handled) in kill_at and len(kills) < len(kill_at):
            # every connection of the store's, the listener's and the pool's, mid-run
            kills.append(await anyio.to_thread.run_sync(terminate_backends, postgres_url, name))

    with anyio.fail_after(90):
        async with PostgresStore(url, Payload, schema=schema) as store:
            ids = await _add(store, count)
            async with open_scheduler(store, handler, **fast(4)):
                await done.all_done.wait()
            assert await store.count(JobStatus.COMPLETED) == count  # every outcome was written
    assert len(kills) == len(kill_at)
    assert sum(kills) > 0
    assert set(done.handled) == set(ids)
    assert any("TransientStoreError" in record.getMessage() for record in caplog.records)
    assert "postgresql://" not in caplog.text
