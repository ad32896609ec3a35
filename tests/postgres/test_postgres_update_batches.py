"""Concurrent ``update_job`` calls of one PostgresStore go out together, each still fenced by its own
lease and answered with its own outcome; two updates of one job never share a batch."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

from anysched import Job, JobNotFoundError, JobStatus, LeaseLostError
from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload

pytestmark = pytest.mark.anyio

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
VT = timedelta(seconds=30)


def _count_batches(store: PostgresStore[Payload]) -> list[list[str]]:
    """The job ids of each batch the store sends from now on (one-row writes are not batches)."""
    batches: list[list[str]] = []
    updates = store._updates  # pyright: ignore[reportPrivateUsage]
    write_many = updates._write_many  # pyright: ignore[reportPrivateUsage]

    async def counting(rows: list[dict[str, Any]]) -> set[str]:
        batches.append([row["id"] for row in rows])
        return await write_many(rows)

    updates._write_many = counting  # pyright: ignore[reportPrivateUsage]
    return batches


async def _leased(store: PostgresStore[Payload], count: int) -> list[Job[Payload]]:
    await store.add_jobs([Job.create(Payload(n), id=f"j{n:02d}", process_after=NOW) for n in range(count)])
    return await store.fetch_pending_jobs(NOW, count, VT)


def _completed(job: Job[Payload]) -> Job[Payload]:
    return replace(job, status=JobStatus.COMPLETED, visible_after=None, processed_at=NOW)


async def test_concurrent_updates_are_batched_and_each_gets_its_own_outcome(store: PostgresStore[Payload]) -> None:
    jobs = await _leased(store, 12)
    batches = _count_batches(store)
    outcomes: dict[str, str] = {}

    async def update(job: Job[Payload]) -> None:
        try:
            await store.update_job(job)
            outcomes[job.id] = "ok"
        except (LeaseLostError, JobNotFoundError) as error:
            outcomes[job.id] = type(error).__name__

    stale = replace(jobs[0], lease="not-the-lease")
    unknown = replace(jobs[1], id="nobody")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for job in [stale, unknown, *(_completed(job) for job in jobs[1:])]:
                tg.start_soon(update, job)
    assert outcomes == {"j00": "LeaseLostError", "nobody": "JobNotFoundError"} | {job.id: "ok" for job in jobs[1:]}
    assert max(map(len, batches), default=0) > 1  # some went out together
    assert await store.count(JobStatus.COMPLETED) == 11
    assert (await store.get_job("j00")).status is JobStatus.PENDING


async def test_two_updates_of_one_job_never_share_a_batch(store: PostgresStore[Payload]) -> None:
    (job,) = await _leased(store, 1)
    others = await _leased_more(store)
    renewed = replace(job, visible_after=NOW + 2 * VT)
    done = _completed(job)
    batches = _count_batches(store)
    results: list[str] = []

    async def update(update: Job[Payload]) -> None:
        try:
            await store.update_job(update)
            results.append("ok")
        except LeaseLostError:
            results.append("lost")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for update_ in (renewed, done, *(_completed(other) for other in others)):
                tg.start_soon(update, update_)
    # Whichever of the two is sent first lands: the outcome always (a renewal sent after it is refused).
    assert results.count("ok") in (len(others) + 1, len(others) + 2)
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
    assert all(len(batch) == len(set(batch)) for batch in batches)


async def _leased_more(store: PostgresStore[Payload]) -> list[Job[Payload]]:
    await store.add_jobs([Job.create(Payload(n), id=f"k{n:02d}", process_after=NOW) for n in range(4)])
    return await store.fetch_pending_jobs(NOW, 4, VT)


async def test_a_cancelled_caller_leaves_no_one_waiting(store: PostgresStore[Payload]) -> None:
    jobs = await _leased(store, 8)
    finished: list[str] = []

    async def update(job: Job[Payload]) -> None:
        try:
            await store.update_job(job)
        except Exception as error:  # a batch cut short by the cancelled leader is transient
            finished.append(type(error).__name__)
        else:
            finished.append("ok")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as first:
                first.cancel()
                await store.update_job(_completed(jobs[0]))  # cancelled before it is sent
            for job in jobs[1:]:
                tg.start_soon(update, _completed(job))
    assert len(finished) == len(jobs) - 1
    assert set(finished) <= {"ok", "TransientStoreError"}
