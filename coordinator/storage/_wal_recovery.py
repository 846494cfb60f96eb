"""The WAL's recovery: replaying the segments (and the newest snapshot) into the in-memory
log and hard state when a `DiskWal` opens; `WalRecovery` is a base class of `DiskWal`.

**Recovery** (`open`) loads the newest snapshot, then reads every segment in order,
checking every record's framing: length, CRC and nonce order. A short or garbled record at
the very end of the last segment is a torn write that was never acknowledged: it is cut (the
file truncated and fsynced) and reported in `recovery`. Anything else that does not read
back (a bad record with intact ones after it, damage in an earlier segment, a record that
fails authentication, a gap in the indices, a mark naming a missing snapshot) raises
`WalCorruptError`: a committed entry is never dropped silently. After recovery the WAL
always starts a new segment (that is what keeps nonces unique, see `crypto.py`).

**What recovery leaves unread.** Most of a long-running member's WAL lies at or below its
newest snapshot (index S), and opening every one of those records (AES-GCM) is wasted: the
snapshot replaces them. But a record's type and index are clear fields, authenticated only
by opening the record, and anyone who can write the disk (without the key) can rewrite them
and the CRC: so "this record says it is an entry at or below S" must never be what decides
that a record which matters is not checked. The rule:

- While the log replayed so far is exactly the snapshot (nothing above S, no gap open),
  records whose clear fields say ENTRY or HARD_STATE at or below S are set aside unopened,
  as a *run*. Any other record is opened; a segment header joins the run (opened), anything
  else ends it. The snapshot index itself is trustworthy: the snapshot file is opened. (The
  argument below holds from any replay state; the condition only keeps runs to the stretch
  where they pay off.)
- To end a run, its records are opened from the end backwards until authenticated records
  alone fix what the run leaves behind: the log, by an entry at index i <= S (replay turns
  the log into exactly the snapshot there, whatever came before, and closes any gap) or by
  the record after the run being an entry at S+1 (it appends to the snapshot, likewise
  whatever came before); the hard state, by a hard-state record or segment header (each
  carries the whole hard state) or the record after the run being one. What lies before
  that point cannot change the recovered log or hard state, whatever it really is, so it is
  not opened; its clear fields only feed compaction's bookkeeping, which they can steer
  only at indices at or below S, where nothing needs keeping.
- A record that an attacker disguised as "covered" is therefore either irrelevant to the
  result (overridden as above) or opened when the run ends, and fails authentication: a
  needed entry cannot be hidden this way, since hiding it takes an authenticated record
  after it that makes the log end at or below S+1, and such a record discards it in the
  honest replay too. Framing checks still run on every record, so a torn tail is told from
  damage exactly as before. What changes: a record below the snapshot that was altered
  *with a valid CRC* is no longer noticed (it cannot matter); a record below the snapshot
  whose CRC fails still stops recovery (unless it is a torn tail), because framing is how
  the next record is found and how damage is told from a torn write, and a damaged frame's
  index is among the damaged bytes. The same attacker could always roll the member back by
  truncating its WAL at a record boundary or restoring older files; that is unchanged.
- Whole segments are still read for framing. Their metadata (file name, header) gives only
  the first index, and a segment may hold entries above its successor's first index (a
  leader's overwrite or a snapshot mark rolls to a lower one), so no segment is known to lie
  wholly below S before it is read. `metrics.recovery_records` and `recovery_decrypted`
  count what the last `open` framed and opened.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator.raft import Entry, EntryKind, HardState, MemoryStorage, Snapshot

from ._fs import remove_files
from ._segment import (
    HARD_STATE,
    MARK_RESET,
    Frame,
    FramedSegment,
    Record,
    RecordType,
    decode_segment_header,
    frame_segment,
    list_segments,
    open_frame,
)
from ._snapfile import list_snapshots, read_snapshot
from ._wal_state import RecoveryReport, WalMetrics, _Segment
from .crypto import KeyStore
from .errors import WalCorruptError


@dataclass(slots=True)
class _Unread:
    """During recovery: a record of a run that the snapshot seems to cover (see `_settle`),
    with `record` set once it is opened."""

    seg: _Segment
    framed: FramedSegment
    frame: Frame
    record: Record | None = None


class WalRecovery:
    """`DiskWal`'s recovery, a base class of it: `_recover` runs once, from `DiskWal.open`."""

    if TYPE_CHECKING:  # what recovery uses of the `DiskWal` it is a base of
        _keys: KeyStore
        _log: logging.Logger
        _wal_dir: Path
        _snap_dir: Path
        _storage: MemoryStorage
        _segments: list[_Segment]
        _next_seq: int
        _snapshot_files: list[tuple[int, int, Path]]
        _replay_gap: tuple[Path, int, str] | None
        metrics: WalMetrics
        recovery: RecoveryReport | None

        def first_index(self) -> int: ...
        def last_index(self) -> int: ...
        def snapshot(self) -> Snapshot: ...
        def _discard_after(self, index: int) -> None: ...
        def _mark_live(self, seg: _Segment, index: int) -> None: ...
        def _prune_snapshots(self) -> None: ...
        def _roll(self, first_index: int) -> None: ...

    def _recover(self) -> None:
        snapshots, leftovers = list_snapshots(self._snap_dir)
        if leftovers:
            self._log.warning("removing interrupted snapshot writes: %s", leftovers)
            remove_files(leftovers)
        base = Snapshot()
        if snapshots:
            base, _ = read_snapshot(snapshots[-1][2], self._keys.data_key)
            self._storage.apply_snapshot(base)
        self._snapshot_files = snapshots
        found = list_segments(self._wal_dir)
        if not found:
            raise WalCorruptError(self._wal_dir, 0, "the WAL has no segment files")
        self._next_seq = found[-1][0] + 1
        hs = HardState()
        framed: FramedSegment | None = None
        run: list[_Unread] = []
        for position, (seq, first_index, path) in enumerate(found):
            final = position == len(found) - 1
            framed = frame_segment(path, seq, first_index, self._keys.cipher, final=final)
            if framed.corruption is not None:
                raise framed.corruption
            seg = _Segment(path, seq, first_index)
            self._segments.append(seg)
            for frame in framed.frames:
                self.metrics.recovery_records += 1
                seg.key_ids.add(frame.key_id)
                if frame.type is not RecordType.SEGMENT_HEADER:
                    seg.header_only = False
                if self._seems_covered(frame, base.meta.index):
                    run.append(_Unread(seg, framed, frame))
                    continue
                rec = self._open_frame(framed, frame)
                if run and rec.type is RecordType.SEGMENT_HEADER:
                    run.append(_Unread(seg, framed, frame, rec))
                    continue
                if run:
                    hs = self._settle(run, rec, base, hs)
                    run = []
                hs = self._replay(seg, rec, base, hs)
        if run:
            hs = self._settle(run, None, base, hs)
        assert framed is not None
        if self._replay_gap is not None:
            raise WalCorruptError(*self._replay_gap)
        self._storage.set_hard_state(hs)
        last = self._segments[-1]
        if framed.torn_reason is not None:
            cut = framed.size_bytes - framed.valid_bytes
            self.recovery = RecoveryReport(last.path, framed.valid_bytes, cut, framed.torn_reason)
            self._log.warning(
                "%s: cut a torn tail of %d bytes at offset %d (%s); that write was never "
                "acknowledged",
                last.path,
                cut,
                framed.valid_bytes,
                framed.torn_reason,
            )
            if framed.has_header:
                _truncate_durably(last.path, framed.valid_bytes)
        if not framed.has_header:
            # Created but its header never made it: drop it, after the new segment (which
            # takes a higher seq) is durable, so its seq is never handed out again.
            self._segments.pop()
            if not self._segments:
                raise WalCorruptError(last.path, 0, "the only segment has no intact header")
        self._roll(self.last_index() + 1)
        if not framed.has_header:
            remove_files([last.path])
        elif last.header_only:
            # Nothing but a header: the new segment's header supersedes it.
            remove_files([last.path])
            self._segments.remove(last)
        self._prune_snapshots()
        self._log.info(
            "recovered WAL %s: entries %d..%d, snapshot at %d, %d segment(s), %d of %d "
            "records decrypted",
            self._wal_dir,
            self.first_index(),
            self.last_index(),
            self.snapshot().meta.index,
            len(self._segments),
            self.metrics.recovery_decrypted,
            self.metrics.recovery_records,
        )

    def _open_frame(self, framed: FramedSegment, frame: Frame) -> Record:
        self.metrics.recovery_decrypted += 1
        return open_frame(framed, frame, self._keys.cipher)

    def _seems_covered(self, frame: Frame, base_index: int) -> bool:
        """Whether recovery may leave `frame` unread for now: by its clear (unauthenticated)
        fields an entry or a hard state at or below the snapshot, met while the log
        replayed so far is just the snapshot (nothing above it, no gap open)."""
        return (
            frame.index <= base_index
            and (frame.type is RecordType.ENTRY or frame.type is RecordType.HARD_STATE)
            and self._storage.last_index() <= base_index
            and self._replay_gap is None
            and base_index > 0
        )

    def _settle(
        self, run: list[_Unread], after: Record | None, base: Snapshot, hs: HardState
    ) -> HardState:
        """Replay a run of records left unread, given the authenticated record `after` it
        (None: the run ends the WAL); returns the hard state in force after the run.

        Records are opened from the end of the run backwards until what the run leaves
        behind is fixed by authenticated records alone (the argument is in the module
        docstring): the log, by an entry at or below the snapshot (or `after` being an entry
        at most one above it), and the hard state, by a hard state or segment header (or
        `after` being one). Records before that point are never opened: only their clear
        fields' bookkeeping for compaction is applied, which concerns indices at or below the
        snapshot alone."""
        base_index = base.meta.index
        need_log = not (
            after is not None and after.type is RecordType.ENTRY and after.index <= base_index + 1
        )
        need_hs = after is None or after.type not in (
            RecordType.HARD_STATE,
            RecordType.SEGMENT_HEADER,
        )
        start = len(run)
        while start > 0 and (need_log or need_hs):
            start -= 1
            item = run[start]
            if item.record is None:
                item.record = self._open_frame(item.framed, item.frame)
            if item.record.type is RecordType.ENTRY:
                need_log = False
            else:
                need_hs = False
        for item in run[:start]:
            if item.record is not None:
                hs = self._replay(item.seg, item.record, base, hs)
            elif item.frame.type is RecordType.ENTRY:
                self._discard_after(item.frame.index - 1)
                self._mark_live(item.seg, item.frame.index)
        for item in run[start:]:
            assert item.record is not None
            hs = self._replay(item.seg, item.record, base, hs)
        return hs

    def _replay(self, seg: _Segment, rec: Record, base: Snapshot, hs: HardState) -> HardState:
        """Apply one record to the in-memory view; returns the hard state in force after it.

        Replay follows the writer's rule exactly: an entry at index i means "the log now
        ends at i". Entries at or below the base snapshot are not kept, but still discard
        everything above it, as they did when written."""
        storage = self._storage
        base_index = base.meta.index
        match rec.type:
            case RecordType.SEGMENT_HEADER:
                _, _, hs = decode_segment_header(rec.payload)
            case RecordType.HARD_STATE:
                hs = HardState(*HARD_STATE.unpack(rec.payload))
            case RecordType.ENTRY:
                try:
                    kind = EntryKind(rec.payload[0])
                except (ValueError, IndexError):
                    raise WalCorruptError(seg.path, rec.offset, "malformed entry") from None
                self._discard_after(rec.index - 1)
                self._mark_live(seg, rec.index)
                if rec.index <= base_index:
                    self._replay_gap = None
                    if storage.last_index() > base_index:
                        storage.apply_snapshot(base)
                elif rec.index > storage.last_index() + 1:
                    # Either a segment is missing, or this entry is stale: written after
                    # entries that lived in segments compaction has deleted, and discarded
                    # by a later record of this log (an overwrite at a lower index). Skip it;
                    # a gap that no later record closes is the former (see `_recover`).
                    if self._replay_gap is None:
                        self._replay_gap = (
                            seg.path,
                            rec.offset,
                            f"entry {rec.index} leaves a gap after {storage.last_index()} "
                            "(a segment is missing?)",
                        )
                else:
                    self._replay_gap = None
                    storage.append([Entry(rec.index, rec.term, kind, rec.payload[1:])])
            case RecordType.SNAPSHOT_MARK:
                if rec.index > base_index:
                    raise WalCorruptError(
                        seg.path,
                        rec.offset,
                        f"the WAL records a snapshot at index {rec.index}, but the newest "
                        f"snapshot file is at {base_index} (was a snap/ file deleted?)",
                    )
                if rec.payload[0] & MARK_RESET:
                    self._discard_after(rec.index)
                    self._replay_gap = None
                    if storage.last_index() > base_index:
                        storage.apply_snapshot(base)
        return hs


def _truncate_durably(path: Path, size_bytes: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
