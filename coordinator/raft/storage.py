"""Raft's read side of durable storage, and its in-memory twin.

The core never writes to storage: it hands entries, hard state and snapshots out in a `Ready`,
and the caller persists them (fsync) and then appends them here. The core only reads: the
stable part of its log, the last snapshot and the state to boot from. Entries the caller has
not yet persisted live in the core's own unstable tail (see `_log.py`).

Contract for implementations (`MemoryStorage` below, the WAL's index in production):
- ownership: the caller of the core owns the storage; the core reads it only from within
  its own methods, on the caller's thread, so no locking is needed between the two;
- ordering: entries are contiguous from `first_index()` to `last_index()`; appending an entry
  at an index that exists truncates everything from that index on (a new leader overwrote it);
- compaction: `first_index() <= snapshot().meta.index + 1` (a member may keep some entries
  below its snapshot for lagging followers); reads below `first_index()` raise
  `CompactedError`, reads above `last_index()` raise `UnavailableError`;
- durability is the writer's business: whatever is readable here must already be on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .messages import ConfState, Entry, HardState, Snapshot, SnapshotData, SnapshotMeta


class CompactedError(LookupError):
    """The requested index is covered by a snapshot: its entry is gone."""


class UnavailableError(LookupError):
    """The requested index is past the end of the stored log."""


class LogStorage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); at least one entry if lo < hi, even past max_bytes."""
        ...

    def term(self, index: int) -> int:
        """The term of the entry at index; index == first_index()-1 gives the snapshot's."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...


def entry_size(entry: Entry) -> int:
    """Bytes an entry costs in a message, for batching limits."""
    return len(entry.data) + 24


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    if max_bytes is None or not entries:
        return entries
    total = entry_size(entries[0])
    for i in range(1, len(entries)):
        total += entry_size(entries[i])
        if total > max_bytes:
            return entries[:i]
    return entries


class MemoryStorage:
    """`LogStorage` kept in memory; also the simulator's and tests' stable storage.

    Invariant: `_entries[0]` is a dummy entry at the snapshot's index and term, so
    `_entries[i - offset]` holds index i where offset = `_entries[0].index`.
    """

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._entries: list[Entry] = [Entry(0, 0)]

    # --- read side (LogStorage) -------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.meta.conf

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(index)
        if index - offset >= len(self._entries):
            raise UnavailableError(index)
        return self._entries[index - offset].term

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- write side (the caller's, after it persisted) --------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # wholly covered by the snapshot already
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._entries[0].index
        if offset > len(self._entries):
            raise ValueError(
                f"gap in log: appending index {entries[0].index} after {self.last_index()}"
            )
        del self._entries[offset:]
        self._entries.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace everything with `snap` (an InstallSnapshot the core accepted)."""
        if snap.meta.index < self._snapshot.meta.index:
            raise ValueError("snapshot out of date")
        self._snapshot = snap
        self._entries = [Entry(snap.meta.index, snap.meta.term)]

    def create_snapshot(self, index: int, conf: ConfState, data: SnapshotData) -> Snapshot:
        """Record the state machine's image at applied `index`; the log is kept until
        `compact` so lagging followers can still be served entries."""
        if index <= self._snapshot.meta.index:
            raise ValueError(f"snapshot at {index} is not newer than {self._snapshot.meta.index}")
        if index > self.last_index():
            raise UnavailableError(index)
        snap = Snapshot(SnapshotMeta(index, self.term(index), conf), data)
        self._snapshot = snap
        return snap

    def compact(self, index: int) -> None:
        """Discard entries up to and including `index` (which must be <= the snapshot's)."""
        offset = self._entries[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise UnavailableError(index)
        if index > self._snapshot.meta.index:
            raise ValueError(
                f"cannot compact to {index}: past the snapshot at {self._snapshot.meta.index} "
                "(entries there would exist nowhere)"
            )
        self._entries = [Entry(index, self.term(index)), *self._entries[index - offset + 1 :]]
