"""Exactly once per slot on MongoDB: the SQLite proof (``tests/schedules/test_schedule_processes.py``)
with its processes on one collection of the test server, some SIGKILLed and restarted."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import anyio
import pymongo
import pytest
from mongo_support import CLIENT_OPTIONS, DATABASE, Server

from anysched import Job
from anysched.stores.mongo import MongoStore

sys.path.insert(0, str(Path(__file__).parent.parent / "schedules"))
from test_schedule_processes import check, run_processes

pytestmark = pytest.mark.slow  # a subprocess run: once per nox run, on the newest Python


async def stored_jobs(uri: str, collection: str) -> list[Job[int]]:
    jobs: list[Job[int]] = []
    with pymongo.MongoClient(uri, **CLIENT_OPTIONS) as client:
        store = MongoStore(client[DATABASE][collection], int)
        while page := await store.list_jobs(limit=500, after=jobs[-1].id if jobs else None):
            jobs.extend(page)
    return jobs


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.timeout(120)
def test_each_slot_is_enqueued_once_across_killed_and_restarted_processes_on_mongo(
    tmp_path: Path, mongo_server: Server
) -> None:
    collection = f"schedules_{uuid.uuid4().hex[:8]}"
    processes, ready, until = run_processes(tmp_path, ["mongo", mongo_server.uri, DATABASE, collection])
    check(processes, anyio.run(stored_jobs, mongo_server.uri, collection), ready, until)
