"""Client sessions: a retried proposal is applied exactly once (Raft thesis §6.3).

A client that times out cannot know whether its proposal committed, so it retries, and the
log may then hold the same command twice. Each command carries (client id, sequence number);
the state machine keeps, per client, the newest sequence applied and its response. Applying
a command whose sequence was already applied returns the saved response instead of running
it again. Clients issue one command at a time per session, with increasing sequences, so one
saved response per client suffices.

Everything here is decided by the log alone (eviction is by log index, never by a clock),
so every replica holds the same table, and the table travels inside snapshots.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class SessionVerdict(enum.Enum):
    NEW = "new"
    """Never applied: run it and `record` the response."""
    DUPLICATE = "duplicate"
    """Applied before: answer with the saved response, change nothing."""
    STALE = "stale"
    """Older than the newest applied: the client has moved on; ignore it."""


@dataclass(frozen=True, slots=True)
class SessionCheck:
    verdict: SessionVerdict
    response: bytes = b""


@dataclass(slots=True)
class _Session:
    seq: int
    response: bytes
    last_index: int


class SessionTable:
    """Invariant: at most `max_sessions` entries; evicts the session idle longest (by index)."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        if max_sessions <= 0:
            raise ValueError("max_sessions must be positive")
        self.max_sessions = max_sessions
        self._sessions: dict[int, _Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def check(self, client_id: int, seq: int) -> SessionCheck:
        s = self._sessions.get(client_id)
        if s is None or seq > s.seq:
            return SessionCheck(SessionVerdict.NEW)
        if seq == s.seq:
            return SessionCheck(SessionVerdict.DUPLICATE, s.response)
        return SessionCheck(SessionVerdict.STALE)

    def record(self, client_id: int, seq: int, response: bytes, index: int) -> None:
        self._sessions.pop(client_id, None)  # re-insert: dict order = recency by index
        self._sessions[client_id] = _Session(seq, response, index)
        while len(self._sessions) > self.max_sessions:
            del self._sessions[next(iter(self._sessions))]

    def encode(self) -> bytes:
        """Versioned binary image for snapshots (oldest session first)."""
        parts = [struct.pack(">BI", 1, len(self._sessions))]
        for cid, s in self._sessions.items():
            parts.append(struct.pack(">QQQI", cid, s.seq, s.last_index, len(s.response)))
            parts.append(s.response)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes, max_sessions: int = 100_000) -> SessionTable:
        if not data or data[0] != 1:
            raise ValueError(f"unknown session table version {data[:1]!r}")
        table = cls(max_sessions)
        try:
            (count,) = struct.unpack_from(">I", data, 1)
            pos = 5
            for _ in range(count):
                cid, seq, index, size = struct.unpack_from(">QQQI", data, pos)
                pos += 28
                if pos + size > len(data):
                    raise ValueError("session table image truncated inside a response")
                table._sessions[cid] = _Session(seq, data[pos : pos + size], index)
                pos += size
        except struct.error as err:
            raise ValueError(f"session table image truncated: {err}") from err
        if pos != len(data):
            raise ValueError("session table image has trailing bytes")
        while len(table._sessions) > max_sessions:  # images are oldest first
            del table._sessions[next(iter(table._sessions))]
        return table
