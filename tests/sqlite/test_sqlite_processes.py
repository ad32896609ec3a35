"""The proof: worker processes share one SQLite file, some are SIGKILLed mid-job, and no job is lost.

Several separate Python processes (alternately on asyncio and trio) run a few thousand jobs
from one database file. The test kills some of them with SIGKILL while they run jobs and
starts replacements. At the end every job is completed, exactly once by a process that was
not killed or last by a killed one, and every second run of a job follows a run in a killed
process whose lease had to expire first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from anysched.stores.sqlite import SQLiteStore
from killed_workers import Target, run_killed_workers

pytestmark = pytest.mark.slow  # a subprocess run: once per nox run, on the newest Python


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.timeout(120)
def test_killed_worker_processes_lose_no_job(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    worker = Path(__file__).with_name("worker_process.py")
    run_killed_workers(tmp_path, Target(worker, [str(db)], lambda: SQLiteStore(db, int)))
