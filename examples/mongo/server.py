"""The MongoDB the example talks to: ``ANYSCHED_MONGODB_URL``'s, else a test server started for the run.

The test server is SecantusDB, a MongoDB-compatible server (GPL, a beta) that runs as a separate
process from a virtualenv of its own: ``secantusd-py`` on PATH, or where ``python3 -m nox``
installs it (``.nox/_secantusdb``). It keeps its data in memory and stops when the example ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

URL_ENV = "ANYSCHED_MONGODB_URL"
INSTALLED_BY_NOX = Path(__file__).resolve().parents[2] / ".nox" / "_secantusdb" / "bin" / "secantusd-py"


@contextmanager
def mongodb_url() -> Generator[str, None, None]:
    """The URL to connect to, with a test server running behind it for the block if need be."""
    if url := os.environ.get(URL_ENV):
        yield url
        return
    binary = shutil.which("secantusd-py") or (str(INSTALLED_BY_NOX) if INSTALLED_BY_NOX.exists() else None)
    if binary is None:
        sys.exit(
            f"no MongoDB: set {URL_ENV} to one, or run `python3 -m nox -s example -- mongo`, "
            "which installs a test server (SecantusDB) and starts it for the example"
        )
    with _secantusd(binary) as port:
        print(f"{URL_ENV} is not set: started a SecantusDB test server on 127.0.0.1:{port}", file=sys.stderr)
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"


@contextmanager
def _secantusd(binary: str) -> Generator[int, None, None]:
    port = _free_port()
    command = [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:"]
    with tempfile.TemporaryFile() as log:
        # A session of its own: Ctrl+C in the terminal stops the example gracefully, and the
        # server must keep answering until the example has handed its jobs back.
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_until_listening(port, server)
            yield port
        finally:
            server.terminate()
            server.wait(timeout=15)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(port: int, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the test server (secantusd-py) did not start within {timeout:g} s")
