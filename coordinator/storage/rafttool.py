"""Read a member's data directory record by record, decrypted: the engine of
`concordctl rafttool dump` (Swarm's swarm-rafttool, for Concord).

`dump` needs the member's keys: the data dir's own `keys/kek`, or with autolock the unlock
key. Without them it refuses (`LockedError`, `KeyFileCorruptError`) before reading a single
record, because without them the files reveal nothing but sizes, indices and terms.

It is strictly read-only, so it may run beside a live member or on a copy of a broken one:
it takes no lock, cuts no torn tail (it reports one as a TORN record) and cleans up
nothing. Corruption is raised as `WalCorruptError` after every record before it has been
yielded, so an operator sees exactly how far the log reads back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from coordinator.raft import ConfState, EntryKind, HardState

from ._segment import HARD_STATE, MARK_RESET, RecordType, decode_segment_header, list_segments
from ._segment import Record as _Record
from ._segment import scan_segment_partially as _scan_segment
from ._snapfile import list_snapshots, read_snapshot
from .crypto import KeyStore
from .errors import WalCorruptError
from .wal import SNAP_DIR, WAL_DIR


@dataclass(frozen=True, slots=True)
class DumpRecord:
    """One decrypted record (or snapshot, or torn tail) of a data directory.

    `type` is a `RecordType` name, `SNAPSHOT` for a snapshot file, or `TORN` for an
    unacknowledged tail that the next open would cut."""

    source: str
    """The file, relative to the data dir (`wal/....wal`, `snap/....snap`)."""
    offset: int
    type: str
    index: int = 0
    term: int = 0
    key_id: int = 0
    kind: EntryKind | None = None
    """For ENTRY records."""
    data: bytes = b""
    """Entry or snapshot data."""
    hard_state: HardState | None = None
    """For HARD_STATE and SEGMENT_HEADER records."""
    conf: ConfState | None = None
    """For SNAPSHOT and SNAPSHOT_MARK records."""
    note: str = ""

    def describe(self) -> str:
        """One line for a terminal."""
        parts = [f"{self.source}@{self.offset}", self.type]
        if self.type not in {"TORN"}:
            parts += [f"index={self.index}", f"term={self.term}", f"key={self.key_id}"]
        if self.kind is not None:
            parts.append(f"kind={self.kind.name}")
        if self.hard_state is not None:
            hs = self.hard_state
            parts.append(f"hard_state=(term={hs.term} vote={hs.vote} commit={hs.commit})")
        if self.conf is not None:
            parts.append(f"voters={sorted(self.conf.voters)} learners={sorted(self.conf.learners)}")
        if self.data:
            parts.append(f"data={self.data!r}")
        if self.note:
            parts.append(self.note)
        return " ".join(parts)


def dump(data_dir: str | os.PathLike[str], unlock_key: str | None = None) -> Iterator[DumpRecord]:
    """Every snapshot, then every WAL record in log order, decrypted.

    The keys are opened before this returns, so a locked or keyless directory fails here,
    not at the first `next()`."""
    keys = KeyStore.open(data_dir, unlock_key, read_only=True)
    return _records(Path(data_dir), keys)


def _records(data_dir: Path, keys: KeyStore) -> Iterator[DumpRecord]:
    snap_dir = data_dir / SNAP_DIR
    if snap_dir.is_dir():
        for index, term, path in list_snapshots(snap_dir)[0]:
            snap, key_id = read_snapshot(path, keys.data_key)
            yield DumpRecord(
                f"{SNAP_DIR}/{path.name}",
                0,
                "SNAPSHOT",
                index,
                term,
                key_id,
                data=bytes(snap.data),
                conf=snap.meta.conf,
            )
    wal_dir = data_dir / WAL_DIR
    if not wal_dir.is_dir():
        return
    segments = list_segments(wal_dir)
    for position, (seq, first_index, path) in enumerate(segments):
        source = f"{WAL_DIR}/{path.name}"
        final = position == len(segments) - 1
        scan = _scan_segment(path, seq, first_index, keys.cipher, final=final)
        for rec in scan.records:
            yield _describe(source, rec)
        if scan.corruption is not None:
            raise scan.corruption
        if scan.torn_reason is not None:
            cut = scan.size_bytes - scan.valid_bytes
            note = f"{cut} bytes: {scan.torn_reason}"
            yield DumpRecord(source, scan.valid_bytes, "TORN", note=note)


def _describe(source: str, rec: _Record) -> DumpRecord:
    common = (source, rec.offset, rec.type.name, rec.index, rec.term, rec.key_id)
    match rec.type:
        case RecordType.ENTRY:
            return DumpRecord(*common, kind=EntryKind(rec.payload[0]), data=rec.payload[1:])
        case RecordType.HARD_STATE:
            return DumpRecord(*common, hard_state=HardState(*HARD_STATE.unpack(rec.payload)))
        case RecordType.SEGMENT_HEADER:
            _, _, hs = decode_segment_header(rec.payload)
            return DumpRecord(*common, hard_state=hs)
        case RecordType.SNAPSHOT_MARK:
            reset = bool(rec.payload[0] & MARK_RESET)
            conf = ConfState.decode(rec.payload[1:])
            return DumpRecord(*common, conf=conf, note="reset" if reset else "")


@dataclass(frozen=True, slots=True)
class LogPosition:
    """How far a data directory's log reaches: what `concordctl cluster recover` compares
    between survivors (Raft's "more up-to-date": higher last term, then higher last index)."""

    hard_state: HardState
    last_index: int
    last_term: int
    snapshot_index: int
    snapshot_term: int
    conf: ConfState
    """The newest configuration in the log (committed or not), else the snapshot's."""
    torn_bytes: int = 0
    """An unacknowledged torn tail the next open would cut (not counted above)."""


def log_position(data_dir: str | os.PathLike[str], unlock_key: str | None = None) -> LogPosition:
    """Replay a data directory read-only (no lock, nothing cut or cleaned, like `dump`) and
    return where its log ends. The keys are needed (`LockedError` without the unlock key of
    an autolocked member); damage raises `WalCorruptError`.

    The replay follows the WAL's own rule: an entry at index i means "the log now ends at
    i", an entry at or below the snapshot (or a reset mark) resets the log to the snapshot."""
    keys = KeyStore.open(data_dir, unlock_key, read_only=True)
    path = Path(data_dir)
    base_index, base_term, base_conf = 0, 0, ConfState()
    snap_dir = path / SNAP_DIR
    if snap_dir.is_dir():
        snapshots = list_snapshots(snap_dir)[0]
        if snapshots:
            snap, _ = read_snapshot(snapshots[-1][2], keys.data_key)
            base_index, base_term, base_conf = snap.meta.index, snap.meta.term, snap.meta.conf
    wal_dir = path / WAL_DIR
    if not wal_dir.is_dir():
        raise WalCorruptError(wal_dir, 0, "the data dir has no WAL")
    last_index, last_term = base_index, base_term
    confs: list[tuple[int, ConfState]] = []
    hs = HardState()
    torn = 0
    gap: WalCorruptError | None = None
    segments = list_segments(wal_dir)
    for position, (seq, first_index, seg_path) in enumerate(segments):
        final = position == len(segments) - 1
        scan = _scan_segment(seg_path, seq, first_index, keys.cipher, final=final)
        for rec in scan.records:
            match rec.type:
                case RecordType.SEGMENT_HEADER:
                    _, _, hs = decode_segment_header(rec.payload)
                case RecordType.HARD_STATE:
                    hs = HardState(*HARD_STATE.unpack(rec.payload))
                case RecordType.ENTRY:
                    if rec.index <= base_index:
                        last_index, last_term, confs, gap = base_index, base_term, [], None
                        continue
                    if rec.index > last_index + 1:
                        # Stale after compaction, or a missing segment (as `DiskWal`).
                        if gap is None:
                            why = f"entry {rec.index} leaves a gap after {last_index}"
                            gap = WalCorruptError(seg_path, rec.offset, why)
                        continue
                    gap = None
                    last_index, last_term = rec.index, rec.term
                    confs = [c for c in confs if c[0] < rec.index]
                    if rec.payload[:1] == bytes([EntryKind.CONF]):
                        confs.append((rec.index, ConfState.decode(rec.payload[1:])))
                case RecordType.SNAPSHOT_MARK:
                    if rec.payload[0] & MARK_RESET:
                        gap = None
                        if last_index > base_index:
                            last_index, last_term, confs = base_index, base_term, []
        if scan.corruption is not None:
            raise scan.corruption
        if scan.torn_reason is not None:
            torn = scan.size_bytes - scan.valid_bytes
    if gap is not None:
        raise gap
    return LogPosition(
        hard_state=hs,
        last_index=last_index,
        last_term=last_term,
        snapshot_index=base_index,
        snapshot_term=base_term,
        conf=confs[-1][1] if confs else base_conf,
        torn_bytes=torn,
    )
