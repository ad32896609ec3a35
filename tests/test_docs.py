"""Every ```python block in docs/ and README.md runs as written, on asyncio and on trio, or says why it does not.

A page's blocks run in order in one module, as a reader would paste them into one file, in a
temporary directory (so a SQLite file lands there). ``anyio.run(main)`` in a block runs ``main``
on the backend under test; a block that names its backend (``anyio.run(main, backend="trio")``)
keeps it. A block that cannot run here is preceded by a MyST comment line giving the reason:
``% not run: needs a MongoDB server``. A whole program that runs until it gets a signal is
preceded by ``% run: as a program, stopped with SIGINT once it prints a line``: it runs alone, in
a subprocess, and must stop cleanly. A block followed by a line "This prints:" and a ```text block
must print exactly that.

README.md is a page too, but GitHub and package indexes render it, not MyST: its markers are HTML
comments, which both hide (``<!-- not run: a fragment -->``).
"""

from __future__ import annotations

import pkgutil
import re
import signal
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import anyio
import pytest

import anysched.stores

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
FENCE = re.compile(r"^```python$")
NOT_RUN = re.compile(r"^not run: (?P<reason>\S.*)$")
STOPPED_BY_SIGINT = "run: as a program, stopped with SIGINT once it prints a line"
MYST_COMMENT = re.compile(r"^% (?P<text>.*)$")
HTML_COMMENT = re.compile(r"^<!-- (?P<text>.*) -->$")


def comment_syntax(page: Path) -> re.Pattern[str]:
    """How a page writes a one-line comment: an HTML comment in the README (which GitHub and
    package indexes render), a MyST comment in the docs."""
    return HTML_COMMENT if page == README else MYST_COMMENT


def marker(page: Path, line: str) -> str | None:
    """The text of a one-line comment of ``page``, or ``None`` when ``line`` is not one."""
    comment = comment_syntax(page).match(line)
    return comment.group("text") if comment else None


@dataclass(frozen=True)
class Block:
    """One ```python block: where it starts (the line after its fence, 0-based) and its code."""

    page: Path
    line: int
    code: str
    not_run: str | None  # the reason, for a block marked as not runnable
    program: bool = False  # a whole program, run alone in a subprocess and stopped by SIGINT
    prints: str | None = None  # what the block must print, when the page says so

    @property
    def runs_in_page(self) -> bool:
        return self.not_run is None and not self.program


def python_blocks(page: Path) -> list[Block]:
    """The ```python blocks of a Markdown page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    for number, line in enumerate(lines):
        if FENCE.match(line):
            end = lines.index("```", number + 1)
            above = marker(page, lines[number - 1]) if number else None
            not_run = NOT_RUN.match(above or "")
            reason = not_run.group("reason") if not_run else None
            code = "\n".join(lines[number + 1 : end]) + "\n"
            prints = _output_shown_after(lines, end)
            blocks.append(Block(page, number + 1, code, reason, program=above == STOPPED_BY_SIGINT, prints=prints))
    return blocks


def _output_shown_after(lines: list[str], fence_end: int) -> str | None:
    """The text of a "This prints:" ```text block right after the block ending at ``fence_end``."""
    if lines[fence_end + 1 : fence_end + 4] != ["", "This prints:", ""] or lines[fence_end + 4] != "```text":
        return None
    end = lines.index("```", fence_end + 5)
    return "\n".join(lines[fence_end + 5 : end]) + "\n"


PAGES = [*sorted(DOCS.rglob("*.md")), README]
RUNNABLE = [page for page in PAGES if any(block.runs_in_page for block in python_blocks(page))]
PROGRAMS = [block for page in PAGES for block in python_blocks(page) if block.program]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_pages_have_snippets_to_run() -> None:
    """A guard against a parser that finds nothing (and so tests nothing)."""
    assert {"index.md", "tutorial.md", "README.md"} <= {page.name for page in RUNNABLE}
    assert PROGRAMS
    assert any(block.prints for page in RUNNABLE for block in python_blocks(page))
    assert any(block.not_run for block in python_blocks(README))  # its HTML comment markers are read


def test_every_marker_is_right_above_a_block() -> None:
    """A marker that is not on the line right above a ```python block (a typo, a blank line
    between) would leave its block run, or a block unmarked: each one must be where it acts."""
    for page in PAGES:
        markers = [text for line in page.read_text(encoding="utf-8").splitlines() if (text := marker(page, line))]
        blocks = python_blocks(page)
        not_run = [text for text in markers if text.startswith("not run")]
        assert len(not_run) == sum(block.not_run is not None for block in blocks), page_id(page)
        assert markers.count(STOPPED_BY_SIGINT) == sum(block.program for block in blocks), page_id(page)


def test_markers_use_the_page_s_own_comment_syntax() -> None:
    """A MyST ``% not run:`` line in the README would show on GitHub and PyPI as text, and an HTML
    comment in the docs is not what the docs' test reads: each page uses its own."""
    for page in PAGES:
        other = MYST_COMMENT if page == README else HTML_COMMENT
        for line in page.read_text(encoding="utf-8").splitlines():
            text = other.match(line)
            assert not (text and text.group("text").startswith(("not run", "run:"))), f"{page_id(page)}: {line}"


@pytest.fixture
def run_on(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make ``anyio.run`` run on a given backend unless the snippet names one."""
    real_run = anyio.run

    def on(backend: str) -> None:
        def run(func: Callable[..., Any], *args: Any, backend: str | None = None, **options: Any) -> Any:
            return real_run(func, *args, backend=backend or chosen, **options)

        chosen = backend
        monkeypatch.setattr(anyio, "run", run)

    return on


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A fresh module for one page's snippets, importable by name (pydantic and dataclasses look
    types up through ``sys.modules``), run from a temporary directory."""
    monkeypatch.chdir(tmp_path)
    page_module = types.ModuleType("docs_snippets")
    sys.modules[page_module.__name__] = page_module
    try:
        yield page_module
    finally:
        del sys.modules[page_module.__name__]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("page", RUNNABLE, ids=[page_id(page) for page in RUNNABLE])
def test_the_snippets_of_a_page_run(
    page: Path, backend: str, run_on: Callable[[str], None], module: types.ModuleType
) -> None:
    run_on(backend)
    for block in python_blocks(page):
        if block.runs_in_page:
            # Padded so that a traceback names the page and the line of the snippet.
            code = compile("\n" * block.line + block.code, str(page), "exec")
            with redirect_stdout(StringIO()) as printed:
                exec(code, module.__dict__)
            if block.prints is not None:
                assert printed.getvalue() == block.prints, f"{page.name}:{block.line}"


RUN_ON_BACKEND = """
import runpy, sys
import anyio

real_run = anyio.run
backend_under_test = sys.argv[1]
anyio.run = lambda func, *args, backend=None, **kw: real_run(func, *args, backend=backend or backend_under_test, **kw)
runpy.run_path(sys.argv[2], run_name="__main__")
"""
"""Runs the program in ``argv[2]`` with ``anyio.run`` on the backend in ``argv[1]``."""


@pytest.mark.slow  # a subprocess run, like tests/test_examples.py
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("block", PROGRAMS, ids=[f"{block.page.name}:{block.line}" for block in PROGRAMS])
def test_a_program_stops_cleanly_on_sigint(block: Block, backend: str, tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text("\n" * block.line + block.code, encoding="utf-8")
    command = [sys.executable, "-u", "-c", RUN_ON_BACKEND, backend, str(program)]
    with subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        assert run.stdout is not None
        first = run.stdout.readline()  # bounded: the program prints at once, or fails and ends
        run.send_signal(signal.SIGINT)
        output, _ = run.communicate(timeout=30)
    assert run.returncode == 0, first + output
    assert "SIGINT received: shutting down gracefully" in output
    assert "greetings left for the next run" in output


PUBLIC_MODULES = [
    "anysched",
    "anysched.testing",
    *(
        module.name
        for module in pkgutil.iter_modules(anysched.stores.__path__, "anysched.stores.")
        if not module.name.rpartition(".")[2].startswith("_")  # a store's private helpers
    ),
]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_the_api_reference_documents_every_public_name(module_name: str) -> None:
    """Each name in a public module's ``__all__`` has an autodoc directive in docs/api.md, under
    its own path or as the same object exported from ``anysched`` (``MemoryStore``)."""
    module = pytest.importorskip(module_name)  # a store whose driver is not installed is skipped
    documented = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)$", (DOCS / "api.md").read_text(encoding="utf-8"), re.M))
    top_level = [getattr(anysched, path.removeprefix("anysched."), None) for path in documented]
    missing = [
        name
        for name in module.__all__
        if f"{module_name}.{name}" not in documented and not any(getattr(module, name) is obj for obj in top_level)
    ]
    assert not missing, f"docs/api.md has no autodoc directive for {module_name}: {missing}"
