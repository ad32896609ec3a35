"""The proof on PostgreSQL: worker processes share one table, some are SIGKILLed mid-job, and no job is lost.

Several separate Python processes (alternately on asyncio and trio) run a few thousand jobs
from one table (the shape of ``tests/sqlite/test_sqlite_processes.py``). The test kills some
of them with SIGKILL while they run jobs and starts replacements. At the end every job is
completed, exactly once by a process that was not killed or last by a killed one, and every
second run of a job follows a run in a killed process whose lease had to expire first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from anysched.stores.postgres import PostgresStore
from killed_workers import Target, run_killed_workers

pytestmark = pytest.mark.slow  # a subprocess run: once per nox run, on the newest Python


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.timeout(120)
def test_killed_worker_processes_lose_no_job(tmp_path: Path, postgres_url: str, schema: str) -> None:
    worker = Path(__file__).with_name("postgres_worker_process.py")
    target = Target(worker, [postgres_url, schema], lambda: PostgresStore(postgres_url, int, schema=schema))
    run_killed_workers(tmp_path, target)
