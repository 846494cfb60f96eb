"""DiskWal: the member's durable log, on real disk, encrypted; both `Wal` and `LogStorage`.

The runtime hands one `DiskWal` to the Raft core as its `LogStorage` and to `handle_ready` as
its `Wal`: whatever `save` has made durable is readable through the same object at once, so
the two can never disagree. Reads are served from an in-memory `MemoryStorage` holding the
entries after the newest snapshot; the files exist for recovery.

**Layout** (see `_segment.py` and `_snapfile.py` for the byte formats):

    <data dir>/wal/<seq:016x>-<first index:016x>.wal   segments, rolled at `segment_bytes`
    <data dir>/wal/LOCK                               flock: one writer at a time
    <data dir>/snap/<term:016x>-<index:016x>.snap      the newest two snapshots

**Group commit.** `save(entries, hard_state)` seals one record per entry plus one for the
hard state, writes them with one `write` and makes them durable with one `fdatasync`, and
only then updates the in-memory view. The caller batches a whole Ready into one call, so
one fsync covers every proposal that arrived while the previous one was in flight.

**Truncation.** Each ENTRY record carries its index. Writing an index at or below the last
one (a new leader overwrote our tail) means "the log now ends here": replay applies records
in order with exactly that rule, so the overwrite survives a restart without a separate
truncation record.

**Recovery** (`open`) loads the newest snapshot, then replays every segment in order; a torn
tail is cut, anything else that does not read back raises `WalCorruptError`. How, and which
records below the snapshot it leaves unopened and why that is safe: `_wal_recovery.py`.

**Snapshots.** `save_snapshot` persists an incoming snapshot (the log is replaced by it);
`create_snapshot` records the member's own (the log is kept until `compact`). Either way
the file is written atomically first and then a SNAPSHOT_MARK record is appended, so the
WAL notices a missing snapshot file. After a restart the in-memory log starts right after
the newest snapshot, as if `compact` had been called up to it.

**Compaction.** `compact(index)` drops in-memory entries up to `index` and deletes the
oldest segments whose live entries all lie at or below it. "Live" discounts entries that
a later overwrite or snapshot reset discarded, so a stale tail does not pin a segment
forever, and only a *prefix* of segments is ever deleted, which keeps replay of the rest
equivalent to replay of everything, with one wrinkle: the first kept segment may open
with stale entries whose predecessors were in the deleted segments, so replay skips an
entry that leaves a gap and reports corruption only if no later record closes it (a later
overwrite below the gap, or a snapshot reset, discards the skipped entries as it did when
they were written). Every segment header repeats the hard state in force
when it was opened, so deleting old segments never loses the term or vote.

**Keys.** `rotate_dek` starts a new segment under the new key; once a snapshot and
`compact` have removed every segment sealed under older keys, `retire_keys` drops them
from the ring. A member does this in `RaftLoop.rotate_data_key` (`concordctl cluster
rotate-data-key`): switch, snapshot at once, compact to it, retire; and it retires what it
can after every snapshot it takes.

Not thread-safe: one owner (the member's loop) calls everything. After a failed write or
fsync the WAL refuses further use: the kernel may have dropped the dirty pages, and
retrying would report durability that does not exist.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from coordinator.raft import (
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotData,
    SnapshotMeta,
    UnavailableError,
)

from ._fs import fsync_dir, remove_files, sync_data, write_all
from ._segment import (
    HARD_STATE,
    MARK_RESET,
    RECORD_OVERHEAD_BYTES,
    RecordType,
    encode_record,
    segment_name,
)
from ._snapfile import (
    SNAPSHOTS_KEPT,
    list_snapshots,
    snapshot_key_id,
    write_snapshot,
)
from ._wal_files import create_segment, lock_wal_dir
from ._wal_recovery import WalRecovery
from ._wal_state import (
    DEFAULT_SEGMENT_BYTES,
    SNAP_DIR,
    WAL_DIR,
    RecoveryReport,
    WalMetrics,
    _Segment,
)
from .crypto import KeyStore
from .errors import (
    AlreadyInitializedError,
    NotInitializedError,
    WalError,
)

if TYPE_CHECKING:
    from coordinator.raft import LogStorage

# The directory names stay importable from here, where they were defined before.
__all__ = ["SNAP_DIR", "WAL_DIR", "DiskWal"]

_log = logging.getLogger(__name__)


class DiskWal(WalRecovery):
    """The segmented, encrypted write-ahead log. Build one with `create` or `open`."""

    def __init__(
        self, keys: KeyStore, lock_fd: int, segment_bytes: int, logger: logging.Logger
    ) -> None:
        self._keys = keys
        self._lock_fd = lock_fd
        self._segment_bytes = segment_bytes
        self._log = logger
        self._wal_dir = keys.data_dir / WAL_DIR
        self._snap_dir = keys.data_dir / SNAP_DIR
        self._storage = MemoryStorage()
        self._segments: list[_Segment] = []
        """Oldest first; the last one is the active segment, written through `_fd`."""
        self._fd = -1
        self._unsynced = False
        """The active segment holds a write not yet fsynced."""
        self._commit_held = False
        """A commit index moved alone and is not written yet (see `save`)."""
        self._active_bytes = 0
        self._counter = 0
        """Records written to the active segment so far: the next nonce counter."""
        self._next_seq = 0
        """1 + the highest segment seq ever seen, including a headerless one being dropped."""
        self._live_ceiling = 0
        """An upper bound of every segment's live_max_index, to skip needless scans."""
        self._snapshot_files: list[tuple[int, int, Path]] = []
        self._failed: BaseException | None = None
        self._closed = False
        self._replay_gap: tuple[Path, int, str] | None = None
        """During recovery: the first entry that left a gap not yet closed by a later one."""
        self.metrics = WalMetrics()
        self.recovery: RecoveryReport | None = None
        """Set by `open` when it cut a torn tail."""

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        keys: KeyStore,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        logger: logging.Logger | None = None,
    ) -> DiskWal:
        """Create an empty WAL in the key store's data dir and open it.

        The WAL starts under a freshly generated DEK, so its nonces (segment seq, counter)
        start from an empty space even if an earlier `wal/` was deleted by hand. The first
        segment is built in `wal.tmp/` and renamed into place, so a crash leaves either no
        WAL or a complete empty one. To bootstrap a cluster, `save_snapshot` an index-0
        snapshot carrying the initial configuration."""
        data_dir = keys.data_dir
        wal_dir = data_dir / WAL_DIR
        snap_dir = data_dir / SNAP_DIR
        if wal_dir.exists():
            raise AlreadyInitializedError(f"{wal_dir} already exists; open it instead")
        snap_dir.mkdir(mode=0o700, exist_ok=True)
        if list_snapshots(snap_dir)[0]:
            raise AlreadyInitializedError(
                f"{snap_dir} holds snapshots but {wal_dir} is missing: the data dir is "
                "damaged; move it aside and rebuild this member from its peers"
            )
        key_id = keys.rotate_dek()
        keys.drop_keys_older_than(key_id)
        staging = data_dir / (WAL_DIR + ".tmp")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        fd, _ = create_segment(staging, 0, 1, HardState(), keys)
        os.close(fd)
        os.rename(staging, wal_dir)
        fsync_dir(data_dir)
        return cls.open(keys, segment_bytes=segment_bytes, logger=logger)

    @classmethod
    def open(
        cls,
        keys: KeyStore,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        logger: logging.Logger | None = None,
    ) -> DiskWal:
        """Recover the WAL in the key store's data dir (see the module docstring)."""
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        wal_dir = keys.data_dir / WAL_DIR
        if not wal_dir.is_dir():
            raise NotInitializedError(
                f"{keys.data_dir} has no WAL ({wal_dir} is missing): not a member's data dir, or "
                "one whose first start did not finish"
            )
        lock_fd = lock_wal_dir(wal_dir)
        wal = cls(keys, lock_fd, segment_bytes, logger or _log)
        try:
            wal._recover()
        except BaseException:
            wal.close()
            raise
        return wal

    def close(self) -> None:
        """Release the files, writing and fsyncing a commit index held back (best effort: it
        is not needed for safety, only spares the next start a little catching up)."""
        if self._fd >= 0:
            if self._commit_held and self._failed is None and not self._closed:
                with contextlib.suppress(OSError, WalError):
                    self._write_hard_state()
            if self._unsynced and self._failed is None:
                with contextlib.suppress(OSError):
                    self._sync_active()
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._closed = True

    def __enter__(self) -> DiskWal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def data_dir(self) -> Path:
        return self._keys.data_dir

    # --- LogStorage (raft's read side) -------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._storage.initial_state()

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        return self._storage.entries(lo, hi, max_bytes)

    def term(self, index: int) -> int:
        return self._storage.term(index)

    def first_index(self) -> int:
        return self._storage.first_index()

    def last_index(self) -> int:
        return self._storage.last_index()

    def snapshot(self) -> Snapshot:
        return self._storage.snapshot()

    @property
    def hard_state(self) -> HardState:
        return self._storage.hard_state

    # --- Wal (the runtime's write side) ------------------------------------------------------

    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        """Append `entries` (truncating any stored suffix they overlap) and record
        `hard_state`; returns once both are durable, with one write and one fsync.

        Except: a hard state that moves only the commit index, with no entries, is held in
        memory and written with the next record, a segment roll or `close`, and neither
        sealed nor written now. Nothing depends on a commit index surviving a crash: a member
        that restarts with an older one re-learns it from the leader, and the entries it
        covers are durable already. Terms and votes are always written and synced: forgetting
        those could let one member vote twice in a term. This saves a follower its second
        fsync per replicated batch, and a leader the write that otherwise sat between its
        quorum's acknowledgement and its answer."""
        self._check_usable()
        entries = self._admissible(entries)
        if not entries and hard_state is None:
            return
        prev = self._storage.hard_state
        sync = bool(entries) or (
            hard_state is not None and (hard_state.term, hard_state.vote) != (prev.term, prev.vote)
        )
        if not sync:
            assert hard_state is not None  # no entries: the hard state moved, commit alone
            self._storage.set_hard_state(hard_state)
            self._commit_held = True
            return
        if hard_state is None and self._commit_held:
            hard_state = prev  # the commit index held back rides with these entries
        records: list[tuple[RecordType, int, int, bytes]] = [
            (RecordType.ENTRY, e.index, e.term, bytes([e.kind]) + e.data) for e in entries
        ]
        if hard_state is not None:
            hs = hard_state
            payload = HARD_STATE.pack(hs.term, hs.vote, hs.commit)
            records.append((RecordType.HARD_STATE, hs.commit, hs.term, payload))
        self._append(records, entries[0].index if entries else self.last_index() + 1, sync=sync)
        self._commit_held = False
        self.metrics.saves += 1
        if entries:
            self._discard_after(entries[0].index - 1)
            self._storage.append(entries)
            self._mark_live(self._active, entries[-1].index)
            self.metrics.entries_written += len(entries)
        if hard_state is not None:
            self._storage.set_hard_state(hard_state)

    def _write_hard_state(self) -> None:
        hs = self._storage.hard_state
        payload = HARD_STATE.pack(hs.term, hs.vote, hs.commit)
        self._append(
            [(RecordType.HARD_STATE, hs.commit, hs.term, payload)], self.last_index() + 1, sync=True
        )
        self._commit_held = False

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Persist an incoming snapshot and replace the log with it (InstallSnapshot)."""
        self._check_usable()
        current = self._storage.snapshot().meta.index
        if snapshot.meta.index < current:
            raise ValueError(
                f"snapshot at {snapshot.meta.index} is older than the stored one at {current}"
            )
        self._persist_snapshot(snapshot, reset=True)
        self._storage.apply_snapshot(snapshot)
        self._discard_after(snapshot.meta.index)

    def create_snapshot(self, index: int, conf: ConfState, data: SnapshotData) -> Snapshot:
        """Persist the state machine's image at applied `index` (which must be stored). The
        log is kept until `compact`, so lagging followers can still be sent entries."""
        self._check_usable()
        current = self._storage.snapshot().meta.index
        if index <= current:
            raise ValueError(f"snapshot at {index} is not newer than {current}")
        if index > self.last_index():
            raise UnavailableError(index)
        snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf), data)
        self._persist_snapshot(snapshot, reset=False)
        return self._storage.create_snapshot(index, conf, data)

    def compact(self, index: int) -> int:
        """Drop entries up to `index` (at most the newest snapshot's index) from memory, and
        delete the oldest segments holding nothing live above it. Returns how many
        segments were deleted."""
        self._check_usable()
        snap_index = self._storage.snapshot().meta.index
        if index > snap_index:
            raise ValueError(f"cannot compact to {index}: the newest snapshot is at {snap_index}")
        self._storage.compact(index)
        doomed: list[_Segment] = []
        for seg in self._segments[:-1]:
            if seg.live_max_index > index:
                break
            doomed.append(seg)
        if doomed:
            remove_files([seg.path for seg in doomed])
            del self._segments[: len(doomed)]
            self.metrics.segments_deleted += len(doomed)
            self._log.info("compacted to %d: deleted %d segment(s)", index, len(doomed))
        return len(doomed)

    # --- key rotation ----------------------------------------------------------------------

    def rotate_dek(self) -> int:
        """Make a new DEK current and start a new segment under it; returns its key id."""
        self._check_usable()
        key_id = self._keys.rotate_dek()
        self._roll(self.last_index() + 1)
        return key_id

    def key_ids_in_use(self) -> set[int]:
        """Key ids the WAL and the newest snapshot still need to be read."""
        used = {self._keys.current_key_id}
        for seg in self._segments:
            used |= seg.key_ids
        if self._snapshot_files:
            used.add(snapshot_key_id(self._snapshot_files[-1][2]))
        return used

    def retire_keys(self) -> list[int]:
        """Drop from the ring every DEK older than the oldest one still in use; returns the
        ids dropped. An older, fallback snapshot sealed under such a key is deleted first
        (it could not be read any more)."""
        self._check_usable()
        floor = min(self.key_ids_in_use())
        stale = [entry for entry in self._snapshot_files[:-1] if snapshot_key_id(entry[2]) < floor]
        if stale:
            remove_files([path for _, _, path in stale])
            self._snapshot_files = [e for e in self._snapshot_files if e not in stale]
        return self._keys.drop_keys_older_than(floor)

    # --- writing -------------------------------------------------------------------------------

    @property
    def _active(self) -> _Segment:
        return self._segments[-1]

    def _check_usable(self) -> None:
        if self._closed:
            raise WalError("the WAL is closed")
        if self._failed is not None:
            raise WalError(
                "an earlier write or fsync failed; the WAL cannot vouch for anything since, "
                "so the member must restart and recover"
            ) from self._failed

    def _admissible(self, entries: Sequence[Entry]) -> Sequence[Entry]:
        """Validate a batch before anything is written; drop entries a snapshot covers."""
        if not entries:
            return entries
        for prev, nxt in itertools.pairwise(entries):
            if nxt.index != prev.index + 1:
                raise ValueError(f"entries not contiguous: {prev.index} then {nxt.index}")
        snap_index = self._storage.snapshot().meta.index
        if entries[-1].index <= snap_index:
            return ()
        if entries[0].index <= snap_index:
            entries = entries[snap_index + 1 - entries[0].index :]
        if entries[0].index > self.last_index() + 1:
            raise ValueError(
                f"gap in log: appending index {entries[0].index} after {self.last_index()}"
            )
        return entries

    def _discard_after(self, index: int) -> None:
        """Everything above `index` was just truncated or reset away: no segment holds live
        entries there any more."""
        if index >= self._live_ceiling:
            return
        for seg in self._segments:
            seg.live_max_index = min(seg.live_max_index, index)
        self._live_ceiling = index

    def _mark_live(self, seg: _Segment, index: int) -> None:
        seg.live_max_index = index
        self._live_ceiling = max(self._live_ceiling, index)

    def _append(
        self,
        records: list[tuple[RecordType, int, int, bytes]],
        first_index: int,
        *,
        sync: bool = True,
    ) -> None:
        size = sum(RECORD_OVERHEAD_BYTES + len(r[3]) for r in records)
        if not self._active.header_only and self._active_bytes + size > self._segment_bytes:
            self._roll(first_index)
        key_id = self._keys.current_key_id
        cipher = self._keys.cipher(key_id)
        seq = self._active.seq
        buf = bytearray()
        offset = self._active_bytes
        for rtype, index, term, payload in records:
            record = encode_record(
                cipher,
                key_id,
                seq=seq,
                counter=self._counter,
                offset=offset,
                rtype=rtype,
                index=index,
                term=term,
                payload=payload,
            )
            # Counted even if the write below fails: a nonce is spent once it may have
            # reached the disk.
            self._counter += 1
            buf += record
            offset += len(record)
        self._write(buf, sync=sync)
        self._active_bytes = offset
        self._active.key_ids.add(key_id)
        self._active.header_only = False

    def _write(self, buf: bytes | bytearray, *, sync: bool) -> None:
        try:
            write_all(self._fd, buf)
            self._unsynced = True
            if sync:
                self._sync_active()
        except OSError as exc:
            self._failed = exc
            raise WalError(f"writing {self._active.path} failed: {exc}") from exc
        self.metrics.bytes_written += len(buf)

    def _sync_active(self) -> None:
        """fsync the active segment (OSError propagates to the caller, which fails the WAL)."""
        started = time.perf_counter()
        sync_data(self._fd)
        self._count_fsync(time.perf_counter() - started)
        self._unsynced = False

    def _count_fsync(self, elapsed_s: float) -> None:
        self.metrics.fsyncs += 1
        self.metrics.fsync_last_s = elapsed_s
        self.metrics.fsync_total_s += elapsed_s

    def _roll(self, first_index: int) -> None:
        """Start segment seq+1. The old active segment is fsynced first if a commit-only hard
        state was left unsynced in it: a record lost there would sit in the middle of the log,
        which recovery rightly refuses, rather than at its tail, which it cuts."""
        seq = self._next_seq
        self._next_seq += 1
        try:
            if self._fd >= 0 and self._unsynced:
                self._sync_active()
            started = time.perf_counter()
            fd, size = create_segment(self._wal_dir, seq, first_index, self.hard_state, self._keys)
            self._commit_held = False  # the new segment's header carries the whole hard state
            elapsed = time.perf_counter() - started
        except OSError as exc:
            self._failed = exc
            raise WalError(f"starting WAL segment {seq} failed: {exc}") from exc
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._active_bytes = size
        self._counter = 1  # the header used counter 0
        path = self._wal_dir / segment_name(seq, first_index)
        self._segments.append(_Segment(path, seq, first_index, key_ids={self._keys.current_key_id}))
        self._count_fsync(elapsed)
        self.metrics.segments_created += 1
        self.metrics.bytes_written += size

    def _persist_snapshot(self, snapshot: Snapshot, reset: bool) -> None:
        meta = snapshot.meta
        key_id = self._keys.current_key_id
        try:
            path = write_snapshot(self._snap_dir, snapshot, key_id, self._keys.data_key)
        except OSError as exc:
            self._failed = exc
            raise WalError(f"writing snapshot {meta.index} failed: {exc}") from exc
        self.metrics.snapshots_written += 1
        flags = MARK_RESET if reset else 0
        mark = bytes([flags]) + meta.conf.encode()
        self._append([(RecordType.SNAPSHOT_MARK, meta.index, meta.term, mark)], meta.index + 1)
        entry = (meta.index, meta.term, path)
        self._snapshot_files = sorted({*self._snapshot_files, entry})
        self._prune_snapshots()

    def _prune_snapshots(self) -> None:
        if len(self._snapshot_files) > SNAPSHOTS_KEPT:
            old = self._snapshot_files[:-SNAPSHOTS_KEPT]
            remove_files([path for _, _, path in old])
            self._snapshot_files = self._snapshot_files[-SNAPSHOTS_KEPT:]


if TYPE_CHECKING:

    def _is_log_storage(wal: DiskWal) -> LogStorage:
        return wal
