"""Transports: how a member's messages reach its peers.

The `Transport` contract (see `driver.py`): `send` never blocks and never raises for an
unreachable peer; delivery is best effort. `LoopbackTransport` is the in-process twin used
to run several members on one event loop (tests, demos); the gRPC peer transport over
mutual TLS sits beside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from coordinator.raft import Message


class LoopbackTransport:
    """Delivers to in-process members through the event loop (never synchronously, so a
    member's Ready is always fully handled before its peers react). `blocked` holds
    (from, to) pairs whose messages are dropped, to make partitions in tests."""

    def __init__(self) -> None:
        self.members: dict[int, Callable[[Message], None]] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.sent = 0

    def register(self, member_id: int, receive: Callable[[Message], None]) -> None:
        self.members[member_id] = receive

    def send(self, msg: Message) -> None:
        self.sent += 1
        receive = self.members.get(msg.to)
        if receive is None or (msg.frm, msg.to) in self.blocked:
            return
        asyncio.get_running_loop().call_soon(receive, msg)

    def isolate(self, member_id: int) -> None:
        for other in self.members:
            if other != member_id:
                self.blocked |= {(member_id, other), (other, member_id)}

    def heal(self) -> None:
        self.blocked.clear()
