"""Exactly once per slot on PostgreSQL: the SQLite proof (``tests/schedules/test_schedule_processes.py``)
with its processes on one table of the test server, some SIGKILLed and restarted.

Each process declares the schedule, so each puts it into the store at start (a schedules write
that moves the change marker while the others tick) and enqueues every slot under the slot's id:
the table's primary key keeps one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from anysched import Job
from anysched.stores.postgres import PostgresStore

sys.path.insert(0, str(Path(__file__).parent.parent / "schedules"))
from schedule_process import SCHEDULE
from test_schedule_processes import check, run_processes

pytestmark = pytest.mark.slow  # a subprocess run: once per nox run, on the newest Python


async def stored(url: str, schema: str) -> tuple[list[Job[int]], list[str]]:
    """Every job in the table, and the ids of the stored schedules."""
    jobs: list[Job[int]] = []
    async with PostgresStore(url, int, schema=schema) as store:
        while page := await store.list_jobs(limit=500, after=jobs[-1].id if jobs else None):
            jobs.extend(page)
        schedules = [schedule.id for schedule in await store.list_schedules()]
    return jobs, schedules


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.timeout(120)
def test_each_slot_is_enqueued_once_and_run_once_across_killed_and_restarted_processes_on_postgres(
    tmp_path: Path, postgres_url: str, schema: str
) -> None:
    anyio.run(stored, postgres_url, schema)  # creates the tables before the processes race to
    processes, ready, until = run_processes(tmp_path, ["postgres", postgres_url, schema])
    jobs, schedules = anyio.run(stored, postgres_url, schema)
    assert schedules == [SCHEDULE.id]  # put by every process, kept once
    check(processes, jobs, ready, until)
