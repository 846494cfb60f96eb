"""The server package's public surface: what `__init__` re-exports, and a docstring on every
module (each says what the module does and why)."""

from __future__ import annotations

import importlib
import pkgutil

from coordinator import server


def test_exports_resolve_and_are_listed() -> None:
    assert sorted(server.__all__) == [
        "LEADER_METADATA_KEY",
        "RunningServer",
        "ServiceConfig",
        "serve",
        "start_server",
    ]
    for name in server.__all__:
        assert getattr(server, name) is not None
    assert server.LEADER_METADATA_KEY == "concord-leader"


def test_every_module_has_a_docstring() -> None:
    for info in pkgutil.iter_modules(server.__path__, "coordinator.server."):
        module = importlib.import_module(info.name)
        assert (module.__doc__ or "").strip(), f"{info.name} has no module docstring"
