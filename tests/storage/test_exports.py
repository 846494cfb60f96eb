"""The public surface of `coordinator.storage` (STYLE lesson 10): `__all__` and the `X as X`
re-exports agree, `__all__` is sorted as ruff's RUF022 sorts it, nothing private leaks,
and the package imports nothing above the Raft core."""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import types
from pathlib import Path

import pytest

from coordinator import storage

PUBLIC = list(storage.__all__)
PACKAGE_DIR = Path(storage.__file__).parent


def _isort_key(name: str) -> tuple[int, str]:
    if name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    return group, name


@pytest.mark.parametrize("name", PUBLIC)
def test_every_exported_name_is_importable(name: str) -> None:
    module = importlib.import_module("coordinator.storage")
    assert getattr(__import__("coordinator.storage", fromlist=[name]), name) is getattr(
        module, name
    )


def test_all_is_sorted_and_has_no_duplicates() -> None:
    assert sorted(PUBLIC, key=_isort_key) == PUBLIC
    assert len(set(PUBLIC)) == len(PUBLIC)


def test_the_package_binds_no_unlisted_public_name() -> None:
    bound = {
        name
        for name, value in vars(storage).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert bound == set(PUBLIC)


def test_exports_are_defined_in_the_package() -> None:
    for name in PUBLIC:
        value = getattr(storage, name)
        assert not isinstance(value, types.ModuleType)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("coordinator.storage."), (name, value.__module__)


def test_storage_imports_only_the_raft_core_from_the_project() -> None:
    """import-linter enforces the layers; this also pins the stdlib/third-party side."""
    allowed_third_party = {"cryptography"}
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "coordinator":
                    assert name == "coordinator.raft", f"{path.name} imports {name}"
                else:
                    assert top in allowed_third_party or top in sys.stdlib_module_names, (
                        f"{path.name}: {name}"
                    )
