"""The public surface of `coordinator.raft` (STYLE lesson 10).

- every name in `__all__` resolves on the package, and the package binds no other public
  name (apart from its public submodules), so `__all__` and the `X as X` imports agree;
- `__all__` is sorted the way ruff's RUF022 sorts it (isort style: SCREAMING_CASE constants,
  then CamelCase classes, then the rest, each group alphabetically), so an unsorted edit
  shows up as a one-line diff here too;
- internals stay internal: no underscore name is exported, no module is exported under its
  own name (an underscore module is reached only through the names it defines), and every
  exported class or function lives in `coordinator.raft` itself;
- the package ships `py.typed`.
"""

from __future__ import annotations

import importlib
import inspect
import types
from pathlib import Path

import pytest

from coordinator import raft

PUBLIC = list(raft.__all__)


def _isort_key(name: str) -> tuple[int, str]:
    if name.isupper():
        group = 0  # constants
    elif name[:1].isupper():
        group = 1  # classes
    else:
        group = 2  # functions and the rest
    return group, name


@pytest.mark.parametrize("name", PUBLIC)
def test_every_exported_name_is_importable(name: str) -> None:
    module = importlib.import_module("coordinator.raft")
    assert hasattr(module, name), f"coordinator.raft.__all__ names {name!r}, which is missing"
    # `from coordinator.raft import name` resolves through the same fromlist machinery.
    imported = __import__("coordinator.raft", fromlist=[name])
    assert getattr(imported, name) is getattr(module, name)


def test_all_is_sorted_and_has_no_duplicates() -> None:
    assert sorted(PUBLIC, key=_isort_key) == PUBLIC
    assert len(set(PUBLIC)) == len(PUBLIC)


def test_no_underscore_name_or_module_is_exported() -> None:
    for name in PUBLIC:
        assert not name.startswith("_"), f"{name!r} is private but exported"
        value = getattr(raft, name)
        assert not isinstance(value, types.ModuleType), f"{name!r} re-exports a module"
    private_modules = {p.stem for p in Path(raft.__file__).parent.glob("_*.py")} - {"__init__"}
    assert private_modules, "expected the core's underscore modules next to __init__.py"
    assert not private_modules & set(PUBLIC)


def test_exports_are_defined_in_the_core() -> None:
    for name in PUBLIC:
        value = getattr(raft, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("coordinator.raft."), (name, value.__module__)


def test_the_package_binds_no_unlisted_public_name() -> None:
    bound = {
        name
        for name, value in vars(raft).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert bound == set(PUBLIC), f"not in __all__: {sorted(bound - set(PUBLIC))}"


def test_submodules_bound_on_the_package_are_not_exported() -> None:
    """Importing from a submodule binds it on the package as a side effect; that is fine,
    but neither the public modules nor the underscore internals belong in `__all__`."""
    submodules = {n for n, v in vars(raft).items() if isinstance(v, types.ModuleType)}
    assert {"_confchange", "messages", "storage"} <= submodules
    assert not submodules & set(PUBLIC)


def test_package_ships_py_typed() -> None:
    root = Path(raft.__file__).parents[1]
    assert (root / "py.typed").is_file()
