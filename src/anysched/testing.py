"""The store contract as a pytest suite, for every store: ours and yours.

Subclass :class:`StoreContract` in a test module and give it a ``store`` fixture that
returns an empty store for :class:`Payload` jobs; every test then runs against it on
asyncio and trio (override ``anyio_backend`` for a store bound to one backend)::

    import pytest
    from anysched.testing import Payload, StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        async def store(self):
            async with connect_to_my_database() as db:
                yield MyStore[Payload](db)

This module needs pytest (and trio, for the trio runs); the rest of anysched does not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

from ._exceptions import DuplicateJobError, JobNotFoundError, LeaseLostError
from ._job import Job, JobStatus
from ._store import JobStore

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
"""The suite's "now". Every time it uses is a whole millisecond, as BSON dates keep them."""

VT = timedelta(seconds=30)


@dataclass(frozen=True)
class Payload:
    """The payload type of the suite's jobs: a store must round-trip it exactly."""

    n: int
    note: str = ""
    tags: tuple[str, ...] = ()


def job(n: int, *, due: datetime = T0, job_id: str | None = None) -> Job[Payload]:
    """A pending job with payload ``Payload(n)``, due at ``due``."""
    return Job.create(Payload(n, note=f"job {n}", tags=("a", str(n))), process_after=due, id=job_id)


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def close_to(actual: datetime | None, expected: datetime) -> bool:
    """Equal within the millisecond a database may round to."""
    return actual is not None and abs(actual - expected) <= timedelta(milliseconds=1)


class StoreContract:
    """The tests every :class:`~anysched.JobStore` must pass. Subclass and provide ``store``."""

    pytestmark: ClassVar[pytest.MarkDecorator] = pytest.mark.anyio

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def store(self) -> Any:
        raise NotImplementedError("a StoreContract subclass provides a `store` fixture")

    async def test_is_a_job_store(self, store: JobStore[Payload]) -> None:
        assert isinstance(store, JobStore)

    async def test_fetch_leases_a_due_job(self, store: JobStore[Payload]) -> None:
        added = job(1)
        await store.add_job(added)
        [leased] = await store.fetch_pending_jobs(at(5), 10, VT)
        assert leased.id == added.id
        assert leased.payload == added.payload
        assert isinstance(leased.payload, Payload)
        assert leased.status is JobStatus.PENDING
        assert leased.attempts == 1
        assert leased.lease
        assert close_to(leased.visible_after, at(5) + VT)
        assert close_to(leased.process_after, T0)
        for moment in (leased.process_after, leased.visible_after):
            assert moment is not None
            assert moment.utcoffset() == timedelta(0)

    async def test_fetch_on_an_empty_store(self, store: JobStore[Payload]) -> None:
        assert await store.fetch_pending_jobs(T0, 10, VT) == []

    async def test_fetch_with_limit_zero_claims_nothing(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1))
        assert await store.fetch_pending_jobs(T0, 0, VT) == []
        assert len(await store.fetch_pending_jobs(T0, 1, VT)) == 1

    async def test_a_job_is_not_due_before_process_after(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1, due=at(10)))
        assert await store.fetch_pending_jobs(at(9.999), 10, VT) == []
        assert len(await store.fetch_pending_jobs(at(10), 10, VT)) == 1

    async def test_oldest_due_first_and_limit(self, store: JobStore[Payload]) -> None:
        dues = list(range(20))
        random.Random(5).shuffle(dues)
        for n in dues:
            await store.add_job(job(n, due=at(n)))
        first = await store.fetch_pending_jobs(at(100), 5, VT)
        rest = await store.fetch_pending_jobs(at(100), 100, VT)
        assert [j.payload.n for j in first] == [0, 1, 2, 3, 4]
        assert [j.payload.n for j in rest] == list(range(5, 20))

    async def test_a_leased_job_is_invisible_until_its_lease_expires(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1))
        [first] = await store.fetch_pending_jobs(T0, 10, VT)
        assert await store.fetch_pending_jobs(T0 + VT - timedelta(milliseconds=1), 10, VT) == []
        [again] = await store.fetch_pending_jobs(T0 + VT, 10, VT)
        assert again.id == first.id
        assert again.attempts == 2
        assert again.lease != first.lease

    async def test_update_with_the_lease_writes(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1))
        [leased] = await store.fetch_pending_jobs(T0, 10, VT)
        done = replace(leased, status=JobStatus.COMPLETED, processed_at=at(1), visible_after=None)
        await store.update_job(done)
        assert await store.fetch_pending_jobs(at(3600), 10, VT) == []

    async def test_a_failed_job_is_not_fetched_again(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1))
        [leased] = await store.fetch_pending_jobs(T0, 10, VT)
        failed = replace(leased, status=JobStatus.FAILED, processed_at=at(1), visible_after=None, last_error="boom")
        await store.update_job(failed)
        assert await store.fetch_pending_jobs(at(3600), 10, VT) == []

    async def test_a_released_job_is_visible_at_once(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1))
        [leased] = await store.fetch_pending_jobs(T0, 10, VT)
        await store.update_job(replace(leased, visible_after=None, attempts=leased.attempts - 1))
        [again] = await store.fetch_pending_jobs(at(1), 10, VT)
        assert again.id == leased.id
        assert again.attempts == 1

    async def test_a_retried_job_is_due_again_after_its_delay(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1))
        [leased] = await store.fetch_pending_jobs(T0, 10, VT)
        await store.update_job(replace(leased, process_after=at(60), visible_after=None, last_error="boom"))
        assert await store.fetch_pending_jobs(at(59), 10, VT) == []
        [again] = await store.fetch_pending_jobs(at(60), 10, VT)
        assert (again.attempts, again.last_error) == (2, "boom")
        assert close_to(again.process_after, at(60))

    async def test_a_jobs_own_limits_are_kept(self, store: JobStore[Payload]) -> None:
        await store.add_job(Job.create(Payload(1), process_after=T0, max_attempts=5, timeout=2.5))
        await store.add_job(job(2))
        leased = {j.payload.n: j for j in await store.fetch_pending_jobs(T0, 10, VT)}
        assert (leased[1].max_attempts, leased[1].timeout) == (5, 2.5)
        assert (leased[2].max_attempts, leased[2].timeout) == (None, None)
        await store.update_job(replace(leased[1], visible_after=None, max_attempts=7, timeout=None))
        [again] = await store.fetch_pending_jobs(at(1), 10, VT)
        assert (again.max_attempts, again.timeout) == (7, None)

    async def test_a_renewed_lease_hides_the_job_longer(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1))
        [leased] = await store.fetch_pending_jobs(T0, 10, VT)
        await store.update_job(replace(leased, visible_after=at(100)))
        assert await store.fetch_pending_jobs(at(99), 10, VT) == []
        assert len(await store.fetch_pending_jobs(at(100), 10, VT)) == 1

    async def test_a_lost_lease_is_fenced_out(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1))
        [stale] = await store.fetch_pending_jobs(T0, 10, VT)
        [current] = await store.fetch_pending_jobs(T0 + VT, 10, VT)
        with pytest.raises(LeaseLostError):
            await store.update_job(replace(stale, status=JobStatus.COMPLETED, processed_at=at(40)))
        # the current holder's lease is untouched: its job stays leased, then completes
        assert await store.fetch_pending_jobs(T0 + VT + timedelta(seconds=1), 10, VT) == []
        await store.update_job(replace(current, status=JobStatus.COMPLETED, processed_at=at(41)))

    async def test_an_unleased_job_cannot_be_updated(self, store: JobStore[Payload]) -> None:
        added = job(1)
        await store.add_job(added)
        with pytest.raises(LeaseLostError):
            await store.update_job(replace(added, status=JobStatus.COMPLETED, lease="not-a-lease"))
        assert len(await store.fetch_pending_jobs(T0, 10, VT)) == 1

    async def test_update_of_an_unknown_job(self, store: JobStore[Payload]) -> None:
        with pytest.raises(JobNotFoundError):
            await store.update_job(replace(job(1), lease="whatever"))

    async def test_a_duplicate_id_changes_nothing(self, store: JobStore[Payload]) -> None:
        await store.add_job(job(1, job_id="same"))
        with pytest.raises(DuplicateJobError):
            await store.add_job(job(2, job_id="same", due=at(-100)))
        [only] = await store.fetch_pending_jobs(at(1), 10, VT)
        assert only.payload.n == 1
        assert close_to(only.process_after, T0)

    async def test_aware_times_in_other_zones_mean_the_same_instant(self, store: JobStore[Payload]) -> None:
        plus_two = timezone(timedelta(hours=2))
        await store.add_job(job(1, due=at(10).astimezone(plus_two)))
        assert await store.fetch_pending_jobs(at(9), 10, VT) == []
        [leased] = await store.fetch_pending_jobs(at(10).astimezone(plus_two), 10, VT)
        assert close_to(leased.process_after, at(10))
        assert leased.process_after.utcoffset() == timedelta(0)

    async def test_concurrent_fetchers_never_share_a_job(self, store: JobStore[Payload]) -> None:
        count, fetchers = 60, 6
        for n in range(count):
            await store.add_job(job(n))
        claims: list[list[str]] = [[] for _ in range(fetchers)]

        async def fetch(mine: list[str]) -> None:
            while batch := await store.fetch_pending_jobs(at(1), 3, VT):
                mine.extend(j.id for j in batch)
                await anyio.lowlevel.checkpoint()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for mine in claims:
                    tg.start_soon(fetch, mine)
        every = [job_id for mine in claims for job_id in mine]
        assert len(every) == count
        assert len(set(every)) == count
