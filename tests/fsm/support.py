"""A tiny driver for the state machine tests: wraps commands in envelopes and entries.

`Driver.run(cmd)` applies one command as client 1 with the next sequence number, at the
driver's current leader time and term; `ok()` returns the result (failing the test on an
FsmError), `fails()` returns the FsmError and checks its code.
"""

from __future__ import annotations

from coordinator.fsm import (
    Applied,
    Command,
    Envelope,
    ErrorCode,
    FsmError,
    Noop,
    Result,
    StateMachine,
)
from coordinator.raft import Entry, EntryKind


class Driver:
    def __init__(self, machine: StateMachine | None = None) -> None:
        self.m = machine if machine is not None else StateMachine()
        self.index = self.m.applied_index
        self.term = max(self.m.applied_term, 1)
        self.time_ms = 0
        self.seq = 0

    def entry(self, data: bytes = b"", kind: EntryKind = EntryKind.NORMAL) -> Applied:
        self.index += 1
        return self.m.apply(Entry(self.index, self.term, kind, data))

    def run(
        self,
        cmd: Command,
        *,
        at_ms: int | None = None,
        client: int = 1,
        seq: int | None = None,
    ) -> Applied:
        if at_ms is not None:
            self.time_ms = at_ms
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.entry(Envelope(client, seq, self.time_ms, cmd).encode())

    def ok(self, cmd: Command, **kw) -> Result:
        applied = self.run(cmd, **kw)
        assert not isinstance(applied.result, FsmError), applied.result
        assert applied.result is not None
        return applied.result

    def fails(self, cmd: Command, code: ErrorCode, **kw) -> FsmError:
        """Apply `cmd`, expect rejection with `code`, and prove it changed nothing: the same
        command (sessionless) and a Noop, applied to two copies of the state before, leave
        byte-identical snapshots (only the applied index and the clock may move)."""
        before = self.m.snapshot()
        applied = self.run(cmd, **kw)
        assert isinstance(applied.result, FsmError), applied.result
        assert applied.result.code is code, applied.result
        assert applied.effects == ()
        copies = []
        for command in (cmd, Noop()):
            copy = StateMachine()
            copy.restore(before)
            data = Envelope(0, 0, self.time_ms, command).encode()
            copy.apply(Entry(self.index, self.term, EntryKind.NORMAL, data))
            copies.append(copy.snapshot())
        assert copies[0] == copies[1], f"rejected {cmd!r} changed the state"
        return applied.result

    def new_term(self) -> Applied:
        """What a new leader does first: an empty entry of a higher term."""
        self.term += 1
        return self.entry()
