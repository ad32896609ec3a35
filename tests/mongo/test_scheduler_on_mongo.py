"""Schedulers on a MongoStore: a batch end to end, several schedulers sharing a collection, and a
server that dies and comes back mid-run."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypedDict

import anyio
import anyio.lowlevel
import pytest
from mongo_support import URI_ENV, ClaimProbe, Server, launch_secantusd, open_collection, secantusd_binary

from anysched import Backoff, Job, JobStatus, open_scheduler
from anysched.stores.mongo import ClaimMode, MongoStore
from anysched.testing import Payload
from support import Done, RetryScenario

pytestmark = pytest.mark.anyio


class Fast(TypedDict):
    """Polling and store retries for a test server (the tests set the rest)."""

    fetch_interval: float
    store_backoff: Backoff


FAST: Fast = {"fetch_interval": 0.2, "store_backoff": Backoff(initial=0.05, maximum=0.5, jitter=0.05)}


async def _add(store: MongoStore[Payload], count: int, prefix: str = "j") -> list[str]:
    ids = [f"{prefix}{n:03d}" for n in range(count)]
    for n, job_id in enumerate(ids):
        await store.add_job(Job.create(Payload(n), id=job_id))
    return ids


async def test_a_scheduler_processes_a_batch_end_to_end(collection: Any) -> None:
    store = MongoStore(collection, Payload)
    ids = await _add(store, 24)
    done = Done(len(ids))

    async def handler(job: Job[Payload]) -> None:
        done.record(job)
        if job.payload.n % 6 == 5:
            raise ValueError(f"job {job.payload.n} fails on purpose")

    with anyio.fail_after(60):
        async with open_scheduler(store, handler, workers=4, **FAST):
            await done.all_done.wait()
    assert set(done.handled) == set(ids)
    assert all(count == 1 for count in done.handled.values())
    assert await store.count(JobStatus.COMPLETED) == 20
    assert await store.count(JobStatus.FAILED) == 4
    failed = await store.get_job("j005")
    assert failed.last_error == "ValueError: job 5 fails on purpose"
    assert failed.processed_at is not None
    assert failed.attempts == 1


@pytest.mark.parametrize("claim", ["batch", "one_by_one"])
async def test_schedulers_sharing_a_collection_never_share_a_job(
    flavour: str, mongo_server: Server, collection_name: str, claim: ClaimMode, claim_probe: ClaimProbe
) -> None:
    schedulers, count = 3, 30
    done = Done(count)

    async def run_one(who: int, ready: anyio.Event) -> None:
        async with open_collection(flavour, mongo_server.uri, collection_name) as collection:
            store = MongoStore(collection, Payload, claim=claim)

            async def handler(job: Job[Payload]) -> None:
                done.record(job, who)
                await anyio.lowlevel.checkpoint()

            await store.ensure_indexes()
            async with open_scheduler(store, handler, workers=3, **FAST):
                ready.set()
                await done.all_done.wait()

    ids: list[str] = []  # bound here too: a type checker cannot tell that a task group never swallows errors
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            started = [anyio.Event() for _ in range(schedulers)]
            for who, ready in enumerate(started):
                tg.start_soon(run_one, who, ready)
            for ready in started:
                await ready.wait()
            async with open_collection(flavour, mongo_server.uri, collection_name) as collection:
                ids = await _add(MongoStore(collection, Payload), count)
    assert set(done.handled) == set(ids)
    assert len({who for owners in done.by.values() for who in owners}) > 1  # the work was shared
    claim_probe.require_atomic(f"schedulers sharing a collection ({claim} claims) never run the same job")
    assert [job_id for job_id, n in done.handled.items() if n != 1] == []


@pytest.fixture
async def restartable_server(tmp_path: Path) -> AsyncIterator[Server]:
    """A SecantusDB of this test's own, on disk (fsync per commit), so it can be killed and restarted."""
    if os.environ.get(URI_ENV) and secantusd_binary() is None:
        pytest.skip(f"killing the server needs a secantusd-py of our own; {URI_ENV}'s server is left alone")
    server = await anyio.to_thread.run_sync(
        lambda: launch_secantusd(tmp_path, storage=str(tmp_path / "db"), durable=True)
    )
    try:
        yield server
    finally:
        await anyio.to_thread.run_sync(server.stop)


class RetrySeen(logging.Handler):
    """Sets an event once the scheduler has logged ``needed`` store retries."""

    def __init__(self, needed: int) -> None:
        super().__init__(logging.WARNING)
        self.needed = needed
        self.count = 0
        self.event = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying in" in record.getMessage():
            self.count += 1
            if self.count >= self.needed:
                self.event.set()


@pytest.mark.slow  # a server of its own, killed and restarted: once per nox run
@pytest.mark.parametrize(
    "flavour", ["pymongo-async", "pymongo-sync-trio"]
)  # one per adapter and backend: each costs a server
async def test_a_server_killed_and_restarted_mid_run_loses_no_job(
    flavour: str, restartable_server: Server, collection_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="anysched")
    server, count = restartable_server, 16
    done = Done(count)
    killed = anyio.Event()
    retries = RetrySeen(needed=3)
    logging.getLogger("anysched").addHandler(retries)
    timeouts = {"serverSelectionTimeoutMS": 500, "connectTimeoutMS": 500, "socketTimeoutMS": 2000}

    async def handler(job: Job[Payload]) -> None:
        done.record(job)
        if job.payload.n == 5 and not killed.is_set():
            await anyio.to_thread.run_sync(server.kill)
            killed.set()

    try:
        with anyio.fail_after(90):
            async with open_collection(flavour, server.uri, collection_name, **timeouts) as collection:
                store = MongoStore(collection, Payload)
                ids = await _add(store, count)
                async with open_scheduler(store, handler, workers=2, **FAST):
                    await killed.wait()
                    await retries.event.wait()
                    await anyio.to_thread.run_sync(server.start)
                    await done.all_done.wait()
                assert await store.count(JobStatus.COMPLETED) == count  # every outcome was written
    finally:
        logging.getLogger("anysched").removeHandler(retries)
    assert set(done.handled) == set(ids)
    assert any("retrying in" in r.getMessage() and "TransientStoreError" in r.getMessage() for r in caplog.records)
    assert "mongodb://" not in caplog.text


async def test_retries_timeouts_and_explicit_outcomes_on_mongo(collection: Any) -> None:
    store = MongoStore(collection, Payload)
    scenario = RetryScenario()
    await scenario.run(store, store_backoff=FAST["store_backoff"])
    scenario.check({job_id: await store.get_job(job_id) for job_id in scenario.runs})
