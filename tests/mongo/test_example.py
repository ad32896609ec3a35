"""examples/mongo runs against ANYSCHED_MONGODB_URL's server or a test server it starts itself,
stops when its jobs are done or on Ctrl+C, and fails fast when the server does not answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mongo_support import URI_ENV, Server, free_port, secantusd_binary

pytestmark = pytest.mark.slow  # a subprocess run: once per nox run, on the newest Python

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "mongo" / "main.py"


def _run(env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, str(EXAMPLE)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _with_url(url: str) -> dict[str, str]:
    return {**os.environ, URI_ENV: url}


def test_the_example_fails_fast_without_a_server() -> None:
    with _run(_with_url(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true")) as example:
        output, _ = example.communicate(timeout=30)
    assert example.returncode == 1
    assert f"no MongoDB server answered at {URI_ENV}" in output


def test_the_example_sends_email_and_stops_on_ctrl_c(mongo_server: Server) -> None:
    with _run(_with_url(mongo_server.uri)) as example:
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


def test_with_no_url_the_example_starts_a_test_server_and_runs_every_job() -> None:
    binary = secantusd_binary()
    if binary is None:
        pytest.skip("no secantusd-py to start")  # mongo_support.no_server has failed the run in CI already
    env = {name: value for name, value in os.environ.items() if name != URI_ENV}
    env["PATH"] = os.pathsep.join([str(Path(binary).parent), env.get("PATH", "")])
    with _run(env) as example:
        output, _ = example.communicate(timeout=120)  # the jobs are due within 30 s
    assert example.returncode == 0, output
    assert f"{URI_ENV} is not set: started a SecantusDB test server" in output
    assert "added 20 email jobs" in output
    assert "scheduler stopped" in output
    assert output.count(" completed on worker ") + output.count(" failed for good on worker ") == 20
