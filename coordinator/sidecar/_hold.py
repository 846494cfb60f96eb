"""A lock or leadership the app holds through the sidecar (`_Hold`), as `_app.py`'s module
docstring describes: one task inside the client library's own block, known by (name, lease)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from coordinator.client import Held

Kind = Literal["lock", "leadership"]


@dataclass(eq=False)
class _Hold:
    kind: Kind
    name: str
    lease: int
    fencing_token: int
    ttl_ms: int
    handle: Held
    callback_url: str | None
    value: str = ""
    state: Literal["held", "lost", "released"] = "held"
    reason: str | None = None
    let_go: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to leave the library's block: release (or resign), or forget a lost hold."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the state is no longer "held" (never cleared)."""
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "lease": self.lease,
            "fencing_token": self.fencing_token,
            "ttl_ms": self.ttl_ms,
            "state": self.state,
            "reason": self.reason,
        }
        if self.kind == "leadership":
            out["value"] = self.value
        return out
