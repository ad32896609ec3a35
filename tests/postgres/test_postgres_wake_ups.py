"""Wake-ups over LISTEN/NOTIFY: an insert, a release or a retry committed through another store
object (as another process would) calls ``wake``; a claim or a completion does not need to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import anyio
import pytest
from postgres_support import CallersConnection

from anysched import Job, JobStatus, SendsWakeUps
from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload

pytestmark = pytest.mark.anyio

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
VT = timedelta(seconds=30)


class Wakes:
    """Counts ``wake()`` calls; ``arrived()`` waits (bounded) for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._event = anyio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    async def arrived(self) -> None:
        with anyio.fail_after(10):
            await self._event.wait()
        self._event = anyio.Event()


@pytest.fixture
async def other(postgres_url: str, schema: str, store: PostgresStore[Payload]) -> AsyncIterator[PostgresStore[Payload]]:
    """A second store object on the same table: what another process would use."""
    async with PostgresStore(postgres_url, Payload, schema=schema) as second:
        yield second


async def test_the_store_sends_wake_ups(store: PostgresStore[Payload]) -> None:
    assert isinstance(store, SendsWakeUps)


async def test_a_job_added_elsewhere_wakes_the_listener(
    store: PostgresStore[Payload], other: PostgresStore[Payload]
) -> None:
    wakes = Wakes()
    async with store.wake_ups(wakes):
        await other.add_job(Job.create(Payload(1), process_after=NOW))
        await wakes.arrived()
        await other.add_jobs([Job.create(Payload(n), process_after=NOW) for n in range(3)])
        await wakes.arrived()


async def test_a_release_and_a_retry_wake_the_listener(
    store: PostgresStore[Payload], other: PostgresStore[Payload]
) -> None:
    await other.add_jobs([Job.create(Payload(n), id=f"j{n}", process_after=NOW) for n in range(2)])
    first, second = await other.fetch_pending_jobs(NOW, 2, VT)
    wakes = Wakes()
    async with store.wake_ups(wakes):
        await other.update_job(replace(first, visible_after=None))  # a release
        await wakes.arrived()
        await other.update_job(replace(second, visible_after=None, process_after=NOW + timedelta(seconds=5)))
        await wakes.arrived()


async def test_a_rolled_back_insert_wakes_nobody_but_a_committed_one_does(
    store: PostgresStore[Payload], other: PostgresStore[Payload], postgres_url: str, anyio_backend: str
) -> None:
    wakes = Wakes()
    async with store.wake_ups(wakes):
        async with CallersConnection(postgres_url, anyio_backend) as caller:
            assert caller.connection is not None
            await other.add_job(Job.create(Payload(1), id="rolled-back"), connection=caller.connection)
            await caller.rollback()
            await other.add_job(Job.create(Payload(2), id="committed"), connection=caller.connection)
            await caller.commit()
        await wakes.arrived()
        assert wakes.count == 1  # NOTIFY is delivered in commit order: the rolled-back one would come first
    assert await store.count(JobStatus.PENDING) == 1


async def test_without_wake_ups_the_block_does_nothing(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, Payload, schema=schema, wake_ups=False) as quiet:
        wakes = Wakes()
        async with quiet.wake_ups(wakes):
            await quiet.add_job(Job.create(Payload(1)))
            # An insert through a store that notifies proves the block is not listening.
            async with PostgresStore(postgres_url, Payload, schema=schema) as loud:
                await loud.add_job(Job.create(Payload(2)))
                probe = Wakes()
                async with loud.wake_ups(probe):
                    await loud.add_job(Job.create(Payload(3)))
                    await probe.arrived()
        assert wakes.count == 0


async def test_a_wake_ups_block_ends_promptly_when_cancelled(store: PostgresStore[Payload]) -> None:
    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            async with store.wake_ups(Wakes()):
                scope.cancel()
                await anyio.sleep(3600)
    assert scope.cancelled_caught
