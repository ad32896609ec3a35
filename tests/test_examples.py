"""The examples run as the README says: the demo to the end on both backends, Ctrl+C stops it
gracefully; the SQLite example on a file, finishing in a second run what a first one left; the kinds example
routes each kind of job to its own function."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
DEMO = EXAMPLES / "simple" / "main.py"
SQLITE = EXAMPLES / "sqlite" / "main.py"
KINDS = EXAMPLES / "kinds" / "main.py"

pytestmark = pytest.mark.slow  # a subprocess run: once per nox run, on the newest Python


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_demo_runs_every_job(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO), "--backend", backend, "--jobs", "8", "--workers", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "added 8 jobs" in result.stdout
    assert "done: {'pending': 0," in result.stdout
    assert "scheduler stopped" in result.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_shuts_the_demo_down_gracefully(backend: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-u", str(DEMO), "--backend", backend, "--jobs", "200", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        assert demo.stdout is not None
        for line in demo.stdout:  # bounded: the demo ends by itself within a minute
            if line.startswith("sent "):
                demo.send_signal(signal.SIGINT)
                break
        output, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0
    assert "SIGINT received: shutting down gracefully" in output
    assert "scheduler stopped" in output
    done = next(line for line in output.splitlines() if line.startswith("done: "))
    assert "'pending': 0," not in done  # most jobs were handed back, not run


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_sqlite_example_runs_every_job_on_a_file(backend: str, tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    command = [sys.executable, str(SQLITE), "--db", str(db), "--jobs", "4", "--backend", backend]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert f"new database {db}: added 4 jobs" in first.stdout
    assert first.stdout.count("hello, person") == 4
    assert "all jobs done." in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert "4 job(s) done before, 0 to go." in again.stdout
    assert "hello, person" not in again.stdout  # a done job is not run again


def test_the_kinds_example_routes_each_kind_to_its_handler(tmp_path: Path) -> None:
    db = tmp_path / "kinds.db"
    result = subprocess.run(
        [sys.executable, str(KINDS), "--db", str(db)], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"added 5 jobs of 3 kinds to {db}" in result.stdout
    handled = sorted(line.strip() for line in result.stdout.splitlines() if line.startswith("  "))
    assert handled == [  # each payload came back from the file as its own kind, to its own function
        "charged ada 19.99",
        "email to ada@example.com: 'Welcome'",
        "email to bob@example.com: 'Your receipt'",
        "image photos/cat.png resized to 640 px wide",
        "image photos/dog.png resized to 320 px wide",
    ]
    assert "done: 5 job(s) completed" in result.stdout
