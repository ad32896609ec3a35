"""MongoStore's wake-ups: a change stream on the jobs collection, on every driver flavour.

The server (SecantusDB unless ``ANYSCHED_MONGODB_URL`` says otherwise) must support change streams; a
server without them is simulated at the driver boundary. Real I/O: real clock, bounded waits.
"""

# White-box: the tests use the store's change-stream filter and stand in for its driver's listener.
# pyright: reportPrivateUsage=false

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.to_thread
import pymongo
import pymongo.collection
import pytest
from mongo_support import CLIENT_OPTIONS, DATABASE, Server
from pymongo.errors import OperationFailure

from anysched import Job, JobStatus, SendsWakeUps, TransientStoreError, open_scheduler
from anysched.stores.mongo import _WAKING_CHANGES, ChangeStreamsUnavailableError, MongoStore
from anysched.testing import Payload
from support import Recorder, until

pytestmark = pytest.mark.anyio

HOUR = 3600.0


def now() -> datetime:
    return datetime.now(timezone.utc)


class Wakes:
    """Counts wake-ups and lets a test wait for a number of them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1

    async def reach(self, count: int) -> None:
        with anyio.fail_after(15):
            await until(lambda: self.count >= count)


async def test_another_store_adding_a_job_wakes_the_listener(
    payload_store: MongoStore[Payload], collection: Any
) -> None:
    assert isinstance(payload_store, SendsWakeUps)
    other = MongoStore(collection, Payload)  # a second store object: another process, as far as it knows
    wakes = Wakes()
    async with payload_store.wake_ups(wakes):
        await other.add_job(Job.create(Payload(1), id="elsewhere"))
        await wakes.reach(1)
    await other.add_job(Job.create(Payload(2), id="after-the-block"))
    await other.add_job(Job.create(Payload(3), id="sentinel"))
    assert wakes.count == 1  # the block's end stopped the listener (its thread too, in the threaded flavours)


async def test_a_scheduler_starts_a_job_another_store_adds_at_once(
    payload_store: MongoStore[Payload], collection: Any
) -> None:
    handler = Recorder[Payload]()
    other = MongoStore(collection, Payload)
    with anyio.fail_after(30):
        async with open_scheduler(payload_store, handler, fetch_interval=HOUR) as scheduler:
            await until(lambda: scheduler.statistics().listening)
            await other.add_job(Job.create(Payload(1), id="from-elsewhere"))
            await handler.wait_finished(1)  # an hour's fetch_interval: only a wake-up can start it in time
    assert handler.runs == {"from-elsewhere": 1}


async def test_a_server_without_change_streams_raises_a_clear_error_on_entering(
    payload_store: MongoStore[Payload],
) -> None:
    @asynccontextmanager
    async def refused(pipeline: list[dict[str, Any]], wake: Callable[[], None]) -> AsyncGenerator[None]:
        raise OperationFailure("The $changeStream stage is only supported on replica sets", 40573)
        yield  # type: ignore[unreachable]  # pragma: no cover

    payload_store._driver.listen = refused  # type: ignore[method-assign]
    with pytest.raises(ChangeStreamsUnavailableError, match="replica set"):
        async with payload_store.wake_ups(lambda: None):  # type: ignore[unreachable, unused-ignore]
            pass  # pragma: no cover


def test_the_server_sends_only_changes_that_may_make_a_job_claimable(
    mongo_server: Server, collection_name: str
) -> None:
    """The change stream's filter, run by the server: inserts and leases ended without an outcome."""
    with pymongo.MongoClient(mongo_server.uri, **CLIENT_OPTIONS) as client:
        raw = client[DATABASE][collection_name]
        store = MongoStore(raw, Payload)

        async def writes() -> None:
            await store.add_job(Job.create(Payload(1), id="a"))
            await store.add_job(Job.create(Payload(2), id="b"))
            claimed = {job.id: job for job in await store.fetch_pending_jobs(now(), 2, timedelta(minutes=5))}
            await store.update_job(replace(claimed["a"], visible_after=now() + timedelta(minutes=10)))  # renewal
            await store.update_job(
                replace(claimed["a"], status=JobStatus.COMPLETED, processed_at=now(), visible_after=None)
            )
            await store.update_job(replace(claimed["b"], visible_after=None, process_after=now()))  # a retry
            await store.add_job(Job.create(Payload(3), id="sentinel"))

        with raw.watch([_WAKING_CHANGES[0]], max_await_time_ms=100) as stream:
            anyio.run(writes)
            seen: list[tuple[str, str]] = []
            for _ in range(100):  # 10 s at most
                if seen and seen[-1][1] == "sentinel":
                    break
                change = stream.try_next()
                if change is not None:
                    seen.append((change["operationType"], change["documentKey"]["_id"]))
                assert stream.alive
    assert seen == [("insert", "a"), ("insert", "b"), ("update", "b"), ("insert", "sentinel")]


async def test_a_dropped_collection_ends_the_listener_with_a_transient_error(
    payload_store: MongoStore[Payload], collection: Any
) -> None:
    await payload_store.add_job(Job.create(Payload(1), id="before"))  # the collection exists

    async def listen_while_dropping() -> None:
        async with payload_store.wake_ups(lambda: None):
            await _drop(collection)
            await anyio.sleep_forever()  # until the listener's failure cancels the block

    with anyio.fail_after(15), pytest.raises(TransientStoreError, match="change stream ended"):
        await listen_while_dropping()


async def _drop(collection: Any) -> None:
    if isinstance(collection, pymongo.collection.Collection):
        await anyio.to_thread.run_sync(collection.drop)
    else:
        await collection.drop()
