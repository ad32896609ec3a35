"""A wall clock that steps: leases keep their timing (monotonic) and their stored meaning.

Stepping the clock back used to make leases look fresh (renewals stopped while another process
claimed the job); stepping it forward made every lease look lost (every handler cancelled). The
scheduler now times renewals and deadlines on the event loop's monotonic clock, measured from
the claim, and a renewal writes the claim's lease end advanced by the monotonic time since.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import anyio
import pytest

from anysched import Job, JobStatus, MemoryStore, open_scheduler
from support import FAST_RETRY, WrappedStore, until

pytestmark = pytest.mark.anyio

Clock = Callable[[], datetime]
LEASE = 0.6  # long enough that a loaded machine does not cut the handler off for lag


class SteppingClock:
    """The test's wall clock plus an offset that a test steps."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self._clock() + self.offset


@pytest.mark.parametrize("step", [timedelta(hours=-1), timedelta(hours=1)])
async def test_a_step_of_the_wall_clock_neither_stops_renewals_nor_cancels_the_handler(
    step: timedelta, clock: Clock
) -> None:
    store = WrappedStore[int]()
    stepping = SteppingClock(clock)
    ran: list[str] = []
    renewals: list[tuple[datetime, datetime]] = []  # (true time, lease end written)
    update = store.inner.update_job

    async def recording_update(job: Job[int]) -> None:
        if job.status is JobStatus.PENDING and job.visible_after is not None:
            renewals.append((clock(), job.visible_after))
        await update(job)

    store.inner.update_job = recording_update  # type: ignore[method-assign]

    async def long_job(job: Job[int]) -> None:
        await anyio.sleep(LEASE)
        stepping.offset = step  # the wall clock steps while the handler runs
        await anyio.sleep(3 * LEASE)
        ran.append(job.id)

    await store.add_job(Job.create(1, id="long", process_after=clock()))
    with anyio.fail_after(30):
        async with open_scheduler(
            store, long_job, clock=stepping, visibility_timeout=LEASE, store_backoff=FAST_RETRY
        ) as scheduler:
            await until(lambda: bool(ran))
            await until(lambda: not (scheduler.statistics().held))
    assert ran == ["long"]  # not cancelled
    assert (await store.inner.get_job("long")).status is JobStatus.COMPLETED
    after_step = [(now, lease_end) for now, lease_end in renewals if now > renewals[0][0] + timedelta(seconds=LEASE)]
    assert len(after_step) >= 4  # renewals went on every third of the lease, stepped clock or not
    for now, lease_end in renewals:
        # Each written lease end is in the true time line: now plus the lease, give or take a
        # renewal's lateness, never an hour off.
        assert abs(lease_end - (now + timedelta(seconds=LEASE))) < timedelta(seconds=LEASE / 2)


async def test_a_store_whose_next_due_time_is_wrong_does_not_make_the_fetcher_spin(clock: Clock) -> None:
    """A store that keeps saying "due now" while its claims find nothing gets a growing wait."""

    class Liar(MemoryStore[int]):
        claims = 0

        async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[int]]:
            self.claims += 1
            return await super().fetch_pending_jobs(now, limit, visibility_timeout)

        async def next_due_time(self) -> datetime | None:
            return clock() - timedelta(hours=1)

    store = Liar()
    with anyio.fail_after(30):
        async with open_scheduler(store, _never_called, clock=clock, fetch_interval=1):
            await anyio.sleep(1)
    assert store.claims < 20  # 1 ms doubling to the 1 s interval, not thousands


async def _never_called(job: Job[int]) -> None:
    raise AssertionError("no job was added")
