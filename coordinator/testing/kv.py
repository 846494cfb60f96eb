"""The simulator's replicated state machine: a string KV store with put/get/cas and sessions.

Small on purpose: it exists to give the Raft core a workload whose histories can be checked
for linearizability. Commands are a tagged, versioned binary codec (never pickle). Every
command carries (client id, sequence) and goes through the core's `SessionTable`, so a
retried proposal takes effect once; `sessions=False` builds the broken variant the mutation
tests use to show the checker notices duplicates.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from coordinator.raft import Entry, EntryKind, SessionTable, SessionVerdict

_VERSION = 1


class Op(enum.IntEnum):
    PUT = 1
    CAS = 2
    NOOP = 3
    """A marker the simulator proposes to prove the cluster commits (liveness)."""


@dataclass(frozen=True, slots=True)
class Command:
    client_id: int
    seq: int
    op: Op
    key: str = ""
    value: str | None = None
    expected: str | None = None

    def encode(self) -> bytes:
        def s(x: str | None) -> bytes:
            if x is None:
                return b"\xff\xff\xff\xff"
            b = x.encode()
            return struct.pack(">I", len(b)) + b

        head = struct.pack(">BQQB", _VERSION, self.client_id, self.seq, self.op)
        return head + s(self.key) + s(self.value) + s(self.expected)

    @staticmethod
    def decode(data: bytes) -> Command:
        try:
            version, cid, seq, op = struct.unpack_from(">BQQB", data, 0)
            if version != _VERSION:
                raise ValueError(f"unknown command version {version}")
            pos = 18
            out: list[str | None] = []
            for _ in range(3):
                (n,) = struct.unpack_from(">I", data, pos)
                pos += 4
                if n == 0xFFFFFFFF:
                    out.append(None)
                    continue
                if pos + n > len(data):
                    raise ValueError("command truncated inside a string")
                out.append(data[pos : pos + n].decode())
                pos += n
            if pos != len(data):
                raise ValueError("command has trailing bytes")
            return Command(cid, seq, Op(op), out[0] or "", out[1], out[2])
        except struct.error as err:
            raise ValueError(f"command truncated: {err}") from err


def encode_result(ok: bool) -> bytes:
    return b"\x01" if ok else b"\x00"


class KvMachine:
    def __init__(self, *, sessions: bool = True) -> None:
        self.data: dict[str, str] = {}
        self.sessions = SessionTable()
        self.use_sessions = sessions
        self.applied = 0

    def apply(self, entry: Entry) -> bytes | None:
        """Apply one committed entry; returns the response for a client command."""
        self.applied = entry.index
        if entry.kind is not EntryKind.NORMAL or not entry.data:
            return None
        cmd = Command.decode(entry.data)
        if self.use_sessions:
            seen = self.sessions.check(cmd.client_id, cmd.seq)
            if seen.verdict is SessionVerdict.DUPLICATE:
                return seen.response
            if seen.verdict is SessionVerdict.STALE:
                return None
        result = self._execute(cmd)
        if self.use_sessions:
            self.sessions.record(cmd.client_id, cmd.seq, result, entry.index)
        return result

    def _execute(self, cmd: Command) -> bytes:
        if cmd.op is Op.PUT:
            assert cmd.value is not None
            self.data[cmd.key] = cmd.value
            return encode_result(True)
        if cmd.op is Op.CAS:
            if self.data.get(cmd.key) != cmd.expected:
                return encode_result(False)
            assert cmd.value is not None
            self.data[cmd.key] = cmd.value
            return encode_result(True)
        return encode_result(True)

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        parts = [struct.pack(">BQI", _VERSION, self.applied, len(self.data))]
        for k in sorted(self.data):
            kb, vb = k.encode(), self.data[k].encode()
            parts.append(struct.pack(">II", len(kb), len(vb)) + kb + vb)
        table = self.sessions.encode()
        parts.append(struct.pack(">I", len(table)) + table)
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        version, applied, count = struct.unpack_from(">BQI", data, 0)
        if version != _VERSION:
            raise ValueError(f"unknown snapshot version {version}")
        pos = 13
        kv: dict[str, str] = {}
        for _ in range(count):
            nk, nv = struct.unpack_from(">II", data, pos)
            pos += 8
            kv[data[pos : pos + nk].decode()] = data[pos + nk : pos + nk + nv].decode()
            pos += nk + nv
        (nt,) = struct.unpack_from(">I", data, pos)
        pos += 4
        self.sessions = SessionTable.decode(data[pos : pos + nt])
        self.data = kv
        self.applied = applied
