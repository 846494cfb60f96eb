"""RaftLog: the stable log in `LogStorage` plus the unstable tail the caller has yet to persist.

Indices line up as

    snapshot.index < storage.first_index() ... storage.last_index()
                          unstable.offset ... last_index()

Invariants (checked where they can break):
- applied <= committed <= last_index();
- the unstable tail starts at `unstable_offset`; entries below it are read from storage;
- an incoming snapshot waiting to be persisted replaces everything up to its index.
"""

from __future__ import annotations

from .messages import Entry, Snapshot
from .storage import CompactedError, LogStorage, UnavailableError, limit_size


class RaftLog:
    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable: list[Entry] = []
        self.unstable_offset = last + 1
        self.pending_snapshot: Snapshot | None = None
        """Incoming snapshot not yet handed to the caller to persist and install."""
        # The state machine is restored from the snapshot, which may be newer than the first
        # entry storage kept: everything up to the snapshot is applied already.
        self.committed = max(first - 1, storage.snapshot().meta.index)
        self.applied = self.committed

    # --- positions ---------------------------------------------------------------------------

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable_offset + len(self.unstable) - 1
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term at index; 0 if unknown (compacted or past the end)."""
        if self.unstable and self.unstable_offset <= index:
            pos = index - self.unstable_offset
            return self.unstable[pos].term if pos < len(self.unstable) else 0
        snap = self.pending_snapshot
        if snap is not None:
            return snap.meta.term if index == snap.meta.index else 0
        try:
            return self.storage.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term and (term != 0 or index == 0)

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: is a candidate's log at least as up-to-date as ours?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    # --- reading entries ---------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); raises CompactedError if lo was compacted away."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        out: list[Entry] = []
        if lo < self.unstable_offset:
            out = self.storage.entries(lo, min(hi, self.unstable_offset), max_bytes)
            if len(out) < min(hi, self.unstable_offset) - lo:
                return out  # size limit reached inside storage
        if hi > self.unstable_offset:
            start = max(lo, self.unstable_offset) - self.unstable_offset
            out = out + self.unstable[start : hi - self.unstable_offset]
        return limit_size(out, max_bytes)

    def entries_from(self, lo: int, max_bytes: int | None = None) -> list[Entry]:
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def next_committed(self, max_bytes: int | None = None) -> list[Entry]:
        """Committed entries not yet applied (never ones a pending snapshot covers)."""
        lo = max(self.applied + 1, self.first_index())
        if self.committed + 1 <= lo:
            return []
        return self.slice(lo, self.committed + 1, max_bytes)

    # --- writing -----------------------------------------------------------------------------

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        """Append entries that follow on from index entries[0].index - 1, truncating any
        conflicting suffix. Callers guarantee they never truncate committed entries."""
        if not entries:
            return self.last_index()
        after = entries[0].index
        if after <= self.committed:
            raise AssertionError(f"truncating committed entry {after} (committed {self.committed})")
        if after > self.last_index() + 1:
            raise AssertionError(f"gap in log: appending {after} after {self.last_index()}")
        self._truncate_and_append(list(entries))
        return self.last_index()

    def _truncate_and_append(self, entries: list[Entry]) -> None:
        after = entries[0].index
        if after == self.unstable_offset + len(self.unstable):
            self.unstable.extend(entries)
        elif after <= self.unstable_offset:
            # Replaces part of the stable log too: the new unstable tail starts here.
            self.unstable_offset = after
            self.unstable = entries
        else:
            keep = self.unstable[: after - self.unstable_offset]
            self.unstable = keep + entries

    def maybe_append(
        self, index: int, log_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """A follower's APP handling: if our log matches at (index, log_term), keep what
        agrees, truncate at the first conflict, append the rest, and advance commit.
        Returns the last index known to match the leader, or None on mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict != 0:
            if conflict <= self.committed:
                raise AssertionError(
                    f"entry {conflict} conflicts with committed entry (committed {self.committed})"
                )
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def _find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """First index whose entry is new or differs in term; 0 if all are present."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= `index` whose term is <= `term` (fast backtracking): every
        entry above it has a larger term, so cannot match a log whose entry there is `term`."""
        first = self.first_index()
        while index >= first:
            t = self.term(index)
            if t != 0 and t <= term:
                return index
            index -= 1
        return max(first - 1, 0)

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(
                    f"commit {index} beyond last index {self.last_index()} (log lost entries?)"
                )
            self.committed = index

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise AssertionError(
                f"applied {index} outside [{self.applied}, committed {self.committed}]"
            )
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        """The caller persisted entries through `index` (of `term`): drop them from the
        unstable tail unless they were replaced in the meantime."""
        if not self.unstable or index < self.unstable_offset:
            return
        pos = index - self.unstable_offset
        if pos >= len(self.unstable) or self.unstable[pos].term != term:
            return
        self.unstable = self.unstable[pos + 1 :]
        self.unstable_offset = index + 1

    def restore(self, snap: Snapshot) -> None:
        """Install an incoming snapshot: the whole log is replaced by it."""
        if snap.meta.index < self.committed:
            raise AssertionError(
                f"restoring snapshot {snap.meta.index} below committed index {self.committed}"
            )
        self.pending_snapshot = snap
        self.unstable = []
        self.unstable_offset = snap.meta.index + 1
        self.committed = snap.meta.index

    def snapshot_persisted(self, index: int) -> None:
        snap = self.pending_snapshot
        if snap is not None and snap.meta.index == index:
            self.pending_snapshot = None
            self.applied = max(self.applied, index)
