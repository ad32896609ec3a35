"""SQLiteStore beyond the contract: schema, start-up errors, payloads, locks, purge, the scheduler on it.

The store works in worker threads, and trio's mock clock jumps ahead while a thread runs
(every task looks blocked), so these tests run on the real clock of both backends.
"""

# White-box tests: they read the store's private state and use anysched.testing's private helpers.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest

import anysched
from anysched import (
    DuplicateJobError,
    Job,
    JobNotFoundError,
    JobStatus,
    PayloadError,
    TransientStoreError,
    open_scheduler,
)
from anysched.stores.sqlite import SCHEMA_VERSION, SQLiteStore, SQLiteStoreError
from anysched.testing import _T0 as T0
from anysched.testing import _VT as VT
from anysched.testing import Payload
from anysched.testing import _at as at
from anysched.testing import _job as job
from support import RetryScenario

pytestmark = pytest.mark.anyio


def completed(leased: Job[Payload], when: datetime) -> Job[Payload]:
    return replace(leased, status=JobStatus.COMPLETED, processed_at=when, visible_after=None)


# -- schema and start-up ---------------------------------------------------------------------


async def test_a_new_file_gets_wal_mode_and_a_versioned_schema(
    store: SQLiteStore[Payload], raw: sqlite3.Connection
) -> None:
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert raw.execute("SELECT value FROM anysched_meta WHERE key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)


async def test_jobs_survive_closing_and_reopening(db: Path) -> None:
    added = job(1, job_id="kept")
    async with SQLiteStore(db, Payload) as store:
        await store.add_job(added)
    async with SQLiteStore(db, Payload) as reopened:
        assert await reopened.get_job("kept") == added


async def test_a_schema_from_a_newer_version_is_refused(db: Path) -> None:
    async with SQLiteStore(db, Payload):
        pass
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE anysched_meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    connection.close()
    with pytest.raises(SQLiteStoreError, match=r"schema version 2, from a newer anysched.*upgrade anysched"):
        await SQLiteStore(db, Payload).open()


async def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    await anyio.Path(db).write_bytes(b"this is not a database, just some bytes\n" * 100)
    with pytest.raises(SQLiteStoreError, match="cannot be used as a job store: file is not a database"):
        await SQLiteStore(db, Payload).open()


async def test_a_path_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "no-such-directory" / "jobs.db"
    with pytest.raises(SQLiteStoreError, match=r"no-such-directory.*cannot be opened: unable to open database file"):
        await SQLiteStore(path, Payload).open()


async def test_a_foreign_jobs_table_is_not_taken_over(db: Path) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE anysched_jobs (x)")
    connection.close()
    with pytest.raises(SQLiteStoreError, match="anysched_jobs table that anysched did not create"):
        await SQLiteStore(db, Payload).open()


async def test_a_missing_schema_version_is_refused(db: Path) -> None:
    async with SQLiteStore(db, Payload):
        pass
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM anysched_meta")
    connection.close()
    with pytest.raises(SQLiteStoreError, match="no valid schema version"):
        await SQLiteStore(db, Payload).open()


async def test_the_first_call_opens_the_store(db: Path) -> None:
    store = SQLiteStore(db, Payload)
    assert await store.count() == 0
    await store.aclose()
    with pytest.raises(RuntimeError, match="is closed"):
        await store.count()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"busy_timeout": -1}, "busy_timeout must be >= 0"),
        ({"completed_ttl": 0}, "completed_ttl must be > 0"),
        ({"synchronous": "off"}, "synchronous must be 'full' or 'normal'"),
    ],
)
def test_bad_options_name_the_option(db: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SQLiteStore(db, Payload, **options)


async def test_the_claim_walks_the_claim_index(store: SQLiteStore[Payload], raw: sqlite3.Connection) -> None:
    plan = raw.execute(
        "EXPLAIN QUERY PLAN SELECT rowid FROM anysched_jobs WHERE status = 'pending' AND process_after <= 1"
        " AND (visible_after IS NULL OR visible_after <= 1) ORDER BY process_after LIMIT 5"
    ).fetchall()
    assert any("anysched_jobs_claim" in row[-1] for row in plan), plan
    assert not any("TEMP B-TREE" in row[-1] for row in plan), plan
    assert any("COVERING INDEX anysched_jobs_claim" in row[-1] for row in plan), plan


# -- times and payloads ----------------------------------------------------------------------


async def test_times_round_trip_to_the_microsecond(store: SQLiteStore[Payload]) -> None:
    due = datetime(2030, 5, 6, 7, 8, 9, 123457, tzinfo=timezone.utc)
    await store.add_job(job(1, due=due, job_id="precise"))
    [leased] = await store.fetch_pending_jobs(due, 1, timedelta(microseconds=1))
    assert leased.process_after == due
    assert leased.visible_after == due + timedelta(microseconds=1)
    assert await store.get_job("precise") == leased


@dataclass(frozen=True)
class Report:
    title: str
    due: datetime
    pages: list[int]
    extra: dict[str, Any]


async def test_typed_payloads_round_trip(db: Path) -> None:
    payload = Report("q3", datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc), [1, 2], {"k": [None, 1.5]})
    async with SQLiteStore(db, Report) as store:
        await store.add_job(Job.create(payload, id="r"))
        assert (await store.get_job("r")).payload == payload


async def test_a_payload_that_cannot_be_encoded_is_refused_and_nothing_is_stored(store: SQLiteStore[Payload]) -> None:
    bad = Job.create(Payload(n="not a number"), id="bad")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(PayloadError, match="cannot be encoded as Payload"):
        await store.add_job(bad)
    with pytest.raises(PayloadError):
        await store.add_jobs([job(1), bad])
    assert await store.count() == 0


async def test_a_payload_that_is_not_json_is_refused(db: Path) -> None:
    async with SQLiteStore(db, float) as store:
        with pytest.raises(PayloadError):
            await store.add_job(Job.create(float("nan")))
        assert await store.count() == 0


@pytest.mark.parametrize("use_returning", [True, False])
async def test_a_stored_payload_that_cannot_be_decoded_fails_its_job_and_spares_the_rest(
    store: SQLiteStore[Payload], raw: sqlite3.Connection, use_returning: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store._use_returning = use_returning
    await store.add_jobs(
        [job(1, job_id="good-1"), job(2, job_id="broken", due=at(1)), job(3, job_id="good-3", due=at(2))]
    )
    raw.execute("""UPDATE anysched_jobs SET payload = '{"n": "many"}' WHERE id = 'broken'""")
    with caplog.at_level(logging.ERROR, logger="anysched"):
        leased = await store.fetch_pending_jobs(at(10), 10, VT)
    assert [j.id for j in leased] == ["good-1", "good-3"]
    broken = raw.execute("SELECT status, attempts, last_error, visible_after FROM anysched_jobs WHERE id = 'broken'")
    status, attempts, last_error, visible_after = broken.fetchone()
    assert (status, attempts, visible_after) == ("failed", 1, None)
    assert last_error.startswith(
        "UndecodableDocumentError: stored field 'payload' cannot be decoded"
        " (PayloadError: a stored payload is not a valid Payload: field 'n': "
    )
    assert "job broken" in caplog.text
    assert [j.id for j in await store.fetch_pending_jobs(at(3600), 10, VT)] == ["good-1", "good-3"]


async def test_a_stored_payload_that_is_not_json_fails_its_job(
    store: SQLiteStore[Payload], raw: sqlite3.Connection
) -> None:
    await store.add_job(job(1, job_id="garbled"))
    raw.execute("UPDATE anysched_jobs SET payload = '{oops' WHERE id = 'garbled'")
    assert await store.fetch_pending_jobs(at(1), 10, VT) == []
    with pytest.raises(PayloadError, match="is not JSON"):
        await store.get_job("garbled")
    assert await store.count(JobStatus.FAILED) == 1


# -- adding, reading, purging ----------------------------------------------------------------------


async def test_add_jobs_is_all_or_nothing(store: SQLiteStore[Payload]) -> None:
    await store.add_job(job(0, job_id="taken"))
    with pytest.raises(DuplicateJobError, match="'taken'"):
        await store.add_jobs([job(1, job_id="new"), job(2, job_id="taken")])
    with pytest.raises(DuplicateJobError, match="'twice'"):
        await store.add_jobs([job(1, job_id="twice"), job(2, job_id="twice")])
    assert await store.count() == 1
    await store.add_jobs([])
    await store.add_jobs(job(n) for n in range(3))
    assert await store.count() == 4


async def test_get_job_and_counts(store: SQLiteStore[Payload]) -> None:
    await store.add_jobs([job(n, job_id=f"j{n}") for n in range(3)])
    [leased] = await store.fetch_pending_jobs(T0, 1, VT)
    await store.update_job(completed(leased, at(1)))
    assert (await store.get_job("j0")).status is JobStatus.COMPLETED
    counts = [await store.count(status) for status in (None, JobStatus.PENDING, JobStatus.COMPLETED, JobStatus.FAILED)]
    assert counts == [3, 2, 1, 0]
    with pytest.raises(JobNotFoundError, match="no job with id 'nope'"):
        await store.get_job("nope")


async def test_purge_removes_only_old_completed_jobs(store: SQLiteStore[Payload]) -> None:
    await store.add_jobs([job(n, job_id=f"j{n}") for n in range(4)])
    leased = await store.fetch_pending_jobs(T0, 3, VT)
    for n, j in enumerate(leased[:2]):
        await store.update_job(completed(j, at(n * 10)))
    await store.update_job(replace(leased[2], status=JobStatus.FAILED, processed_at=at(0)))
    assert await store.purge(completed_before=at(5)) == 1
    assert [await store.count(s) for s in JobStatus] == [1, 1, 1]
    with pytest.raises(JobNotFoundError):
        await store.get_job("j0")
    with pytest.raises(ValueError, match="completed_before must be timezone-aware"):
        await store.purge(completed_before=T0.replace(tzinfo=None))


async def test_purge_deletes_in_batches(store: SQLiteStore[Payload], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anysched.stores.sqlite._PURGE_STEP", 3)
    await store.add_jobs([job(n) for n in range(7)])
    for leased in await store.fetch_pending_jobs(T0, 10, VT):
        await store.update_job(completed(leased, at(1)))
    assert await store.purge(completed_before=at(2)) == 7
    assert await store.count() == 0


async def test_completed_jobs_expire_after_completed_ttl(db: Path) -> None:
    async with SQLiteStore(db, Payload, completed_ttl=timedelta(hours=1)) as store:
        await store.add_jobs([job(n, job_id=f"j{n}") for n in range(3)])
        first, second = await store.fetch_pending_jobs(T0, 2, VT)
        await store.update_job(completed(first, at(0)))
        await store.update_job(completed(second, at(1800)))
        [third] = await store.fetch_pending_jobs(at(3601), 1, VT)  # expires the first
        assert [await store.count(s) for s in JobStatus] == [1, 1, 0]
        await store.update_job(completed(third, at(0)))
        await store.fetch_pending_jobs(at(3620), 1, VT)  # within a minute of the last expiry: none
        assert await store.count(JobStatus.COMPLETED) == 2
        await store.fetch_pending_jobs(at(3662), 1, VT)
        assert await store.count(JobStatus.COMPLETED) == 1
        await store.fetch_pending_jobs(at(5401), 1, VT)
        assert await store.count() == 0


async def test_next_due_time_follows_due_times_and_leases(store: SQLiteStore[Payload]) -> None:
    assert await store.next_due_time() is None
    await store.add_jobs([job(1, due=at(10)), job(2, due=at(20))])
    assert await store.next_due_time() == at(10)
    [first] = await store.fetch_pending_jobs(at(10), 1, VT)
    assert await store.next_due_time() == at(20)
    await store.update_job(completed(first, at(11)))
    [second] = await store.fetch_pending_jobs(at(25), 1, VT)
    assert await store.next_due_time() == at(25) + VT  # the lease's expiry
    await store.update_job(replace(second, visible_after=None))  # released
    assert await store.next_due_time() == at(20)


@pytest.mark.parametrize("use_returning", [True, False], ids=["returning", "select-then-update"])
async def test_two_stores_on_one_file_never_share_a_job(db: Path, use_returning: bool) -> None:
    """Two connections claim at once, each in its own worker thread. Without ``RETURNING``
    (SQLite < 3.35) the claim is a SELECT and then an UPDATE: only the write lock taken up
    front (``BEGIN IMMEDIATE``) keeps the other connection from claiming between the two.
    Under a deferred ``BEGIN`` a claim from a stale snapshot fails as busy here."""
    count = 300
    async with SQLiteStore(db, Payload) as one, SQLiteStore(db, Payload) as two:
        one._use_returning = two._use_returning = use_returning
        await one.add_jobs([job(n) for n in range(count)])
        claims: list[str] = []

        async def fetch(store: SQLiteStore[Payload]) -> None:
            while len(claims) <= count and (batch := await store.fetch_pending_jobs(at(1), 7, VT)):
                claims.extend(j.id for j in batch)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for store in (one, two, one, two):
                    tg.start_soon(fetch, store)
    assert len(claims) == len(set(claims)) == count


# -- a lock held by another connection is transient --------------------------------------------


@pytest.fixture
def locked(store: SQLiteStore[Payload], raw: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Another connection holding the write lock (``raw.rollback()`` lets go)."""
    raw.execute("BEGIN IMMEDIATE")
    yield raw
    if raw.in_transaction:
        raw.execute("ROLLBACK")


async def test_a_held_write_lock_is_a_transient_error(db: Path, raw: sqlite3.Connection) -> None:
    async with SQLiteStore(db, Payload, busy_timeout=0.01) as store:
        await store.add_job(job(1))
        [leased] = await store.fetch_pending_jobs(T0, 1, VT)
        raw.execute("BEGIN IMMEDIATE")
        calls = [
            store.add_job(job(2)),
            store.fetch_pending_jobs(at(3600), 1, VT),
            store.update_job(completed(leased, at(1))),
            store.purge(completed_before=at(1)),
        ]
        for call in calls:
            with pytest.raises(TransientStoreError, match="is busy") as caught:
                await call
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        raw.execute("ROLLBACK")
        await store.update_job(completed(leased, at(1)))  # nothing was left half-done
        assert [await store.count(s) for s in JobStatus] == [0, 1, 0]


class CountingStore(SQLiteStore[Payload]):
    """Sets ``blocked`` on the first transient error, so a test knows the scheduler is retrying."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocked = anyio.Event()

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[Payload]]:
        try:
            return await super().fetch_pending_jobs(now, limit, visibility_timeout)
        except TransientStoreError:
            self.blocked.set()
            raise


async def test_the_scheduler_retries_through_a_held_lock(
    db: Path, raw: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    async with CountingStore(db, Payload, busy_timeout=0.01) as store:
        await store.add_job(job(1, job_id="waits", due=datetime.now(timezone.utc)))
        done = anyio.Event()

        async def handler(_: Job[Payload]) -> None:
            done.set()

        raw.execute("BEGIN IMMEDIATE")
        backoff = anysched.Backoff(initial=0.01, maximum=0.05, jitter=0)
        with anyio.fail_after(30):
            async with open_scheduler(store, handler, workers=2, fetch_interval=0.05, store_backoff=backoff):
                await store.blocked.wait()
                assert not done.is_set()
                raw.execute("ROLLBACK")
                await done.wait()
        assert (await store.get_job("waits")).status is JobStatus.COMPLETED
    assert "store fetch_pending_jobs failed (attempt 1)" in caplog.text


# -- the scheduler on a SQLite store ----------------------------------------------------------------


async def test_the_scheduler_runs_every_job_and_fails_an_undecodable_one(
    store: SQLiteStore[Payload], raw: sqlite3.Connection
) -> None:
    count = 50
    await store.add_jobs([job(n, job_id=f"j{n}", due=datetime.now(timezone.utc)) for n in range(count)])
    raw.execute("""UPDATE anysched_jobs SET payload = '"not a payload"' WHERE id = 'j7'""")
    seen: list[int] = []
    all_done = anyio.Event()

    async def handler(j: Job[Payload]) -> None:
        seen.append(j.payload.n)
        if len(seen) == count - 1:
            all_done.set()

    with anyio.fail_after(30):
        async with open_scheduler(store, handler, workers=5, fetch_interval=0.05):
            await all_done.wait()
    assert sorted(seen) == [n for n in range(count) if n != 7]
    assert [await store.count(s) for s in JobStatus] == [0, count - 1, 1]


# -- cancellation ------------------------------------------------------------------------------------


async def test_a_claim_cancelled_while_its_thread_runs_still_returns_its_jobs(
    store: SQLiteStore[Payload], monkeypatch: pytest.MonkeyPatch
) -> None:
    """anyio waits for the thread and returns its result; the cancellation lands at the
    caller's next checkpoint, so the caller (the scheduler) owns the jobs and hands them back."""
    await store.add_jobs([job(1, job_id="j1"), job(2, job_id="j2")])
    committed, may_return = anyio.Event(), threading.Event()
    claim = store._claim
    received: list[Job[Payload]] = []

    def claim_then_wait(*args: Any) -> list[Job[Payload]]:
        jobs = claim(*args)  # the claim transaction has committed
        anyio.from_thread.run_sync(committed.set)
        may_return.wait(timeout=30)
        return jobs

    async def fetch() -> None:
        received.extend(await store.fetch_pending_jobs(T0, 10, VT))

    monkeypatch.setattr(store, "_claim", claim_then_wait)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch)
            await committed.wait()
            tg.cancel_scope.cancel()
            may_return.set()
    assert sorted(j.id for j in received) == ["j1", "j2"]


async def test_a_claim_whose_result_cannot_be_delivered_hands_its_jobs_back(
    store: SQLiteStore[Payload], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Were the cancellation raised as the thread returns, nobody would receive the
    claimed jobs: the store hands them back at once instead of leaving them leased."""
    await store.add_jobs([job(1, job_id="j1"), job(2, job_id="j2")])
    run_sync = anyio.to_thread.run_sync
    scope = anyio.CancelScope()

    async def run_sync_then_checkpoint(*args: Any, **kwargs: Any) -> Any:
        result = await run_sync(*args, **kwargs)
        scope.cancel()  # as if cancelled while the thread ran (no effect inside the shielded hand-back)
        await anyio.lowlevel.checkpoint()  # a backend that delivers the cancellation here
        return result

    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync_then_checkpoint)
    with scope:
        await store.fetch_pending_jobs(T0, 10, VT)
    assert scope.cancelled_caught
    assert "handed back 2 claimed job(s) that no caller received" in caplog.text
    monkeypatch.undo()
    again = await store.fetch_pending_jobs(T0, 10, VT)
    assert sorted((j.id, j.attempts) for j in again) == [("j1", 1), ("j2", 1)]


async def test_retries_timeouts_and_explicit_outcomes_on_sqlite(store: SQLiteStore[Payload]) -> None:
    scenario = RetryScenario()
    await scenario.run(store)
    scenario.check({job_id: await store.get_job(job_id) for job_id in scenario.runs})
