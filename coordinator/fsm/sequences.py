"""Sequences: cluster-wide, strictly increasing numbers, never issued twice.

`next(name, count)` hands out the block first, first + increment, ..., first + (count - 1) *
increment and moves the sequence past it in the same apply step. Because this runs when the
entry is applied, after Raft committed it, the block is durable on a majority before any
client can see it: a leader crash may lose the *response*, never the fact that the block is
gone, so a retry gets the same block back from the session table (same client id and seq), and
a different request gets a later one. Nothing ever moves a sequence backwards.

Decisions:
- A sequence must be created (with its start and increment) before `next`: NOT_FOUND
  otherwise. No auto-create: an implicit create would pick start and increment silently, and a
  typo in a name would quietly start a second sequence from its first value, handing out
  numbers the caller believes were already used.
- There is no delete: a deleted and re-created sequence would issue its old values again.
  Creating one that exists fails with ALREADY_EXISTS and says where it stands.
- Values are signed 64-bit and the value after a block must still fit, so a sequence runs out
  (OUT_OF_RANGE) before it could wrap. Increments are positive, so values strictly increase.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._wire import I64_MAX, I64_MIN, Reader, Writer
from .errors import already_exists, invalid, not_found, out_of_range
from .kv import EventKind, History, check_name
from .results import SequenceBlock, SequenceInfo

MAX_BLOCK_COUNT = 100_000


@dataclass(slots=True)
class _Sequence:
    next_value: int
    """The first value of the next block; only ever grows. I64_MIN <= next_value <= I64_MAX."""
    increment: int
    """1 <= increment <= I64_MAX, fixed at creation."""
    revision: int
    """The revision of the latest change."""


class SequenceTable:
    def __init__(self, history: History) -> None:
        self._history = history
        self._sequences: dict[str, _Sequence] = {}

    def names(self) -> list[str]:
        return sorted(self._sequences)

    def current(self, name: str) -> SequenceInfo:
        seq = self._get(name)
        return SequenceInfo(name, seq.next_value, seq.increment, seq.revision)

    def create(self, name: str, start: int, increment: int) -> SequenceInfo:
        check_name(name, "sequence")
        if not I64_MIN <= start <= I64_MAX:
            raise invalid(f"start must be a signed 64-bit integer, got {start}")
        if not 1 <= increment <= I64_MAX:
            raise invalid(f"increment must be between 1 and {I64_MAX}, got {increment}")
        existing = self._sequences.get(name)
        if existing is not None:
            raise already_exists(
                f"sequence {name!r} already exists (next value {existing.next_value}, increment "
                f"{existing.increment}); use it as it is, or pick another name"
            )
        revision = self._history.record(EventKind.SEQUENCE, name.encode(), number=start)
        self._sequences[name] = _Sequence(start, increment, revision)
        return SequenceInfo(name, start, increment, revision)

    def next(self, name: str, count: int) -> SequenceBlock:
        check_name(name, "sequence")
        if not 1 <= count <= MAX_BLOCK_COUNT:
            raise invalid(f"count must be between 1 and {MAX_BLOCK_COUNT}, got {count}")
        seq = self._get(name)
        first = seq.next_value
        after = first + count * seq.increment
        if after > I64_MAX:
            left = (I64_MAX - first) // seq.increment
            raise out_of_range(
                f"sequence {name!r} is exhausted: only {left} values remain below 2**63-1 and "
                f"{count} were asked for; ask for fewer, or create a new sequence"
            )
        revision = self._history.record(EventKind.SEQUENCE, name.encode(), number=after)
        seq.next_value, seq.revision = after, revision
        return SequenceBlock(first, count, seq.increment, revision)

    def _get(self, name: str) -> _Sequence:
        seq = self._sequences.get(name)
        if seq is None:
            raise not_found(
                f"sequence {name!r} does not exist: create it first (`concordctl seq create "
                f"{name} [--start N] [--increment N]`); sequences are never created implicitly"
            )
        return seq

    def write(self, w: Writer) -> None:
        w.u32(len(self._sequences))
        for name in sorted(self._sequences):
            seq = self._sequences[name]
            w.text(name)
            w.i64(seq.next_value)
            w.i64(seq.increment)
            w.u64(seq.revision)

    def read_into(self, r: Reader) -> None:
        sequences: dict[str, _Sequence] = {}
        for _ in range(r.count()):
            name = r.text()
            seq = _Sequence(r.i64(), r.i64(), r.u64())
            if name in sequences or seq.increment < 1:
                raise r.fail(f"sequence {name!r} is duplicated or has increment {seq.increment}")
            sequences[name] = seq
        self._sequences = sequences
