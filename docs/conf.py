"""Sphinx configuration of anysched's documentation: ``nox -s docs`` builds it with warnings as errors."""

from __future__ import annotations

import logging
import re
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

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
    ("py:.*", r"(anyio|trio|pytest|pymongo|motor|pydantic|_pytest|sqlite3)\b.*"),
    ("py:class", r"(datetime|timedelta|AsyncCollection|AsyncIOMotorCollection|Collection)"),
    ("py:.*", r"(T|P|R|Any|Callable|Awaitable|Literal|Seconds|Self)"),
    ("py:class", r"(str|int|float|bool|object|type|list|dict|tuple|Exception|BaseException)"),
    ("py:class", r"(ValueError|TypeError|KeyError|RuntimeError|TimeoutError|ConnectionError)"),
]


def _public_name(app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Element) -> Element | None:
    """Resolve ``anysched._job.Job`` (how a signature names a class) to ``anysched.Job``, where the
    reference documents it: every private module's public names are re-exported from ``anysched``."""
    target = node.get("reftarget", "")
    match = re.fullmatch(r"anysched\._\w+\.(\w+)", target)
    if node.get("refdomain") != "py" or match is None:
        return None
    node["reftarget"] = f"anysched.{match.group(1)}"
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], node["reftarget"], node, contnode)


class _GuidesGlobMayBeEmpty(logging.Filter):
    """The guides toctree lists every guide by name, in reading order, and ends with the glob
    ``guides/*`` so that a new page in docs/guides/ appears without an edit of the index. While
    no such page exists the glob matches nothing, and Sphinx warns (with no type that
    ``suppress_warnings`` could name): drop that one warning, and no other."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "toctree glob pattern %r didn't match any documents" and record.args == ("guides/*",))


def setup(app: Sphinx) -> None:
    app.connect("missing-reference", _public_name)
    logging.getLogger("sphinx.sphinx.directives.other").addFilter(_GuidesGlobMayBeEmpty())
