"""The package says what it is: its version, as installed, and metadata a package index accepts."""

from __future__ import annotations

import importlib.metadata
import re

import anysched

PEP_440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?$")


def test_the_version_is_the_installed_distributions() -> None:
    assert anysched.__version__ == importlib.metadata.version("anysched")
    assert PEP_440.match(anysched.__version__)


def test_the_metadata_names_each_supported_python_and_extra() -> None:
    metadata = importlib.metadata.metadata("anysched")
    classifiers = metadata.get_all("Classifier") or []
    pythons = [c.rsplit(" ", 1)[1] for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert pythons == ["3.10", "3.11", "3.12", "3.13"]  # nox tests on these, read from here
    assert metadata["Requires-Python"] == ">=3.10"
    assert {"trio", "mongo", "motor", "sqlite"} <= set(metadata.get_all("Provides-Extra") or [])
