"""The project's checks, on the Pythons this machine has; nox never downloads one.

``python3 -m nox`` runs lint, types, the tests (each on asyncio and trio) on every Python
3.10-3.13 found here, coverage of them all, and the package build. It says which versions it
did not find; with ``CI`` set (as ``.ci/run`` sets it) a missing version fails the run.
``python3 -m nox -s demo`` runs the demo; ``python3 -m nox -s example -- mongo`` (or ``sqlite``,
``memory``, ``kinds``, ``postgres``, ``schedules``) runs an example, its server included
(Postgres: ``ANYSCHED_POSTGRES_URL``, by default the server at 127.0.0.1:5432).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"  # the first with download_python (--download-python)
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.download_python = "never"  # a Python we do not have is reported, not fetched
nox.options.error_on_missing_interpreters = True  # and a session that cannot get its Python fails
nox.options.sessions = ["lint", "types", "tests", "coverage", "docs", "build"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS: list[str] = nox.project.python_versions(PYPROJECT)
EXTRAS = ".[trio,mongo,motor,sqlite,postgres]"
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")

SECANTUSDB = "SecantusDB==0.7.0b3"
"""The MongoDB-compatible server the Mongo tests, example and bench start when ANYSCHED_MONGODB_URL
is not set. It is GPL-2.0 and a beta: it lives in a virtualenv of its own (``.nox/_secantusdb``)
and runs as a separate process."""


def _python_answers(version: str) -> bool:
    """Whether ``python<version>`` is on PATH and really is that version (a pyenv shim for a
    version that is installed but not selected is on PATH and fails when run)."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return True  # the Python running nox is always at hand
    executable = shutil.which(f"python{version}")
    if executable is None:
        return False
    probe = [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
    try:
        answer = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return answer.returncode == 0 and answer.stdout.strip() == version


FOUND = [version for version in PYTHONS if _python_answers(version)]
MISSING = [version for version in PYTHONS if version not in FOUND]
# In CI every version must run: its sessions ask for all of them, and a missing one fails
# (error_on_missing_interpreters). Elsewhere the sessions run on the versions found here, and
# with none found they still ask for one, so that nox fails instead of running nothing.
TEST_PYTHONS = PYTHONS if IN_CI or not FOUND else FOUND
NEWEST = TEST_PYTHONS[-1]
OLDEST = TEST_PYTHONS[0]


def _missing_note() -> str:
    if not MISSING:
        return f"Python {', '.join(PYTHONS)}: all found"
    missing = ", ".join(MISSING)
    if not FOUND:
        return f"NO Python {PYTHONS[0]}-{PYTHONS[-1]} found on PATH (looked for {missing}): nothing can run"
    if IN_CI:
        return f"Python {missing} NOT FOUND: CI needs every version, so their sessions fail"
    return (
        f"Python {missing} NOT FOUND on PATH: tested on {', '.join(FOUND)} only "
        "(install the others, or put them on PATH, to test there too; nox never downloads one)"
    )


if MISSING:  # said first, and again after coverage, so that nobody misses it
    print(f"anysched: {_missing_note()}", file=sys.stderr)


@nox.session(python=NEWEST)
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=NEWEST)
def types(session: nox.Session) -> None:
    """pyright and mypy, both strict, on src/, examples/, tests/ and bench/ (read as Python 3.10)."""
    session.install("-e", EXTRAS, *nox.project.dependency_groups(PYPROJECT, "typing", "bench"))
    session.run("pyright")
    session.run("mypy")
    for conftest in ("tests/mongo/conftest.py", "tests/postgres/conftest.py"):  # more `conftest` modules: see pyproject
        session.run("mypy", conftest)
    session.run("pyright", "--verifytypes", "anysched", "--ignoreexternal")


@nox.session(python=TEST_PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite; every async test runs on asyncio and on trio."""
    session.install("-e", EXTRAS, *nox.project.dependency_groups(PYPROJECT, "test"))
    if not os.environ.get("ANYSCHED_MONGODB_URL"):
        install_secantusdb(session)
    env = {"COVERAGE_FILE": f".coverage.{session.python}"}
    cov = ["--cov", "--cov-report="]
    # Four test processes on any machine: most tests wait (on real clocks, servers, subprocesses)
    # rather than compute, so even 2 cores run them in about half the time.
    parallel = ["-n", "4", *cov]
    if session.posargs:
        session.run("pytest", *parallel, *session.posargs, env=env)
        return
    ignored: list[str] = []
    if session.python not in (OLDEST, NEWEST):
        # The Mongo suite (four driver flavours against a test server) and the Postgres suite are
        # half of a run and their code paths do not depend on the Python: the oldest and the
        # newest cover them.
        ignored = ["--ignore=tests/mongo", "--ignore=tests/postgres"]
    session.run("pytest", *parallel, "-m", "not chaos and not slow", *ignored, env=env)
    if session.python == NEWEST:
        # The chaos runs and the slow end-to-end runs (subprocesses, killed processes, a restarted
        # server) exercise logic that does not change between Pythons: once per nox run, on the
        # newest Python, one at a time (their bounds assume they have the machine to themselves).
        session.run("pytest", *cov, "--cov-append", "-m", "chaos or slow", env=env)


@nox.session(python=NEWEST)
def coverage(session: nox.Session) -> None:
    """Branch coverage of all the test runs together."""
    session.install("coverage[toml]")
    files = [str(path) for path in Path().glob(".coverage.*")]
    if not files:
        session.error("no coverage data: run the tests session first (python3 -m nox -s tests coverage)")
    session.run("coverage", "combine", *files)
    session.run("coverage", "report", "--fail-under=90")
    if MISSING:
        session.warn(f"anysched: {_missing_note()}")


@nox.session(python=NEWEST)
def build(session: nox.Session) -> None:
    """The sdist and wheel, built and checked as a package index will read them."""
    session.install("build", "twine")
    shutil.rmtree("dist", ignore_errors=True)
    session.run("python", "-m", "build")
    session.run("twine", "check", "--strict", *(str(path) for path in Path("dist").iterdir()))


@nox.session(python=NEWEST)
def demo(session: nox.Session) -> None:
    """The demo: 20 jobs on the memory store, some failing, on asyncio (``-- --backend trio``)."""
    session.install("-e", ".[trio]")
    session.run("python", "examples/simple/main.py", *session.posargs)


@nox.session(python=NEWEST)
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors, then its code snippets run on asyncio and trio."""
    # autodoc imports every store, so their drivers too
    session.install("-e", ".[trio,sqlite,mongo,postgres]", *nox.project.dependency_groups(PYPROJECT, "docs"))
    # A fresh environment (-E): an incremental build does not repeat an unchanged page's warnings.
    session.run("sphinx-build", "-W", "--keep-going", "-n", "-E", "-q", "-b", "html", "docs", "docs/_build/html")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_docs.py")


EXAMPLES = {
    "memory": ("[trio]", "examples/simple/main.py"),
    "sqlite": ("[trio,sqlite]", "examples/sqlite/main.py"),
    "mongo": ("[mongo]", "examples/mongo/main.py"),
    "kinds": ("[sqlite]", "examples/kinds/main.py"),
    "postgres": ("[trio,postgres]", "examples/postgres/main.py"),
    "schedules": ("[trio,sqlite]", "examples/schedules/main.py"),
}


@nox.session(python=NEWEST)
def example(session: nox.Session) -> None:
    """One example, its server included: ``-- mongo`` (or sqlite, memory, kinds, postgres, schedules) [arguments]."""
    if not session.posargs or session.posargs[0] not in EXAMPLES:
        session.error(f"name an example: python3 -m nox -s example -- {{{','.join(EXAMPLES)}}} [arguments]")
    name, *arguments = session.posargs
    extras, script = EXAMPLES[name]
    session.install("-e", f".{extras}")
    if name == "mongo" and not os.environ.get("ANYSCHED_MONGODB_URL"):
        install_secantusdb(session)  # where the example looks for it, to start it and stop it after
    if name == "sqlite" and not arguments:
        arguments = ["--db", str(Path(session.create_tmp(), "anysched-example.db"))]
    session.run("python", script, *arguments)


def install_secantusdb(session: nox.Session) -> Path:
    """``secantusd-py``, installed once into ``.nox/_secantusdb``, where the Mongo tests, the
    example and the bench look for it when it is not on PATH."""
    venv = Path(".nox", "_secantusdb").resolve()
    binary = venv / "bin" / "secantusd-py"
    if not binary.exists():
        session.log(f"installing {SECANTUSDB} into {venv} (the Mongo test server)")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", SECANTUSDB], check=True)
    return binary
