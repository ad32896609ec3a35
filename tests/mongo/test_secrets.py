"""No payload value in an exception, a log line (tracebacks included) or a stored ``last_error``."""

# White-box tests: they read the store's private state and use anysched.testing's private helpers.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import traceback
from typing import Any

import pytest
from bson.errors import InvalidDocument
from mongo_support import FaultyDriver
from pymongo.errors import WriteError

from anysched import Job, JobStatus, PayloadError
from anysched.stores.mongo import MongoStore
from anysched.testing import _VT as VT
from anysched.testing import Payload
from anysched.testing import _at as at
from anysched.testing import _job as job

pytestmark = pytest.mark.anyio

CARD = "4111111111111111"


def _our_log(caplog: pytest.LogCaptureFixture) -> str:
    """anysched's log lines as a handler writes them, tracebacks included. (PyMongo's own DEBUG
    command log shows whole documents: an application that keeps payloads secret keeps it off.)"""
    return "\n".join(caplog.handler.format(record) for record in caplog.records if record.name.startswith("anysched"))


def _everything_said(error: BaseException) -> str:
    """The error as a log with ``exc_info`` shows it: message, chain and traceback."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


async def test_a_payload_bson_refuses_is_named_by_type_only(collection: Any, caplog: pytest.LogCaptureFixture) -> None:
    store = MongoStore(collection, dict[str, str])

    async def quoting_bson() -> None:  # what bson says of a value it cannot encode
        raise InvalidDocument(f"cannot encode object: {CARD!r}, of type: <class 'str'>")

    store._driver = FaultyDriver(store._driver, "insert_one", quoting_bson)  # pyright: ignore[reportAttributeAccessIssue]
    with pytest.raises(PayloadError) as raised:
        await store.add_job(Job.create({"card": CARD}, id="card-job"))
    assert CARD not in _everything_said(raised.value)
    assert str(raised.value) == "job 'card-job': its payload cannot be stored as a BSON document (InvalidDocument)"
    assert CARD not in _our_log(caplog)


@pytest.mark.parametrize(
    ("field", "stored"), [("payload", {"n": f"card {CARD}"}), ("max_attempts", CARD), ("timeout", CARD)]
)
async def test_an_undecodable_stored_value_stays_out_of_last_error_and_logs(
    payload_store: MongoStore[Payload], collection: Any, field: str, stored: object, caplog: pytest.LogCaptureFixture
) -> None:
    await payload_store.add_job(job(1, due=at(0), job_id="broken"))
    await _set_raw(collection, "broken", {field: stored})
    assert await payload_store.fetch_pending_jobs(at(5), 10, VT) == []
    failed = await _get_raw(collection, "broken")
    assert failed["status"] == JobStatus.FAILED.value
    assert CARD not in failed["last_error"]
    assert CARD not in _our_log(caplog)
    assert f"stored field {field!r} cannot be decoded" in failed["last_error"]
    assert "stored document cannot be decoded" in _our_log(caplog)


@pytest.mark.parametrize("flavour", ["pymongo-sync", "pymongo-async"])
async def test_a_write_the_server_refuses_is_raised_without_the_servers_words(
    collection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # a schema validator's refusal quotes the value it refused (MongoDB's errInfo consideredValue)
    validator = {"$jsonSchema": {"properties": {"payload": {"properties": {"card": {"maxLength": 4}}}}}}
    await _maybe_await(collection.database.command("create", collection.name, validator=validator))
    store = MongoStore(collection, dict[str, str])
    with pytest.raises(WriteError) as raised:
        await store.add_job(Job.create({"card": CARD}, id="card-job"))
    assert CARD not in _everything_said(raised.value)
    assert CARD not in _our_log(caplog)
    assert raised.value.code == 121
    assert str(raised.value) == "MongoDB add_job failed: WriteError (code 121)"


async def _maybe_await(result: Any) -> Any:
    return await result if hasattr(result, "__await__") else result


async def _set_raw(collection: Any, job_id: str, values: dict[str, Any]) -> None:
    if type(collection).__module__.startswith("pymongo.synchronous"):
        collection.update_one({"_id": job_id}, {"$set": values})
    else:
        await collection.update_one({"_id": job_id}, {"$set": values})


async def _get_raw(collection: Any, job_id: str) -> dict[str, Any]:
    if type(collection).__module__.startswith("pymongo.synchronous"):
        return collection.find_one({"_id": job_id})  # type: ignore[no-any-return]
    return await collection.find_one({"_id": job_id})  # type: ignore[no-any-return]
