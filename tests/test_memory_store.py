from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from anysched import JobNotFoundError, JobStatus, MemoryStore
from anysched.testing import T0, VT, Payload, StoreContract, at, job


class TestMemoryStoreContract(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore[Payload]:
        return MemoryStore[Payload]()


pytestmark = pytest.mark.anyio


async def test_snapshot_get_and_counts() -> None:
    store = MemoryStore[Payload]()
    for n in range(3):
        await store.add_job(job(n, job_id=f"j{n}"))
    [leased] = await store.fetch_pending_jobs(T0, 1, VT)
    await store.update_job(replace(leased, status=JobStatus.COMPLETED, processed_at=at(1), visible_after=None))
    assert [j.id for j in store.jobs()] == ["j0", "j1", "j2"]
    assert store.get_job("j0").status is JobStatus.COMPLETED
    assert (store.count(), store.count(JobStatus.PENDING), store.count(JobStatus.COMPLETED)) == (3, 2, 1)
    assert len(store) == 3
    with pytest.raises(JobNotFoundError, match="no job with id 'nope'"):
        store.get_job("nope")


async def test_purge_removes_only_old_completed_jobs() -> None:
    store = MemoryStore[Payload]()
    for n in range(4):
        await store.add_job(job(n, job_id=f"j{n}"))
    leased = await store.fetch_pending_jobs(T0, 3, VT)
    for n, j in enumerate(leased[:2]):
        await store.update_job(replace(j, status=JobStatus.COMPLETED, processed_at=at(n * 10)))
    await store.update_job(replace(leased[2], status=JobStatus.FAILED, processed_at=at(0)))
    assert store.purge(completed_before=at(5)) == 1
    assert sorted(j.id for j in store.jobs()) == ["j1", "j2", "j3"]
    assert store.count(JobStatus.COMPLETED) == 1
    with pytest.raises(ValueError, match="completed_before must be timezone-aware"):
        store.purge(completed_before=T0.replace(tzinfo=None))


async def test_next_due_time_follows_due_times_and_leases() -> None:
    store = MemoryStore[Payload]()
    assert await store.next_due_time() is None
    await store.add_job(job(1, due=at(10)))
    await store.add_job(job(2, due=at(20)))
    assert await store.next_due_time() == at(10)
    [first] = await store.fetch_pending_jobs(at(10), 1, VT)
    assert await store.next_due_time() == at(20)
    await store.update_job(replace(first, status=JobStatus.COMPLETED, visible_after=None))
    [_second] = await store.fetch_pending_jobs(at(25), 1, VT)
    assert await store.next_due_time() == at(25) + VT  # the lease's expiry


async def test_a_caller_with_a_slower_clock_does_not_claim_early() -> None:
    store = MemoryStore[Payload]()
    await store.add_job(job(1, due=at(10)))
    await store.add_job(job(2, due=at(20)))
    assert [j.payload.n for j in await store.fetch_pending_jobs(at(25), 1, VT)] == [1]
    assert await store.fetch_pending_jobs(at(15), 5, VT) == []  # job 2 is promoted but not due at 15
    assert [j.payload.n for j in await store.fetch_pending_jobs(at(20), 5, VT)] == [2]


@pytest.mark.parametrize(
    ("limit", "visibility_timeout", "message"),
    [
        (-1, VT, "limit must be an int >= 0"),
        (1.5, VT, "limit must be an int >= 0"),
        (1, timedelta(0), "visibility_timeout must be a positive timedelta"),
        (1, 30, "visibility_timeout must be a positive timedelta"),
    ],
)
async def test_bad_claim_arguments(limit: int, visibility_timeout: timedelta, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await MemoryStore[Payload]().fetch_pending_jobs(T0, limit, visibility_timeout)


async def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        await MemoryStore[Payload]().fetch_pending_jobs(T0.replace(tzinfo=None), 1, VT)


async def test_only_jobs_are_stored() -> None:
    with pytest.raises(TypeError, match=r"job must be an anysched\.Job"):
        await MemoryStore[Payload]().add_job({"id": "x"})  # type: ignore[arg-type]


async def test_finished_and_renewed_jobs_do_not_pile_up_in_the_index() -> None:
    """Each update leaves a superseded index entry until its lease time; the store compacts them."""
    store = MemoryStore[Payload]()
    count = 5000
    for n in range(count):
        await store.add_job(job(n, job_id=f"j{n}"))
    hour = timedelta(hours=1)
    for leased in await store.fetch_pending_jobs(T0, count, hour):
        await store.update_job(replace(leased, visible_after=at(1800)))  # a renewal
        await store.update_job(replace(leased, status=JobStatus.COMPLETED, processed_at=at(1), visible_after=None))
    await store.add_job(job(-1, job_id="last", due=at(5)))
    entries = len(store._waiting) + len(store._ready)
    assert entries <= 2 * 1 + 1024  # without compaction: 10,001
    assert await store.next_due_time() == at(5)
    [last] = await store.fetch_pending_jobs(at(3600), 10, hour)
    assert last.id == "last"
