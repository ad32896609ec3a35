"""The store contract as a pytest suite, for every store: ours and yours.

Subclass :class:`StoreContract` in a test module and give it a ``store`` fixture that
returns an empty store for :class:`Payload` jobs; every test then runs against it on
asyncio and trio (override ``anyio_backend`` for a store bound to one backend). The
``test_inspection_*`` tests check :class:`~anysched.InspectsJobs` on a store that implements
it, and are skipped on one that does not; the ``test_wake_ups_*`` tests check
:class:`~anysched.SendsWakeUps` when the subclass also gives an ``other_store`` fixture (a second
store object on the same database)::

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
from typing import Any, ClassVar, cast

import anyio
import anyio.lowlevel
import pytest

from ._exceptions import DuplicateJobError, JobNotFoundError, LeaseLostError
from ._job import Job, JobStatus
from ._store import InspectsJobs, JobStore, SendsWakeUps

__all__ = ("Payload", "StoreContract")

_T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
"""The suite's "now". Every time it uses is a whole millisecond, as BSON dates keep them."""

_VT = timedelta(seconds=30)


@dataclass(frozen=True)
class Payload:
    """The payload type of the suite's jobs: a store must round-trip it exactly."""

    n: int
    note: str = ""
    tags: tuple[str, ...] = ()


def _job(n: int, *, due: datetime = _T0, job_id: str | None = None) -> Job[Payload]:
    """A pending job with payload ``Payload(n)``, due at ``due``."""
    return Job.create(Payload(n, note=f"job {n}", tags=("a", str(n))), process_after=due, id=job_id)


def _at(seconds: float) -> datetime:
    """``_T0`` plus ``seconds``."""
    return _T0 + timedelta(seconds=seconds)


def _inspects(store: JobStore[Payload]) -> InspectsJobs[Payload]:
    """``store`` as an :class:`~anysched.InspectsJobs`; the test is skipped if it is not one."""
    if not isinstance(store, InspectsJobs):
        pytest.skip(f"{type(store).__name__} does not implement anysched.InspectsJobs (optional)")
    return cast("InspectsJobs[Payload]", store)


def _close_to(actual: datetime | None, expected: datetime) -> bool:
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

    @pytest.fixture
    def other_store(self) -> Any:
        """Optional: a second store object on ``store``'s database, as another process would have
        (``None``: the wake-up tests are skipped)."""
        return None

    async def test_is_a_job_store(self, store: JobStore[Payload]) -> None:
        assert isinstance(store, JobStore)

    async def test_fetch_leases_a_due_job(self, store: JobStore[Payload]) -> None:
        added = _job(1)
        await store.add_job(added)
        [leased] = await store.fetch_pending_jobs(_at(5), 10, _VT)
        assert leased.id == added.id
        assert leased.payload == added.payload
        assert isinstance(leased.payload, Payload)
        assert leased.status is JobStatus.PENDING
        assert leased.attempts == 1
        assert leased.lease
        assert _close_to(leased.visible_after, _at(5) + _VT)
        assert _close_to(leased.process_after, _T0)
        for moment in (leased.process_after, leased.visible_after):
            assert moment is not None
            assert moment.utcoffset() == timedelta(0)

    async def test_fetch_on_an_empty_store(self, store: JobStore[Payload]) -> None:
        assert await store.fetch_pending_jobs(_T0, 10, _VT) == []

    async def test_fetch_with_limit_zero_claims_nothing(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1))
        assert await store.fetch_pending_jobs(_T0, 0, _VT) == []
        assert len(await store.fetch_pending_jobs(_T0, 1, _VT)) == 1

    async def test_a_job_is_not_due_before_process_after(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1, due=_at(10)))
        assert await store.fetch_pending_jobs(_at(9.999), 10, _VT) == []
        assert len(await store.fetch_pending_jobs(_at(10), 10, _VT)) == 1

    async def test_oldest_due_first_and_limit(self, store: JobStore[Payload]) -> None:
        dues = list(range(20))
        random.Random(5).shuffle(dues)
        for n in dues:
            await store.add_job(_job(n, due=_at(n)))
        first = await store.fetch_pending_jobs(_at(100), 5, _VT)
        rest = await store.fetch_pending_jobs(_at(100), 100, _VT)
        assert [j.payload.n for j in first] == [0, 1, 2, 3, 4]
        assert [j.payload.n for j in rest] == list(range(5, 20))

    async def test_a_leased_job_is_invisible_until_its_lease_expires(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1))
        [first] = await store.fetch_pending_jobs(_T0, 10, _VT)
        assert await store.fetch_pending_jobs(_T0 + _VT - timedelta(milliseconds=1), 10, _VT) == []
        [again] = await store.fetch_pending_jobs(_T0 + _VT, 10, _VT)
        assert again.id == first.id
        assert again.attempts == 2
        assert again.lease != first.lease

    async def test_update_with_the_lease_writes(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1))
        [leased] = await store.fetch_pending_jobs(_T0, 10, _VT)
        done = replace(leased, status=JobStatus.COMPLETED, processed_at=_at(1), visible_after=None)
        await store.update_job(done)
        assert await store.fetch_pending_jobs(_at(3600), 10, _VT) == []

    async def test_a_failed_job_is_not_fetched_again(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1))
        [leased] = await store.fetch_pending_jobs(_T0, 10, _VT)
        failed = replace(leased, status=JobStatus.FAILED, processed_at=_at(1), visible_after=None, last_error="boom")
        await store.update_job(failed)
        assert await store.fetch_pending_jobs(_at(3600), 10, _VT) == []

    async def test_a_released_job_is_visible_at_once(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1))
        [leased] = await store.fetch_pending_jobs(_T0, 10, _VT)
        await store.update_job(replace(leased, visible_after=None, attempts=leased.attempts - 1))
        [again] = await store.fetch_pending_jobs(_at(1), 10, _VT)
        assert again.id == leased.id
        assert again.attempts == 1

    async def test_a_retried_job_is_due_again_after_its_delay(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1))
        [leased] = await store.fetch_pending_jobs(_T0, 10, _VT)
        await store.update_job(replace(leased, process_after=_at(60), visible_after=None, last_error="boom"))
        assert await store.fetch_pending_jobs(_at(59), 10, _VT) == []
        [again] = await store.fetch_pending_jobs(_at(60), 10, _VT)
        assert (again.attempts, again.last_error) == (2, "boom")
        assert _close_to(again.process_after, _at(60))

    async def test_a_jobs_own_limits_are_kept(self, store: JobStore[Payload]) -> None:
        await store.add_job(Job.create(Payload(1), process_after=_T0, max_attempts=5, timeout=2.5))
        await store.add_job(_job(2))
        leased = {j.payload.n: j for j in await store.fetch_pending_jobs(_T0, 10, _VT)}
        assert (leased[1].max_attempts, leased[1].timeout) == (5, 2.5)
        assert (leased[2].max_attempts, leased[2].timeout) == (None, None)
        await store.update_job(replace(leased[1], visible_after=None, max_attempts=7, timeout=None))
        [again] = await store.fetch_pending_jobs(_at(1), 10, _VT)
        assert (again.max_attempts, again.timeout) == (7, None)

    async def test_a_renewed_lease_hides_the_job_longer(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1))
        [leased] = await store.fetch_pending_jobs(_T0, 10, _VT)
        await store.update_job(replace(leased, visible_after=_at(100)))
        assert await store.fetch_pending_jobs(_at(99), 10, _VT) == []
        assert len(await store.fetch_pending_jobs(_at(100), 10, _VT)) == 1

    async def test_a_lost_lease_is_fenced_out(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1))
        [stale] = await store.fetch_pending_jobs(_T0, 10, _VT)
        [current] = await store.fetch_pending_jobs(_T0 + _VT, 10, _VT)
        with pytest.raises(LeaseLostError):
            await store.update_job(replace(stale, status=JobStatus.COMPLETED, processed_at=_at(40)))
        # the current holder's lease is untouched: its job stays leased, then completes
        assert await store.fetch_pending_jobs(_T0 + _VT + timedelta(seconds=1), 10, _VT) == []
        await store.update_job(replace(current, status=JobStatus.COMPLETED, processed_at=_at(41)))

    async def test_an_unleased_job_cannot_be_updated(self, store: JobStore[Payload]) -> None:
        added = _job(1)
        await store.add_job(added)
        with pytest.raises(LeaseLostError):
            await store.update_job(replace(added, status=JobStatus.COMPLETED, lease="not-a-lease"))
        assert len(await store.fetch_pending_jobs(_T0, 10, _VT)) == 1

    async def test_update_of_an_unknown_job(self, store: JobStore[Payload]) -> None:
        with pytest.raises(JobNotFoundError):
            await store.update_job(replace(_job(1), lease="whatever"))

    async def test_a_duplicate_id_changes_nothing(self, store: JobStore[Payload]) -> None:
        await store.add_job(_job(1, job_id="same"))
        with pytest.raises(DuplicateJobError):
            await store.add_job(_job(2, job_id="same", due=_at(-100)))
        [only] = await store.fetch_pending_jobs(_at(1), 10, _VT)
        assert only.payload.n == 1
        assert _close_to(only.process_after, _T0)

    async def test_aware_times_in_other_zones_mean_the_same_instant(self, store: JobStore[Payload]) -> None:
        plus_two = timezone(timedelta(hours=2))
        await store.add_job(_job(1, due=_at(10).astimezone(plus_two)))
        assert await store.fetch_pending_jobs(_at(9), 10, _VT) == []
        [leased] = await store.fetch_pending_jobs(_at(10).astimezone(plus_two), 10, _VT)
        assert _close_to(leased.process_after, _at(10))
        assert leased.process_after.utcoffset() == timedelta(0)

    async def test_concurrent_fetchers_never_share_a_job(self, store: JobStore[Payload]) -> None:
        count, fetchers = 60, 6
        for n in range(count):
            await store.add_job(_job(n))
        claims: list[list[str]] = [[] for _ in range(fetchers)]

        async def fetch(mine: list[str]) -> None:
            # Bounded by the jobs there are: a store that hands jobs out again and again
            # (never leasing them) would keep every fetcher busy forever.
            while sum(map(len, claims)) <= count and (batch := await store.fetch_pending_jobs(_at(1), 3, _VT)):
                mine.extend(j.id for j in batch)
                await anyio.lowlevel.checkpoint()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for mine in claims:
                    tg.start_soon(fetch, mine)
        every = [job_id for mine in claims for job_id in mine]
        assert len(every) <= count, f"{len(every)}+ claims of {count} jobs: leased jobs were handed out again"
        assert len(set(every)) == len(every), "a job was handed to two fetchers"
        assert len(every) == count, f"{count - len(every)} of {count} due jobs were never claimed"

    @pytest.mark.parametrize("outcome", ["completed", "failed", "retry", "release"])
    async def test_an_outcome_ends_the_lease_for_every_later_write(
        self, store: JobStore[Payload], outcome: str
    ) -> None:
        """A write sent before the outcome with the same token (a renewal abandoned in a
        thread, a late reply) is refused when it lands after it, and changes nothing."""
        await store.add_job(_job(1))
        [leased] = await store.fetch_pending_jobs(_T0, 10, _VT)
        await store.update_job(_outcome(leased, outcome))
        with pytest.raises(LeaseLostError):
            await store.update_job(replace(leased, visible_after=_at(100)))  # the late renewal
        with pytest.raises(LeaseLostError):
            await store.update_job(_outcome(leased, "completed"))  # a second outcome, same token
        await self._check_outcome_kept(store, leased, outcome)

    # -- inspection (optional: anysched.InspectsJobs) ---------------------------------------

    async def test_inspection_get_job(self, store: JobStore[Payload]) -> None:
        inspect = _inspects(store)
        added = Job.create(Payload(1, note="one", tags=("a",)), process_after=_T0, id="one", max_attempts=4)
        await store.add_job(added)
        found = await inspect.get_job("one")
        assert (found.id, found.payload, found.status, found.attempts) == ("one", added.payload, JobStatus.PENDING, 0)
        assert (found.max_attempts, found.visible_after, found.lease) == (4, None, None)
        assert _close_to(found.process_after, _T0)
        [leased] = await store.fetch_pending_jobs(_T0, 10, _VT)
        await store.update_job(_outcome(leased, "failed"))
        failed = await inspect.get_job("one")
        assert (failed.status, failed.attempts, failed.last_error, failed.lease) == (
            JobStatus.FAILED,
            1,
            "boom",
            leased.lease,
        )
        assert _close_to(failed.processed_at, _at(1))
        with pytest.raises(JobNotFoundError):
            await inspect.get_job("unknown")

    async def test_inspection_count_per_status(self, store: JobStore[Payload]) -> None:
        inspect = _inspects(store)
        assert [await inspect.count(status) for status in (None, *JobStatus)] == [0, 0, 0, 0]
        for n in range(6):
            await store.add_job(_job(n, due=_at(n)))
        first, second, third, _ = await store.fetch_pending_jobs(_at(10), 4, _VT)
        await store.update_job(_outcome(first, "completed"))
        await store.update_job(_outcome(second, "failed"))
        await store.update_job(_outcome(third, "retry"))  # pending again, as is the fourth (leased)
        counts = [await inspect.count(status) for status in (None, *JobStatus)]
        assert counts == [6, 4, 1, 1], "count(): all, pending, completed, failed"

    async def test_inspection_list_jobs_pages_by_id(self, store: JobStore[Payload]) -> None:
        inspect = _inspects(store)
        ids = [f"job-{n:02d}" for n in range(23)]
        for n, job_id in random.Random(7).sample(list(enumerate(ids)), len(ids)):
            await store.add_job(_job(n, job_id=job_id))
        pages: list[list[str]] = []
        after: str | None = None
        while page := await inspect.list_jobs(limit=5, after=after):
            pages.append([job.id for job in page])
            after = page[-1].id
        assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
        assert [job_id for page in pages for job_id in page] == ids, "every job once, by id"
        assert (await inspect.list_jobs(limit=2))[1].payload == Payload(1, note="job 1", tags=("a", "1"))
        claimed = await store.fetch_pending_jobs(_T0, 3, _VT)
        for job in claimed:
            await store.update_job(_outcome(job, "completed"))
        done = sorted(job.id for job in claimed)
        assert [job.id for job in await inspect.list_jobs(JobStatus.COMPLETED)] == done
        assert [job.id for job in await inspect.list_jobs(JobStatus.COMPLETED, after=done[0])] == done[1:]
        assert len(await inspect.list_jobs(JobStatus.PENDING, limit=100)) == 20
        assert await inspect.list_jobs(JobStatus.FAILED) == []
        assert await inspect.list_jobs(after=ids[-1]) == []
        with pytest.raises(ValueError, match="limit"):
            await inspect.list_jobs(limit=0)

    async def test_inspection_purge_deletes_only_completed_jobs_before_the_cutoff(
        self, store: JobStore[Payload]
    ) -> None:
        inspect = _inspects(store)
        for n in range(5):
            await store.add_job(_job(n, job_id=f"job-{n}", due=_at(n)))
        outcomes = {
            "job-0": (JobStatus.COMPLETED, 1),
            "job-1": (JobStatus.COMPLETED, 5),
            "job-2": (JobStatus.COMPLETED, 9),
            "job-3": (JobStatus.FAILED, 1),
        }
        for job in await store.fetch_pending_jobs(_at(10), 4, _VT):
            status, at = outcomes[job.id]
            await store.update_job(replace(job, status=status, processed_at=_at(at), visible_after=None))
        # job-4 stays pending; the cutoff is exclusive: job-1, completed at exactly 5 s, stays
        assert await inspect.purge(completed_before=_at(5)) == 1
        assert [job.id for job in await inspect.list_jobs()] == ["job-1", "job-2", "job-3", "job-4"]
        assert await inspect.purge(completed_before=_at(5)) == 0
        assert await inspect.purge(completed_before=_at(3600)) == 2
        assert [(job.id, job.status) for job in await inspect.list_jobs()] == [
            ("job-3", JobStatus.FAILED),
            ("job-4", JobStatus.PENDING),
        ]
        with pytest.raises(ValueError, match="completed_before"):
            await inspect.purge(completed_before=_at(3600).replace(tzinfo=None))

    async def test_wake_ups_another_store_adding_a_job_wakes_the_listener(
        self, store: JobStore[Payload], other_store: JobStore[Payload] | None
    ) -> None:
        if not isinstance(store, SendsWakeUps):
            pytest.skip(f"{type(store).__name__} does not implement anysched.SendsWakeUps (optional)")
        if other_store is None:
            pytest.skip("the StoreContract subclass gives no `other_store` fixture")
        woken = anyio.Event()
        with anyio.fail_after(10):  # real I/O: the suite runs on the real clock
            async with store.wake_ups(woken.set):
                await other_store.add_job(Job.create(Payload(1), process_after=datetime.now(timezone.utc)))
                await woken.wait()

    async def _check_outcome_kept(self, store: JobStore[Payload], leased: Job[Payload], outcome: str) -> None:
        """The job is claimable again as ``outcome`` left it: never, at once, or after its retry delay."""
        if outcome in ("completed", "failed"):
            assert await store.fetch_pending_jobs(_at(3600), 10, _VT) == []
            return
        due = _at(60) if outcome == "retry" else _T0
        assert await store.fetch_pending_jobs(due - timedelta(milliseconds=1), 10, _VT) == []
        [again] = await store.fetch_pending_jobs(due, 10, _VT)
        assert (again.id, again.attempts) == (leased.id, 2 if outcome == "retry" else 1)
        assert again.last_error == ("boom" if outcome == "retry" else None)
        assert _close_to(again.process_after, due)


def _outcome(leased: Job[Payload], outcome: str) -> Job[Payload]:
    """The write that ends a lease: ``completed``, ``failed``, ``retry`` (due in 60 s) or ``release``."""
    if outcome == "completed":
        return replace(leased, status=JobStatus.COMPLETED, processed_at=_at(1), visible_after=None)
    if outcome == "failed":
        return replace(leased, status=JobStatus.FAILED, processed_at=_at(1), visible_after=None, last_error="boom")
    if outcome == "retry":
        return replace(leased, process_after=_at(60), visible_after=None, last_error="boom")
    assert outcome == "release", outcome
    return replace(leased, visible_after=None, attempts=leased.attempts - 1)
