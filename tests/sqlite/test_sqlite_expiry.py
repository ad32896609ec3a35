"""SQLiteStore's completed_ttl expiry and purge run in small steps, off the claim.

One connection serves every call of a store: a purge of a big backlog inside a claim held
every lease renewal behind it (300k expired rows: a 4.7 s claim). These tests count rows and
order calls; none depends on how fast the machine is. The store works in worker threads, so
they run on the real clock of both backends (trio's mock clock would jump while a thread runs).
"""

# White-box tests: they read the store's private state and use anysched.testing's private helpers.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

from anysched import Job, JobStatus
from anysched.stores import sqlite as sqlite_module
from anysched.stores.sqlite import SQLiteStore
from anysched.testing import _T0 as T0
from anysched.testing import _VT as VT
from anysched.testing import Payload
from anysched.testing import _at as at
from anysched.testing import _job as job

pytestmark = pytest.mark.anyio

EXPIRED, STEP = 10, 3


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    yield connection
    connection.close()


@pytest.fixture
async def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SQLiteStore[Payload]]:
    """A store with ``EXPIRED`` completed jobs an hour old at ``at(3601)``, a job ``held``
    leased for two hours and a job ``due`` at ``at(3600)``; expiry deletes ``STEP`` rows a step."""
    monkeypatch.setattr(sqlite_module, "_PURGE_STEP", STEP)
    async with SQLiteStore(tmp_path / "jobs.db", Payload, completed_ttl=timedelta(hours=1)) as store:
        await store.add_jobs([job(n) for n in range(EXPIRED)] + [job(EXPIRED, job_id="held", due=at(1))])
        for leased in await store.fetch_pending_jobs(T0, EXPIRED, VT):
            await store.update_job(replace(leased, status=JobStatus.COMPLETED, processed_at=T0, visible_after=None))
        [held] = await store.fetch_pending_jobs(at(1), 1, timedelta(hours=2))
        assert held.id == "held"
        await store.add_job(job(EXPIRED + 1, job_id="due", due=at(3600)))
        yield store


def completed_count(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT COUNT(*) FROM anysched_jobs WHERE status = 'completed'").fetchone()[0])


async def test_the_claim_deletes_nothing_and_each_fetch_takes_a_step_while_a_backlog_remains(
    store: SQLiteStore[Payload], raw: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_EXPIRY_BUDGET", 0)  # one step per fetch: the steps can be counted
    at_commit: list[int] = []
    claim = store._claim

    def claim_then_count(connection: sqlite3.Connection, *args: Any) -> list[Job[Payload]]:
        jobs = claim(connection, *args)
        at_commit.append(completed_count(connection))
        return jobs

    monkeypatch.setattr(store, "_claim", claim_then_count)
    [due] = await store.fetch_pending_jobs(at(3601), 10, VT)
    assert due.id == "due"
    assert at_commit == [EXPIRED]  # the claim committed before any expired job was deleted
    remaining = [completed_count(raw)]
    while remaining[-1]:
        assert len(remaining) <= EXPIRED, "expiry makes no progress"
        assert await store.fetch_pending_jobs(at(3601), 10, VT) == []  # the same moment: no interval waited
        remaining.append(completed_count(raw))
    assert remaining == [7, 4, 1, 0]  # one step of at most STEP rows per fetch, until the backlog is gone


async def test_a_renewal_gets_the_connection_between_two_expiry_steps(
    store: SQLiteStore[Payload], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sqlite_module, "_EXPIRY_BUDGET", 3600
    )  # time is no factor: the backlog's steps run in one fetch
    leased = await store.get_job("held")
    calls: list[str] = []
    first_step_runs, renewal_queued = anyio.Event(), threading.Event()
    step, update = sqlite_module._delete_completed_step, sqlite_module._update

    def gated_step(connection: sqlite3.Connection, cutoff_us: int, limit: int) -> int:
        calls.append("step")
        if len(calls) == 1:  # hold the first step until the renewal waits for the connection
            anyio.from_thread.run_sync(first_step_runs.set)
            assert renewal_queued.wait(timeout=30)
        return step(connection, cutoff_us, limit)

    def recorded_update(connection: sqlite3.Connection, row: dict[str, Any]) -> None:
        calls.append("renewal")
        update(connection, row)

    monkeypatch.setattr(sqlite_module, "_delete_completed_step", gated_step)
    monkeypatch.setattr(sqlite_module, "_update", recorded_update)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.fetch_pending_jobs, at(3601), 10, VT)
            await first_step_runs.wait()
            tg.start_soon(store.update_job, replace(leased, visible_after=at(3700)))
            while store._limiter.statistics().tasks_waiting == 0:  # the renewal queues for the connection
                await anyio.lowlevel.checkpoint()
            renewal_queued.set()
    assert calls == ["step", "renewal", "step", "step", "step"]
    assert await store.count(JobStatus.COMPLETED) == 0
    assert (await store.get_job("held")).visible_after == at(3700)


async def test_purge_deletes_in_steps_each_its_own_call(
    store: SQLiteStore[Payload], monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted: list[int] = []
    step = sqlite_module._delete_completed_step

    def recorded_step(connection: sqlite3.Connection, cutoff_us: int, limit: int) -> int:
        deleted.append(step(connection, cutoff_us, limit))
        return deleted[-1]

    monkeypatch.setattr(sqlite_module, "_delete_completed_step", recorded_step)
    run = store._run
    runs: list[object] = []

    async def recorded_run(call: Any) -> Any:
        runs.append(call)
        return await run(call)

    monkeypatch.setattr(store, "_run", recorded_run)
    assert await store.purge(completed_before=at(1)) == EXPIRED
    assert deleted == [3, 3, 3, 1]
    assert len(runs) == len(deleted)  # one turn on the connection per step
