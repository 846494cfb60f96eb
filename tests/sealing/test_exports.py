"""coordinator.sealing's public surface: every name in `__all__` resolves, once; every
module has a docstring; and the package imports nothing of the project (it sits
below the client, the server and the CLI, which all use it)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

from coordinator import sealing


def test_exports_resolve_and_modules_are_documented() -> None:
    assert len(set(sealing.__all__)) == len(sealing.__all__)
    for name in sealing.__all__:
        assert getattr(sealing, name) is not None
    assert sealing.__doc__
    for info in pkgutil.iter_modules(sealing.__path__):
        module = importlib.import_module(f"coordinator.sealing.{info.name}")
        assert module.__doc__, f"{info.name} has no module docstring"


def test_the_package_imports_nothing_of_the_project() -> None:
    for path in Path(sealing.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("coordinator"), path.name
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("coordinator") for a in node.names), path.name
