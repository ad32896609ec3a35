"""A scheduler on PostgreSQL starts a job another process adds at once, through LISTEN/NOTIFY.

The scheduler runs on one store object with an hour's ``fetch_interval``; the job is added
through a second store object on the same table (what another process would use). Only a
wake-up can start it within the test's bound, and the test checks that one did: the store's
``wake`` was called, and the claim that leased the job came after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta

import anyio
import pytest

from anysched import Job, open_scheduler
from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload
from support import Recorder, until

pytestmark = pytest.mark.anyio

HOUR = 3600.0


class Traced:
    """Records, in order, each ``wake()`` the store sends the scheduler and each claim's job ids."""

    def __init__(self, store: PostgresStore[Payload]) -> None:
        self.events: list[str] = []
        self._listen = store.wake_ups
        self._fetch = store.fetch_pending_jobs
        store.wake_ups = self.wake_ups  # type: ignore[method-assign]
        store.fetch_pending_jobs = self.fetch_pending_jobs  # type: ignore[method-assign]

    def wake_ups(self, wake: Callable[[], None]) -> AbstractAsyncContextManager[None]:
        def traced_wake() -> None:
            self.events.append("wake")
            wake()

        return self._listen(traced_wake)

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[Payload]]:
        jobs = await self._fetch(now, limit, visibility_timeout)
        self.events.append("claim " + " ".join(job.id for job in jobs))
        return jobs


@pytest.fixture
async def other(postgres_url: str, schema: str, store: PostgresStore[Payload]) -> AsyncIterator[PostgresStore[Payload]]:
    """A second store object on the scheduler's table, as another process would have."""
    async with PostgresStore(postgres_url, Payload, schema=schema) as second:
        yield second


async def test_a_job_added_through_another_store_starts_on_a_wake_up_not_the_interval(
    store: PostgresStore[Payload], other: PostgresStore[Payload]
) -> None:
    traced = Traced(store)
    handler = Recorder[Payload]()
    with anyio.fail_after(30):  # far less than the hour the scheduler would otherwise sleep
        async with open_scheduler(store, handler, fetch_interval=HOUR) as scheduler:
            await until(lambda: scheduler.statistics().listening)  # LISTEN runs: a NOTIFY now reaches it
            claims_before = len(traced.events)
            await other.add_job(Job.create(Payload(1), id="from-elsewhere"))
            await handler.wait_finished(1)
    assert handler.runs == {"from-elsewhere": 1}
    after_add = traced.events[claims_before:]
    assert "claim from-elsewhere" in after_add
    assert "wake" in after_add[: after_add.index("claim from-elsewhere")]  # a wake-up came first, then the claim


async def test_jobs_added_one_by_one_elsewhere_each_start_on_a_wake_up(
    store: PostgresStore[Payload], other: PostgresStore[Payload]
) -> None:
    traced = Traced(store)
    handler = Recorder[Payload]()
    with anyio.fail_after(30):
        async with open_scheduler(store, handler, fetch_interval=HOUR) as scheduler:
            await until(lambda: scheduler.statistics().listening)
            for n in range(5):  # each added once the scheduler is idle again
                await other.add_job(Job.create(Payload(n), id=f"job-{n}"))
                await handler.wait_finished(n + 1)
    assert handler.runs == {f"job-{n}": 1 for n in range(5)}
    claims = [event for event in traced.events if event.startswith("claim ") and event != "claim "]
    assert claims == [f"claim job-{n}" for n in range(5)]
    assert traced.events.count("wake") >= 5
