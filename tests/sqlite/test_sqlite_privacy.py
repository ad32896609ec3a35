"""No secrets leave a SQLite store: payload values stay out of messages, and its files are the owner's.

A payload may hold a card number, a token, a password: it must not show in an exception's
message, in anything chained to it, in a log line or in a failed job's ``last_error``. The
store works in worker threads, so these tests run on the real clock of both backends.
"""

# White-box tests: they read the store's private state and use anysched.testing's private helpers.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import sys
import traceback
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
from pydantic import AfterValidator

from anysched import Job, JobStatus, PayloadError, Schedule
from anysched._codec import PayloadCodec
from anysched.stores.sqlite import SQLiteStore
from anysched.testing import _VT as VT
from anysched.testing import Payload
from anysched.testing import _at as at
from anysched.testing import _job as job

pytestmark = pytest.mark.anyio

CARD = "4111111111111111"


@pytest.fixture(autouse=True)
def all_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def assert_no_card(error: BaseException) -> None:
    """Neither the error nor anything chained to it shows the card, nor does its traceback."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or current in seen:
            continue
        seen.append(current)
        assert CARD not in str(current), current
        assert CARD not in repr(current), current
        pending += [current.__cause__, current.__context__]
    assert CARD not in "".join(traceback.format_exception(type(error), error, error.__traceback__))


def card_checked(payload_type: Any, data: Any) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        PayloadCodec(payload_type).decode(data)
    assert_no_card(caught.value)
    return caught.value


def no_card_like(value: str) -> str:
    if CARD in value:
        raise ValueError(f"{value!r} looks like a card number")  # a validator that quotes its input
    return value


# -- the codec ------------------------------------------------------------------------------------


def test_a_payload_that_cannot_be_encoded_is_named_by_type_only() -> None:
    with pytest.raises(PayloadError) as caught:
        PayloadCodec(Payload).encode(Payload(n=CARD))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert str(caught.value) == (
        "a payload of type Payload cannot be encoded as Payload: a value does not match its declared type"
    )
    assert_no_card(caught.value)


@pytest.mark.parametrize(
    ("payload_type", "data", "message"),
    [
        (Payload, {"n": f"{CARD}x"}, "field 'n': Input should be a valid integer, unable to parse string"),
        (Payload, {"n": 1, "note": int(CARD)}, "field 'note': Input should be a valid string (string_type)"),
        (Payload, CARD, "the payload: Input should be a dictionary or an instance of Payload (dataclass_type)"),
        (dict[str, int], {CARD: "x"}, "field '…': Input should be a valid integer"),  # a key is the payload's
        (Annotated[str, AfterValidator(no_card_like)], CARD, "the payload: invalid value (value_error)"),
    ],
    ids=["int-parsing", "wrong-type", "not-a-dict", "mapping-key", "validator-text"],
)
def test_a_stored_payload_that_does_not_decode_is_described_without_its_values(
    payload_type: Any, data: Any, message: str
) -> None:
    assert message in str(card_checked(payload_type, data))


def test_many_errors_are_summed_up() -> None:
    error = card_checked(list[int], [CARD + "x"] * 8)
    assert str(error).endswith("(int_parsing); and 3 more")


# -- the store ------------------------------------------------------------------------------------


async def test_adding_a_payload_that_cannot_be_stored_shows_no_value(
    store: SQLiteStore[Payload], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(PayloadError) as caught:
        await store.add_job(Job.create(Payload(n=CARD)))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert_no_card(caught.value)
    assert CARD not in caplog.text


async def test_a_payload_that_is_not_json_shows_no_value(db: Path) -> None:
    async with SQLiteStore(db, dict[str, float]) as store:
        with pytest.raises(PayloadError, match=r"a payload of type dict cannot be stored as JSON \(ValueError\)"):
            await store.add_job(Job.create({CARD: float("nan")}))


async def test_a_schedule_payload_that_is_not_json_is_a_payload_error_without_its_value(db: Path) -> None:
    """As PostgresStore's: a NaN once escaped as json.dumps's ValueError, not the documented PayloadError."""
    async with SQLiteStore(db, dict[str, float]) as store:
        schedule = Schedule(id="s", payload={CARD: float("nan")}, every=timedelta(seconds=1))
        with pytest.raises(PayloadError, match=r"schedule 's' \(a dict\) cannot be stored as JSON \(ValueError\)"):
            await store.put_schedule(schedule)
        assert await store.list_schedules() == []


async def test_an_undecodable_stored_job_fails_without_its_value_anywhere(
    store: SQLiteStore[Payload], raw: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await store.add_jobs([job(1, job_id="broken"), job(2, job_id="garbled")])
    raw.execute("UPDATE anysched_jobs SET payload = ? WHERE id = 'broken'", (f'{{"n": 1, "note": {CARD}}}',))
    raw.execute("UPDATE anysched_jobs SET payload = ? WHERE id = 'garbled'", (f'{{"n": {CARD},',))
    for job_id in ("broken", "garbled"):
        with pytest.raises(PayloadError) as caught:
            await store.get_job(job_id)
        assert_no_card(caught.value)
    assert await store.fetch_pending_jobs(at(1), 10, VT) == []
    errors = dict(raw.execute("SELECT id, last_error FROM anysched_jobs WHERE status = 'failed'").fetchall())
    assert errors == {
        "broken": "UndecodableDocumentError: stored field 'payload' cannot be decoded (PayloadError:"
        " a stored payload is not a valid Payload: field 'note': Input should be a valid string (string_type))",
        "garbled": "UndecodableDocumentError: stored field 'payload' cannot be decoded (PayloadError:"
        " a stored payload is not JSON: Expecting property name enclosed in double quotes at line 1 column 24)",
    }
    assert "job broken: a stored payload is not a valid Payload" in caplog.text
    assert CARD not in caplog.text


# -- file permissions ------------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, which would leave new files readable by everyone."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.usefixtures("umask_022")
async def test_the_database_and_its_wal_and_shm_files_are_the_owners_only(db: Path) -> None:
    async with SQLiteStore(db, Payload) as store:
        await store.add_job(job(1))
        [leased] = await store.fetch_pending_jobs(at(1), 1, VT)
        assert leased.status is JobStatus.PENDING
        files = [db, db.with_name("jobs.db-wal"), db.with_name("jobs.db-shm")]
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.usefixtures("umask_022")
async def test_an_existing_database_keeps_its_mode(db: Path) -> None:
    await anyio.Path(db).touch(mode=0o640)
    async with SQLiteStore(db, Payload) as store:
        await store.add_job(job(1))
    assert mode(db) == 0o640


async def test_an_in_memory_database_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with SQLiteStore(":memory:", Payload) as store:
        await store.add_job(job(1))
    assert [path async for path in anyio.Path(tmp_path).iterdir()] == []
