"""The project's checks: ``nox`` runs them all (lint, types, tests on every installed Python
3.10-3.13, each on asyncio and trio, then coverage); ``nox -s demo`` runs the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "types", "tests", "coverage", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
EXTRAS = ".[trio,mongo,motor,sqlite]"

SECANTUSDB = "SecantusDB==0.7.0b3"
"""The MongoDB-compatible server the Mongo tests start when MONGODB_URI is not set. It is
GPL-2.0 and a beta: it lives in a virtualenv of its own and runs as a separate process."""


@nox.session(python=PYTHONS[-1])
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHONS[0])
def types(session: nox.Session) -> None:
    """pyright and mypy, both strict, on src/, examples/, tests/ and bench/."""
    session.install("-e", EXTRAS, *nox.project.dependency_groups(PYPROJECT, "typing"))
    session.run("pyright")
    session.run("mypy")
    for conftest in ("tests/mongo/conftest.py", "tests/postgres/conftest.py"):  # more `conftest` modules: see pyproject
        session.run("mypy", conftest)
    session.run("pyright", "--verifytypes", "anysched", "--ignoreexternal")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite; every async test runs on asyncio and on trio."""
    session.install("-e", EXTRAS, *nox.project.dependency_groups(PYPROJECT, "test"))
    env = {"COVERAGE_FILE": f".coverage.{session.python}"}
    if not os.environ.get("MONGODB_URI") and not os.environ.get("ANYSCHED_SECANTUSD"):
        env["ANYSCHED_SECANTUSD"] = _secantusd(session)
    # The chaos runs and the slow end-to-end runs (subprocesses, killed processes, a restarted
    # server) exercise logic that does not change between Pythons and take minutes under
    # coverage: once per nox run is enough, on the newest Python.
    args = session.posargs or ([] if session.python == PYTHONS[-1] else ["-m", "not chaos and not slow"])
    if not session.posargs and session.python not in (PYTHONS[0], PYTHONS[-1]):
        # The Mongo suite (four driver flavours against a test server) is a third of a run and
        # its code paths do not depend on the Python: the oldest and the newest cover them.
        args += ["--ignore=tests/mongo"]
    session.run("coverage", "run", "-m", "pytest", *args, env=env)


@nox.session(python=PYTHONS[-1])
def coverage(session: nox.Session) -> None:
    """Branch coverage of all the test runs together."""
    session.install("coverage[toml]")
    files = [str(path) for path in Path().glob(".coverage.*")]
    if not files:
        session.skip("no coverage data: run the tests session first")
    session.run("coverage", "combine", *files)
    session.run("coverage", "report", "--fail-under=90")


@nox.session(python=PYTHONS[-1])
def demo(session: nox.Session) -> None:
    """The demo: 20 jobs on the memory store, some failing, on asyncio (``-- --backend trio``)."""
    session.install("-e", ".[trio]")
    session.run("python", "examples/simple/main.py", *session.posargs)


@nox.session(python=PYTHONS[-1])
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors, then its code snippets run on asyncio and trio."""
    # autodoc imports every store, so their drivers too
    session.install("-e", ".[trio,sqlite,mongo]", *nox.project.dependency_groups(PYPROJECT, "docs"))
    # A fresh environment (-E): an incremental build does not repeat an unchanged page's warnings.
    session.run("sphinx-build", "-W", "--keep-going", "-n", "-E", "-q", "-b", "html", "docs", "docs/_build/html")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_docs.py")


def _secantusd(session: nox.Session) -> str:
    """The path of ``secantusd-py``, installed once into ``.nox/_secantusdb`` if need be."""
    venv = Path(".nox", "_secantusdb").resolve()
    binary = venv / "bin" / "secantusd-py"
    if not binary.exists():
        session.log(f"installing {SECANTUSDB} into {venv} (the Mongo tests' server)")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", SECANTUSDB], check=True)
    return str(binary)
