"""coordinator/fsm must stay pure and deterministic (STYLE lessons 1 and 3, for the FSM).

import-linter's layer contract keeps `fsm` below `runtime` and apart from `storage`, and keeps
`coordinator.testing` out; this AST check adds what it cannot express: the package imports
only the standard library's pure modules, its own modules and `coordinator.raft`, never a
clock, a random source, the OS, threads, sockets or grpc.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

FSM = Path(__file__).resolve().parents[2] / "coordinator" / "fsm"
BANNED = frozenset(
    {
        "asyncio", "grpc", "time", "random", "os", "socket", "threading", "concurrent",
        "multiprocessing", "subprocess", "selectors", "select", "signal", "datetime", "secrets",
        "uuid", "pathlib", "shutil", "tempfile", "io", "importlib", "pickle", "marshal", "json",
    }
)  # fmt: skip


def _imports(path: Path) -> list[tuple[int, str, int]]:
    found: list[tuple[int, str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


@pytest.mark.parametrize("path", sorted(FSM.glob("*.py")), ids=lambda p: p.name)
def test_fsm_imports_only_pure_modules(path: Path) -> None:
    bad = []
    for line, module, level in _imports(path):
        if level:  # relative: inside coordinator.fsm
            continue
        top = module.split(".")[0]
        allowed = (module == "coordinator.raft" or module.startswith("coordinator.raft.")) or (
            top != "coordinator" and top in sys.stdlib_module_names and top not in BANNED
        )
        if not allowed:
            bad.append(f"{path.name}:{line}: imports {module}")
    assert not bad, "coordinator.fsm must stay pure:\n" + "\n".join(bad)


def test_the_check_sees_the_package() -> None:
    assert (FSM / "__init__.py").is_file() and (FSM / "machine.py").is_file()
