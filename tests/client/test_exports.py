"""The client package's public surface: what `__init__` re-exports (the held-lock handles and
their errors included), and a docstring on every module."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from coordinator import client


def test_exports_resolve_and_are_listed() -> None:
    # Every name imported into __init__ is listed in __all__, and nothing else is.
    source = Path(client.__file__).read_text()
    imported = set(re.findall(r"^from \.\w+ import (\w+) as \1$", source, re.MULTILINE))
    assert sorted(client.__all__) == sorted(imported)
    for name in (
        "Held",
        "HeldLock",
        "HeldLeadership",
        "LockLost",
        "DeadlineExceeded",
        "SyncHeld",
        "SealFailed",
        "Unsealed",
    ):
        assert name in client.__all__
    for name in client.__all__:
        assert getattr(client, name) is not None
    # Both new errors are ConcordErrors, so callers that catch ConcordError still do.
    assert issubclass(client.LockLost, client.ConcordError)
    assert issubclass(client.DeadlineExceeded, client.ConcordError)


def test_every_module_has_a_docstring() -> None:
    for info in pkgutil.iter_modules(client.__path__, "coordinator.client."):
        module = importlib.import_module(info.name)
        assert (module.__doc__ or "").strip(), f"{info.name} has no module docstring"
