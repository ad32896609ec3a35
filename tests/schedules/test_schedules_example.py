"""The schedules example runs on both backends: the weekly digest fires once at Monday 08:00 in Paris."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "schedules" / "main.py"

pytestmark = pytest.mark.slow  # a subprocess run: once per nox run, on the newest Python


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_example_sends_the_weekly_digest_once_at_its_slot(backend: str, tmp_path: Path) -> None:
    command = [sys.executable, str(EXAMPLE), "--backend", backend, "--seconds", "4", "--db", str(tmp_path / "s.db")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    lines = result.stdout.splitlines()
    digests = [line for line in lines if line.startswith("digest ")]
    assert digests == ["digest for slot 2026-06-01 08:00:00 CEST (job schedule:weekly-digest@2026-06-01T06:00:00Z)"]
    heartbeats = [line for line in lines if line.startswith("heartbeat ")]
    assert 3 <= len(heartbeats) <= 6
    assert len(set(heartbeats)) == len(heartbeats)
    assert lines[-1] == "done"
