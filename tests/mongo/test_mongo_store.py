"""MongoStore beyond the contract: documents, dates, indexes, drivers, errors."""

# White-box tests: they read the store's private state and use anysched.testing's private helpers.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import anyio
import pymongo
import pytest
from mongo_support import DATABASE, Server, free_port, open_collection
from pymongo.collection import Collection
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from anysched import Job, JobNotFoundError, JobStatus, PayloadError, TransientStoreError
from anysched.stores.mongo import MongoStore
from anysched.stores.mongo import _is_transient_driver_error as is_transient_driver_error
from anysched.testing import _T0 as T0
from anysched.testing import _VT as VT
from anysched.testing import Payload
from anysched.testing import _at as at
from anysched.testing import _job as job

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    sent_at: datetime | None = None


async def test_a_job_is_one_document_with_bson_dates(payload_store: MongoStore[Payload], collection: Any) -> None:
    await payload_store.add_job(job(7, due=T0 + timedelta(microseconds=123_456), job_id="j7"))
    document = await _raw(collection, "j7")
    assert document["payload"] == {"n": 7, "note": "job 7", "tags": ["a", "7"]}
    assert document["status"] == "pending"
    assert document["process_after"] == T0 + timedelta(microseconds=123_000)  # BSON keeps milliseconds
    assert document["process_after"].tzinfo is not None
    assert document["visible_after"] is None
    assert document["claimable_at"] == document["process_after"]


async def test_a_typed_payload_round_trips(collection: Any) -> None:
    store = MongoStore(collection, Email)
    sent = datetime(2030, 5, 1, 9, 30, tzinfo=timezone.utc)
    await store.add_job(Job.create(Email("a@example.com", "hi", sent), process_after=T0, id="e1"))
    [leased] = await store.fetch_pending_jobs(at(1), 10, VT)
    assert leased.payload == Email("a@example.com", "hi", sent)
    assert isinstance(leased.payload, Email)
    assert (await store.get_job("e1")).payload == leased.payload


async def test_a_payload_that_does_not_fit_is_refused_and_nothing_is_stored(collection: Any) -> None:
    store = MongoStore(collection, Email)
    bad: Job[Any] = Job.create({"to": 1}, id="bad")
    with pytest.raises(PayloadError, match="cannot be encoded as Email"):
        await store.add_job(bad)
    assert await store.count() == 0


async def test_a_payload_bson_cannot_hold_is_a_payload_error(collection: Any) -> None:
    store = MongoStore(collection, dict[str, int])
    with pytest.raises(PayloadError, match="BSON"):
        await store.add_job(Job.create({"huge": 2**70}, id="huge"))
    assert await store.count() == 0


async def test_an_undecodable_stored_job_is_failed_not_crash_looped(
    payload_store: MongoStore[Payload], collection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await payload_store.add_job(job(1, due=at(0), job_id="broken"))
    await payload_store.add_job(job(2, due=at(1), job_id="fine"))
    await _update_raw(collection, "broken", {"$set": {"payload": {"n": "not a number"}}})
    leased = await payload_store.fetch_pending_jobs(at(5), 10, VT)
    assert [j.id for j in leased] == ["fine"]
    broken = await _raw(collection, "broken")
    assert broken["status"] == "failed"
    assert "PayloadError" in broken["last_error"]
    assert [j.id for j in await payload_store.fetch_pending_jobs(at(3600), 10, VT)] == ["fine"]  # lease expired
    assert "stored document cannot be decoded" in caplog.text


async def test_dates_come_back_aware_utc_from_a_naive_client(
    mongo_server: Server, flavour: str, collection_name: str
) -> None:
    async with open_collection(flavour, mongo_server.uri, collection_name, tz_aware=False) as collection:
        store = MongoStore(collection, Payload)
        await store.add_job(job(1, due=at(2)))
        [leased] = await store.fetch_pending_jobs(at(3), 10, VT)
        assert leased.process_after == at(2)
        assert leased.visible_after == at(3) + VT
        assert leased.process_after.tzinfo is timezone.utc
        assert await store.next_due_time() == at(3) + VT


async def test_next_due_time_follows_due_times_and_leases(payload_store: MongoStore[Payload]) -> None:
    assert await payload_store.next_due_time() is None
    await payload_store.add_job(job(1, due=at(10)))
    await payload_store.add_job(job(2, due=at(20)))
    assert await payload_store.next_due_time() == at(10)
    [first] = await payload_store.fetch_pending_jobs(at(10), 1, VT)
    assert await payload_store.next_due_time() == at(20)
    await payload_store.update_job(replace(first, status=JobStatus.COMPLETED, visible_after=None))
    await payload_store.fetch_pending_jobs(at(25), 1, VT)
    assert await payload_store.next_due_time() == at(25) + VT


async def test_get_job_and_count(payload_store: MongoStore[Payload]) -> None:
    for n in range(3):
        await payload_store.add_job(job(n, job_id=f"j{n}"))
    [leased] = await payload_store.fetch_pending_jobs(T0, 1, VT)
    await payload_store.update_job(replace(leased, status=JobStatus.COMPLETED, processed_at=at(1)))
    assert (await payload_store.get_job(leased.id)).status is JobStatus.COMPLETED
    assert await payload_store.count() == 3
    assert await payload_store.count(JobStatus.PENDING) == 2
    with pytest.raises(JobNotFoundError):
        await payload_store.get_job("nope")


async def test_the_store_creates_its_indexes(collection: Any) -> None:
    store = MongoStore(collection, Payload, completed_ttl=timedelta(days=7))
    await store.ensure_indexes()
    indexes = await _indexes(collection)
    assert indexes["anysched_claim"]["key"] == [("status", 1), ("process_after", 1), ("claimable_at", 1)]
    assert indexes["anysched_next_due"]["key"] == [("status", 1), ("claimable_at", 1)]
    ttl = indexes["anysched_completed_ttl"]
    assert ttl["expireAfterSeconds"] == 7 * 24 * 3600
    assert ttl["partialFilterExpression"] == {"status": "completed"}


async def test_indexes_are_created_on_first_use_unless_turned_off(collection: Any) -> None:
    await MongoStore(collection, Payload, create_indexes=False).add_job(job(1))
    assert "anysched_claim" not in await _indexes(collection)
    await MongoStore(collection, Payload).fetch_pending_jobs(T0, 1, VT)
    assert "anysched_claim" in await _indexes(collection)


@pytest.mark.parametrize("flavour", ["pymongo-sync"])
async def test_options_are_checked(collection: Any) -> None:
    with pytest.raises(ValueError, match="claim must be"):
        MongoStore(collection, Payload, claim="all")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="completed_ttl must be > 0"):
        MongoStore(collection, Payload, completed_ttl=-1)
    with pytest.raises(TypeError, match=r"collection must be a collection of pymongo\.MongoClient"):
        MongoStore({"not": "a collection"}, Payload)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("flavour", ["pymongo-sync"])
async def test_an_unreachable_server_is_transient_and_credentials_stay_out(caplog: pytest.LogCaptureFixture) -> None:
    uri = f"mongodb://anyuser:s3cr3t-pw@127.0.0.1:{free_port()}/?directConnection=true"
    async with open_collection("pymongo-sync", uri, "x", serverSelectionTimeoutMS=100) as collection:
        store = MongoStore(collection, Payload)
        with anyio.fail_after(30), pytest.raises(TransientStoreError) as raised:
            await store.add_job(job(1))
    assert isinstance(raised.value.__cause__, ServerSelectionTimeoutError)
    assert "s3cr3t" not in str(raised.value)
    assert "anyuser" not in str(raised.value)
    assert "s3cr3t" not in caplog.text


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (AutoReconnect("x"), True),
        (NetworkTimeout("x"), True),
        (ServerSelectionTimeoutError("x"), True),
        (NotPrimaryError("x"), True),
        (ExecutionTimeout("x", code=50), True),
        (WTimeoutError("x", code=64), True),
        (OperationFailure("x", code=91), True),
        (OperationFailure("x", code=11602), True),
        (OperationFailure("auth failed", code=18), False),
        (OperationFailure("unauthorized", code=13), False),
        (DuplicateKeyError("dup", code=11000), False),
    ],
)
def test_which_driver_errors_are_transient(error: PyMongoError, transient: bool) -> None:
    assert is_transient_driver_error(error) is transient


@pytest.mark.parametrize("flavour", ["pymongo-async", "motor"])
def test_an_asyncio_only_collection_under_trio_names_the_sync_client(collection_name: str, flavour: str) -> None:
    uri = "mongodb://127.0.0.1:1/?directConnection=true"
    if flavour == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        collection: Any = AsyncIOMotorClient[dict[str, Any]](uri)[DATABASE][collection_name]
    else:
        collection = pymongo.AsyncMongoClient[dict[str, Any]](uri)[DATABASE][collection_name]
    store = MongoStore(collection, Payload)

    async def use() -> None:
        await store.fetch_pending_jobs(T0, 1, VT)

    with pytest.raises(RuntimeError, match=r"runs only on asyncio.*pymongo\.MongoClient"):
        anyio.run(use, backend="trio")


def test_importing_without_pymongo_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['pymongo'] = None\n"
        "import anysched\n"
        "try:\n    import anysched.stores.mongo\n"
        "except ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "pip install anysched[mongo]" in result.stdout


def test_importing_anysched_does_not_import_pymongo() -> None:
    code = "import sys, anysched; print('pymongo' in sys.modules, 'motor' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.split() == ["False", "False"]


# -- helpers ---------------------------------------------------------------------------------------


async def _raw(collection: Any, job_id: str) -> dict[str, Any]:
    if isinstance(collection, Collection):
        sync = cast("Collection[dict[str, Any]]", collection)
        found = await anyio.to_thread.run_sync(lambda: sync.find_one({"_id": job_id}))
    else:
        found = await collection.find_one({"_id": job_id})
    assert found is not None
    return dict(found)


async def _update_raw(collection: Any, job_id: str, update: dict[str, Any]) -> None:
    if isinstance(collection, Collection):
        await anyio.to_thread.run_sync(collection.update_one, {"_id": job_id}, update)
    else:
        await collection.update_one({"_id": job_id}, update)


async def _indexes(collection: Any) -> dict[str, Any]:
    if isinstance(collection, Collection):
        sync = cast("Collection[dict[str, Any]]", collection)
        indexes = await anyio.to_thread.run_sync(sync.index_information)
    else:
        indexes = await collection.index_information()
    return dict(indexes)


@pytest.mark.parametrize("flavour", ["pymongo-sync"])
async def test_a_ttl_index_of_another_age_is_a_clear_error(collection: Any) -> None:
    await MongoStore(collection, Payload, completed_ttl=timedelta(days=7)).ensure_indexes()
    with pytest.raises(ValueError, match="drop that index to change the age"):
        await MongoStore(collection, Payload, completed_ttl=timedelta(days=1)).ensure_indexes()


@pytest.mark.parametrize("flavour", ["pymongo-sync"])
async def test_bad_arguments_are_refused_before_any_io(payload_store: MongoStore[Payload]) -> None:
    with pytest.raises(ValueError, match="limit must be an int >= 0"):
        await payload_store.fetch_pending_jobs(T0, -1, VT)
    with pytest.raises(ValueError, match="visibility_timeout must be a positive timedelta"):
        await payload_store.fetch_pending_jobs(T0, 1, timedelta(0))
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        await payload_store.fetch_pending_jobs(T0.replace(tzinfo=None), 1, VT)
    with pytest.raises(TypeError, match=r"job must be an anysched\.Job"):
        await payload_store.add_job("not a job")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
