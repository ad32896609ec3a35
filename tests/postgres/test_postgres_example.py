"""examples/postgres runs against the server on both backends, stops on Ctrl+C, and fails fast with no server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess run: once per nox run, on the newest Python

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "postgres" / "main.py"


def _run(url: str, *arguments: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ANYSCHED_POSTGRES_URL": url}
    command = [sys.executable, str(EXAMPLE), *arguments]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_example_fails_fast_without_a_server() -> None:
    with _run("postgresql://someone:s3cret@127.0.0.1:1/test") as example:
        output, _ = example.communicate(timeout=30)
    assert example.returncode == 1
    assert "no PostgreSQL server answered at ANYSCHED_POSTGRES_URL" in output
    assert "s3cret" not in output


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_example_sends_email_and_stops_on_ctrl_c(postgres_url: str, schema: str, backend: str) -> None:
    with _run(postgres_url, "--backend", backend, "--schema", schema) as example:
        assert example.stdout is not None
        seen: list[str] = []
        for line in example.stdout:  # bounded: the jobs are due within 30 s
            seen.append(line)
            if " sent " in line or "failed on worker" in line:
                example.send_signal(signal.SIGINT)
                break
        rest, _ = example.communicate(timeout=60)
    output = "".join(seen) + rest
    assert example.returncode == 0, output
    assert "added 20 email jobs" in output
    assert "SIGINT received: shutting down gracefully" in output
    assert "scheduler stopped" in output
