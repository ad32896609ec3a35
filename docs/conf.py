"""Sphinx configuration of anysched's documentation: ``nox -s docs`` builds it with warnings as errors."""

from __future__ import annotations

import logging
import pkgutil
import re
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

from sphinx.pycode import ModuleAnalyzer

import anysched

if TYPE_CHECKING:
    from docutils.nodes import Element
    from sphinx.addnodes import pending_xref
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

project = "anysched"
author = "The anysched developers"
copyright = "the anysched developers"
release = _version("anysched")
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
# The docstrings use reST field lists (``:param x:``), which autodoc reads as they are: no napoleon.
# No intersphinx: its inventories would be fetched from the network at every build, and CI has none.

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"  # types beside each :param:, where readers look for them
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = True  # ``store_backoff=Backoff()``, not its repr

html_theme = "furo"
html_title = f"anysched {release}"

nitpicky = True
# Names the reference cannot link without intersphinx (the standard library, anyio, pytest, drivers)
# or that are type variables: nitpicky mode would flag each. Everything of anysched's own must link.
nitpick_ignore_regex = [
    ("py:.*", r"anysched(\.[\w.]+)?\.[TPR]"),  # type variables
    ("py:.*", r"(datetime|date|dataclasses|timedelta|collections|typing|types|enum|os|signal|contextlib|abc)\..*"),
    ("py:.*", r"(anyio|trio|pytest|pymongo|motor|pydantic|_pytest|sqlite3|psycopg|psycopg_pool)\b.*"),
    ("py:class", r"(datetime|timedelta|AsyncCollection|AsyncIOMotorCollection|Collection)"),
    ("py:class", r"(ConnectionPool|AsyncConnectionPool)"),
    ("py:.*", r"(T|P|R|Any|Callable|Awaitable|Literal|Seconds|Self|Misfire)"),
    ("py:class", r"(str|int|float|bool|object|type|list|dict|tuple|Exception|BaseException)"),
    ("py:class", r"(ValueError|TypeError|KeyError|RuntimeError|TimeoutError|ConnectionError)"),
]


def _public_name(app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Element) -> Element | None:
    """Resolve what a signature names by a path the reference does not document.

    ``anysched._job.Job`` (a private module, as annotations see it) becomes ``anysched.Job``: every
    private module's public names are re-exported from ``anysched``. And a type alias (``Handler``,
    ``Synchronous``), documented as data, is found as any object: Sphinx 9 does so by itself,
    Sphinx 8 only looks for a class.
    """
    if node.get("refdomain") != "py":
        return None
    match = re.fullmatch(r"anysched\._\w+\.(\w+)", node.get("reftarget", ""))
    if match is not None:
        node["reftarget"] = f"anysched.{match.group(1)}"
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", node["reftarget"], node, contnode)


class _GuidesGlobMayBeEmpty(logging.Filter):
    """The guides toctree lists every guide by name, in reading order, and ends with the glob
    ``guides/*`` so that a new page in docs/guides/ appears without an edit of the index. While
    no such page exists the glob matches nothing, and Sphinx warns (with no type that
    ``suppress_warnings`` could name): drop that one warning, and no other."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "toctree glob pattern %r didn't match any documents" and record.args == ("guides/*",))


def _private_module_docstring(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Give ``anysched.open_scheduler``, ``anysched.Handler`` and ``anysched.TRANSIENT_ERRORS`` the
    docstring written under their assignment in a private module. autodoc looks for it in
    ``anysched``, where they are only re-exported, and falls back to their value's docstring
    (the class's, ``tuple``'s)."""
    module, _, attribute = name.rpartition(".")
    if what != "data" or module != "anysched":
        return
    for private in pkgutil.iter_modules(anysched.__path__, "anysched."):
        if private.name.rpartition(".")[2].startswith("_"):
            docs = ModuleAnalyzer.for_module(private.name).find_attr_docs()
            if ("", attribute) in docs:
                lines[:] = list(docs["", attribute])
                return


def setup(app: Sphinx) -> None:
    app.connect("missing-reference", _public_name)
    app.connect("autodoc-process-docstring", _private_module_docstring)
    logging.getLogger("sphinx.sphinx.directives.other").addFilter(_GuidesGlobMayBeEmpty())
