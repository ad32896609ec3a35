"""The connection string and its password never appear in a message, a log line or a repr: not in
a normal run, not when the database is missing, not when the server is gone, not in a listener."""

from __future__ import annotations

import logging
import traceback
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from anysched import Job
from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload

pytestmark = pytest.mark.anyio

SECRET = "hunter2-s3cret-pw"
NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _with_password(url: str, *, database: str | None = None, port: int | None = None) -> str:
    """``url`` with a password (trust authentication accepts any), and maybe another database or port."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = f"{parts.hostname}:{port or parts.port or 5432}"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, f"{user}:{SECRET}@{host}", path, parts.query, ""))


def _everything_said(caplog: pytest.LogCaptureFixture, *errors: BaseException) -> str:
    texts = [record.getMessage() for record in caplog.records]
    texts += [repr(record.args) for record in caplog.records]
    texts += ["".join(traceback.format_exception(error)) for error in errors]
    return "\n".join(texts)


async def test_a_run_never_shows_the_password(postgres_url: str, schema: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = _with_password(postgres_url)
    async with PostgresStore(url, Payload, schema=schema) as store:
        assert SECRET not in repr(store)
        woken = anyio.Event()
        async with store.wake_ups(woken.set):
            await store.add_job(Job.create(Payload(1), process_after=NOW))
            with anyio.fail_after(10):
                await woken.wait()
        await store.fetch_pending_jobs(NOW, 1, timedelta(seconds=5))
    assert SECRET not in _everything_said(caplog)


@pytest.mark.parametrize("broken", ["database", "port"])
async def test_a_failed_connection_never_shows_the_password(
    postgres_url: str, schema: str, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    caplog.set_level(logging.DEBUG)
    if broken == "database":
        url = _with_password(postgres_url, database="anysched_no_such_db")
    else:
        url = _with_password(postgres_url, port=1) + "?connect_timeout=2"
    store = PostgresStore(url, Payload, schema=schema)
    with pytest.raises(Exception) as caught:  # noqa: PT011 -- any error: none may show the secret
        await store.open()
    await store.aclose()
    said = _everything_said(caplog, caught.value)
    assert SECRET not in said
    assert "anysched_no_such_db" not in str(caught.value)
