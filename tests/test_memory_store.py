# White-box tests: they read the store's private state and use anysched.testing's private helpers.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta

import pytest

from anysched import JobNotFoundError, JobStatus, MemoryStore
from anysched.testing import _T0 as T0
from anysched.testing import _VT as VT
from anysched.testing import Payload, StoreContract
from anysched.testing import _at as at
from anysched.testing import _job as job


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
    assert (await store.get_job("j0")).status is JobStatus.COMPLETED
    assert [await store.count(status) for status in (None, JobStatus.PENDING, JobStatus.COMPLETED)] == [3, 2, 1]
    assert len(store) == 3
    with pytest.raises(JobNotFoundError, match="no job with id 'nope'"):
        await store.get_job("nope")


async def test_purge_removes_only_old_completed_jobs() -> None:
    store = MemoryStore[Payload]()
    for n in range(4):
        await store.add_job(job(n, job_id=f"j{n}"))
    leased = await store.fetch_pending_jobs(T0, 3, VT)
    for n, j in enumerate(leased[:2]):
        await store.update_job(replace(j, status=JobStatus.COMPLETED, processed_at=at(n * 10)))
    await store.update_job(replace(leased[2], status=JobStatus.FAILED, processed_at=at(0)))
    assert await store.purge(completed_before=at(5)) == 1
    assert sorted(j.id for j in store.jobs()) == ["j1", "j2", "j3"]
    assert await store.count(JobStatus.COMPLETED) == 1
    with pytest.raises(ValueError, match="completed_before must be timezone-aware"):
        await store.purge(completed_before=T0.replace(tzinfo=None))


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
        await MemoryStore[Payload]().add_job({"id": "x"})  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


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


async def test_next_due_time_is_when_a_job_becomes_claimable_after_a_clock_step() -> None:
    """A caller whose clock runs ahead promotes a leased job to the ready heap; one with the
    true clock must then be told the lease's end, not the job's past due time (which sent the
    fetcher into a loop of empty claims)."""
    store = MemoryStore[Payload]()
    await store.add_job(job(1, job_id="leased"))
    [leased] = await store.fetch_pending_jobs(T0, 10, VT)  # leased until T0 + VT
    await store.add_job(job(0, job_id="early", due=at(-5)))
    [early] = await store.fetch_pending_jobs(at(45), 1, VT)  # a clock 40 s ahead promotes "leased" too
    assert early.id == "early"
    await store.add_job(job(2, job_id="other"))
    [other] = await store.fetch_pending_jobs(at(5), 10, VT)  # the true clock
    assert other.id == "other"
    # "leased" went back to waiting, keyed by its lease's end: no later fetch re-examines it before then
    assert [entry[2] for entry in store._ready] == []
    assert await store.next_due_time() == leased.visible_after
    assert await store.fetch_pending_jobs(at(45), 0, VT) == []  # promoted again by the fast clock
    assert await store.next_due_time() == leased.visible_after  # not T0, its due time
    [again] = await store.fetch_pending_jobs(T0 + VT, 10, VT)
    assert (again.id, again.attempts) == ("leased", 2)


async def test_an_empty_claim_is_never_followed_by_a_past_due_time() -> None:
    """Whatever the callers' clocks, after a claim that leaves room, the next due time is in
    the claimer's future: a fetcher that sleeps until it never spins."""
    rng = random.Random(7)
    store = MemoryStore[Payload]()
    for n in range(200):
        await store.add_job(job(n, due=at(rng.uniform(0, 100))))
    for _ in range(400):
        now = at(rng.uniform(0, 150))
        limit = rng.choice([1, 3, 1000])
        claimed = await store.fetch_pending_jobs(now, limit, timedelta(seconds=rng.uniform(1, 60)))
        for leased in claimed:
            if rng.random() < 0.3:
                await store.update_job(replace(leased, status=JobStatus.COMPLETED, visible_after=None))
        if len(claimed) < limit:  # all that was claimable at `now` was claimed
            due = await store.next_due_time()
            assert due is None or due > now, (due, now)
