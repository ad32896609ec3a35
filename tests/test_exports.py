"""The public surface: one meaning per name (anyio's ``test_all_attributes``, trio's ``test_exports``).

Rules, for every public module (a module of anysched whose dotted path has no part with a
leading underscore):

- it has ``__all__``: a tuple of unique names, sorted as ruff's RUF022 sorts them (UPPER_CASE
  constants, then CamelCase, then the rest), each an attribute of the module, and
  ``from module import *`` gives exactly those names;
- nothing leaks: every name the module binds itself (``def``, ``class``, an assignment) without
  a leading underscore is in ``__all__``, so are its re-exports (``import x as x``, and any class
  or function that reports the module as its own). Excepted: type variables (``T``), which are
  not API, and names the module imports for its own use (``anyio``, ``datetime``, ``Job``), which
  belong to the module they come from;
- public constants are UPPER_CASE and in ``__all__``; internal ones start with an underscore;
- every class and function in ``__all__`` reports a public module as its own (``anysched.Job``,
  not ``anysched._job.Job``; ``anysched.stores.memory.MemoryStore``, re-exported from ``anysched``),
  is listed in that module's ``__all__`` under its own name, and pickles by reference.
"""

from __future__ import annotations

import ast
import importlib
import pickle
import pkgutil
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

import anysched

PUBLIC_MODULES = (
    "anysched",
    "anysched.stores",
    "anysched.stores.memory",
    "anysched.stores.mongo",
    "anysched.stores.postgres",
    "anysched.stores.sqlite",
    "anysched.testing",
)
OPTIONAL_DRIVERS = {"anysched.stores.mongo": "pymongo", "anysched.stores.postgres": "psycopg"}


def _is_public_path(dotted: str) -> bool:
    return not any(part.startswith("_") for part in dotted.split("."))


def _load(name: str) -> types.ModuleType:
    if name in OPTIONAL_DRIVERS:
        pytest.importorskip(OPTIONAL_DRIVERS[name])
    return importlib.import_module(name)


def _public_all(module: types.ModuleType) -> tuple[str, ...]:
    names = module.__dict__.get("__all__")
    assert isinstance(names, tuple), f"{module.__name__}.__all__ must be a tuple, not {type(names).__name__}"
    return tuple(str(name) for name in cast("tuple[object, ...]", names))


class _Bindings:
    """The names a module's top level binds: by def, class or assignment, and by import."""

    def __init__(self, module: types.ModuleType) -> None:
        assert module.__file__ is not None
        self.own: set[str] = set()
        self.imported: set[str] = set()
        self.reexported: set[str] = set()  # `from x import y as y`: a re-export, by the typing convention
        self._walk(ast.parse(Path(module.__file__).read_text(encoding="utf-8")).body)

    def _walk(self, statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.own.add(statement.name)
            elif isinstance(statement, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For)):
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                names = (node for target in targets for node in ast.walk(target) if isinstance(node, ast.Name))
                self.own.update(node.id for node in names)
            elif isinstance(statement, (ast.Import, ast.ImportFrom)):
                for alias in statement.names:
                    bound = alias.asname or alias.name.partition(".")[0]
                    self.imported.add(bound)
                    if alias.asname is not None and alias.asname == alias.name:
                        self.reexported.add(bound)
            elif isinstance(statement, ast.Delete):
                for target in statement.targets:
                    if isinstance(target, ast.Name):
                        self.own.discard(target.id)
            elif isinstance(statement, ast.If):
                self._walk(statement.body)
                self._walk(statement.orelse)
            elif isinstance(statement, ast.Try):
                self._walk(statement.body)
                for handler in statement.handlers:
                    self._walk(handler.body)
                self._walk(statement.orelse)
                self._walk(statement.finalbody)


def _sort_key(name: str) -> tuple[int, str]:
    """RUF022's order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


_CONSTANT_TYPES = (str, bytes, int, float, bool, tuple, frozenset, list, dict, set, type(None))


def test_every_public_module_is_checked() -> None:
    found = {"anysched"} | {
        info.name for info in pkgutil.walk_packages(anysched.__path__, prefix="anysched.") if _is_public_path(info.name)
    }
    assert found == set(PUBLIC_MODULES)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = _load(name)
    exported = _public_all(module)
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    assert list(exported) == sorted(exported, key=_sort_key), f"{name}.__all__ is not sorted"
    missing = [attribute for attribute in exported if not hasattr(module, attribute)]
    assert not missing, f"{name}.__all__ lists names it does not have: {missing}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_star_import_gives_exactly_all(name: str) -> None:
    module = _load(name)
    namespace: dict[str, Any] = {}
    exec(f"from {name} import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(_public_all(module))


def test_testing_star_import_gives_the_payload_and_the_suite_only() -> None:
    namespace: dict[str, Any] = {}
    exec("from anysched.testing import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == {"Payload", "StoreContract"}


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_nothing_public_is_left_out_of_all(name: str) -> None:
    module = _load(name)
    exported = set(_public_all(module))
    bindings = _Bindings(module)
    leaked = set[str]()
    for attribute, value in vars(module).items():
        if attribute.startswith("_") or attribute in exported or isinstance(value, (types.ModuleType, TypeVar)):
            continue
        own = attribute in bindings.own
        reexport = attribute in bindings.reexported
        reports_here = isinstance(value, (type, types.FunctionType)) and value.__module__ == name
        if own or reexport or reports_here:
            leaked.add(attribute)
    assert not leaked, f"{name}: public names missing from __all__ (list them, or prefix _): {sorted(leaked)}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_constants_are_upper_case(name: str) -> None:
    module = _load(name)
    lower = [
        attribute
        for attribute in _public_all(module)
        if isinstance(getattr(module, attribute), _CONSTANT_TYPES) and not attribute.isupper()
    ]
    assert not lower, f"{name} exports constants not in UPPER_CASE: {lower}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_classes_and_functions_report_their_public_module(name: str) -> None:
    module = _load(name)
    for attribute in _public_all(module):
        value = getattr(module, attribute)
        if typing.get_origin(value) is not None or not isinstance(value, (type, types.FunctionType)):
            continue  # a type alias (Handler, ClaimMode: on Python 3.10 an alias passes for a type), a constant
        home: str = value.__module__
        if home != name:  # a re-export, of a name its public home lists
            assert _is_public_path(home), f"{name}.{attribute} reports the private module {home}"
            assert home in PUBLIC_MODULES, f"{name}.{attribute} reports {home}, not a public module"
            assert value.__name__ in _public_all(importlib.import_module(home)), f"{home}.__all__ lacks {attribute}"
        assert getattr(importlib.import_module(home), value.__qualname__) is value
        assert pickle.loads(pickle.dumps(value)) is value


def test_what_anysched_defines_reports_anysched() -> None:
    assert anysched.Scheduler.__module__ == "anysched"
    assert anysched.open_scheduler is anysched.Scheduler
    assert anysched.Scheduler.__name__ == "Scheduler"
    assert repr(anysched.Job) == "<class 'anysched.Job'>"
    assert anysched.SchedulerStatistics.__module__ == "anysched"
    assert anysched.MemoryStore.__module__ == "anysched.stores.memory"


def test_errors_keep_their_repr_and_pickle_by_the_public_name() -> None:
    error = anysched.FailJob("no such address")
    assert repr(error) == "FailJob('no such address')"
    assert type(pickle.loads(pickle.dumps(error))) is anysched.FailJob
    assert f"{type(error).__module__}.{type(error).__qualname__}" == "anysched.FailJob"
