"""Recovery leaves records the snapshot covers unopened (wal.py, "What recovery leaves
unread"): it opens only what it needs, recovers exactly what opening everything recovers,
still cuts a torn tail and refuses damage above the snapshot, and cannot be talked into
skipping a record that matters by its clear fields."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest

from coordinator.raft import ConfState, HardState, Snapshot, SnapshotMeta
from coordinator.storage import DiskWal, WalCorruptError
from tests.storage.helpers import copy_dir, ents, frames, new_wal, reopen, segments, view

CONF = ConfState(frozenset({1, 2, 3}))
N = 40
S = 30
ENTRY, HARD_STATE = 2, 3
_TYPE_AT, _INDEX_AT = 8, 8 + 1 + 4
"""Offsets, from a record's start, of its clear type byte and its clear u64 index."""


def _build(data_dir: Path, *, last: int = N, snapshot_at: int = S) -> None:
    """Entries 1..last in batches of two, each with a hard state committing the batch, then
    a snapshot at `snapshot_at` (the log is kept past it, as a member's own snapshot does)."""
    _, wal = new_wal(data_dir)
    with wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, CONF)))
        for lo in range(1, last + 1, 2):
            wal.save(ents(lo, lo + 2), HardState(1, 1, lo + 1))
        wal.create_snapshot(snapshot_at, CONF, b"image")


def _clear_fields(data: bytes, start: int) -> tuple[int, int]:
    return data[start + _TYPE_AT], struct.unpack_from(">Q", data, start + _INDEX_AT)[0]


def _record_of(path: Path, rtype: int, index: int) -> tuple[int, int]:
    data = path.read_bytes()
    for start, end in frames(path):
        if _clear_fields(data, start) == (rtype, index):
            return start, end
    raise AssertionError(f"no record of type {rtype} at index {index} in {path}")


def _rewrite(path: Path, start: int, end: int, *, index: int | None = None, flip: int | None = None,
             fix_crc: bool = True) -> None:  # fmt: skip
    """Change a record in place, as someone with the disk but not the key can: its clear
    index, or one byte of its sealed payload (`flip`: offset from the end), and a fresh CRC."""
    data = bytearray(path.read_bytes())
    if index is not None:
        struct.pack_into(">Q", data, start + _INDEX_AT, index)
    if flip is not None:
        data[end - flip] ^= 0x01
    if fix_crc:
        struct.pack_into(">I", data, start + 4, zlib.crc32(bytes(data[start + 8 : end])))
    path.write_bytes(bytes(data))


def test_reopening_opens_only_the_records_above_the_snapshot(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _build(data_dir)
    path = segments(data_dir)[-1]
    data = path.read_bytes()
    clear = [_clear_fields(data, start) for start, _ in frames(path)]
    # header, bootstrap mark, N entries, N/2 hard states, the snapshot's mark
    assert len(clear) == 1 + 1 + N + N // 2 + 1
    above = [f for f in clear if f[0] not in (ENTRY, HARD_STATE) or f[1] > S]
    with reopen(data_dir) as wal:
        assert wal.metrics.recovery_records == len(clear)
        # what lies above S or is no entry/hard state, plus the hard state just before
        # entry S+1 (the hard state in force there: nothing after it carries one)
        assert wal.metrics.recovery_decrypted == len(above) + 1
        assert wal.metrics.recovery_decrypted < len(clear) // 2
        assert wal.snapshot().meta.index == S
        assert wal.entries(S + 1, N + 1) == ents(S + 1, N + 1)
        assert wal.hard_state == HardState(1, 1, N)


def test_a_snapshot_covering_the_whole_log_opens_only_its_last_records(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _build(data_dir, snapshot_at=N)
    with reopen(data_dir) as wal:
        # header, the two marks, and from the end: the last hard state and the last entry
        assert wal.metrics.recovery_decrypted == 5
        assert (wal.first_index(), wal.last_index()) == (N + 1, N)
        assert wal.hard_state == HardState(1, 1, N)


def test_a_torn_tail_above_the_snapshot_is_still_cut(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _build(data_dir, snapshot_at=N)
    with reopen(data_dir) as wal:
        wal.save(ents(N + 1, N + 3), HardState(1, 1, N + 2))
    path = segments(data_dir)[-1]
    start, end = frames(path)[-1]  # the hard state after entries N+1, N+2
    with path.open("r+b") as f:
        f.truncate(end - 5)
    with reopen(data_dir) as wal:
        assert wal.recovery is not None
        assert wal.recovery.offset == start
        assert wal.entries(N + 1, N + 3) == ents(N + 1, N + 3)
        assert wal.hard_state == HardState(1, 1, N)  # from before the cut record


@pytest.mark.parametrize("index", [S + 1, S + 5, N])
def test_a_damaged_record_above_the_snapshot_is_refused(tmp_path: Path, index: int) -> None:
    data_dir = tmp_path / "d"
    _build(data_dir)
    path = segments(data_dir)[-1]
    start, end = _record_of(path, ENTRY, index)
    _rewrite(path, start, end, flip=3)
    with pytest.raises(WalCorruptError, match="authentication failed") as info:
        reopen(data_dir)
    assert info.value.offset == start


@pytest.mark.parametrize(
    ("rtype", "index"),
    [(ENTRY, S + 1), (ENTRY, S + 2), (ENTRY, N), (HARD_STATE, S + 2), (HARD_STATE, N)],
)
def test_a_record_disguised_as_covered_is_still_opened(
    tmp_path: Path, rtype: int, index: int
) -> None:
    """Rewrite the clear index of a record recovery needs so that it seems to lie below the
    snapshot (with a fresh CRC): recovery must not take the clear field's word for it."""
    data_dir = tmp_path / "d"
    _build(data_dir)
    path = segments(data_dir)[-1]
    start, end = _record_of(path, rtype, index)
    _rewrite(path, start, end, index=5)
    with pytest.raises(WalCorruptError, match="authentication failed") as info:
        reopen(data_dir)
    assert info.value.offset == start


def test_the_last_records_disguised_as_covered_are_still_opened(tmp_path: Path) -> None:
    """Disguise every record above the snapshot: the run then reaches the end of the WAL,
    and the records that decide the outcome are opened from the end backwards."""
    data_dir = tmp_path / "d"
    _build(data_dir, snapshot_at=S)
    with reopen(data_dir) as wal:
        wal.save(ents(N + 1, N + 3), HardState(1, 1, N + 2))
    path = segments(data_dir)[-1]
    for rtype, index in ((ENTRY, N + 1), (ENTRY, N + 2), (HARD_STATE, N + 2)):
        start, end = _record_of(path, rtype, index)
        _rewrite(path, start, end, index=3)
    with pytest.raises(WalCorruptError, match="authentication failed"):
        reopen(data_dir)


@pytest.mark.parametrize(("rtype", "index"), [(ENTRY, 1), (ENTRY, S // 2), (HARD_STATE, 10)])
def test_a_record_altered_below_the_snapshot_does_not_stop_a_restart(
    tmp_path: Path, rtype: int, index: int
) -> None:
    """Its sealed bytes changed and its CRC fixed: the snapshot covers it, so it is never
    opened, and the member recovers exactly its state."""
    data_dir = tmp_path / "d"
    _build(data_dir)
    intact = copy_dir(data_dir, tmp_path / "intact")
    path = segments(data_dir)[-1]
    start, end = _record_of(path, rtype, index)
    _rewrite(path, start, end, flip=3)
    with reopen(data_dir) as wal, reopen(intact) as reference:
        assert view(wal) == view(reference)
        assert wal.metrics.recovery_decrypted == reference.metrics.recovery_decrypted


def test_a_checksum_failure_below_the_snapshot_still_stops_a_restart(tmp_path: Path) -> None:
    """A frame whose CRC fails cannot be told covered: its index is among the damaged bytes,
    and the next record is found only through its length. Unless it is a torn tail, it is
    damage, below the snapshot or not."""
    data_dir = tmp_path / "d"
    _build(data_dir)
    path = segments(data_dir)[-1]
    start, end = _record_of(path, ENTRY, 2)
    _rewrite(path, start, end, flip=3, fix_crc=False)
    with pytest.raises(WalCorruptError, match="checksum mismatch, yet an intact record follows"):
        reopen(data_dir)


def _random_history(data_dir: Path, seed: int) -> None:
    """A log with overwrites, commit-only and term-changing hard states, own snapshots,
    incoming (resetting) snapshots, compactions and small segments."""
    rng = random.Random(seed)
    _, wal = new_wal(data_dir, segment_bytes=700)
    term, commit = 1, 0
    try:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, CONF)))
        for _ in range(120):
            snap_index = wal.snapshot().meta.index
            last = wal.last_index()
            roll = rng.random()
            if roll < 0.55:
                lo = rng.randint(max(commit, snap_index) + 1, last + 1)
                count = rng.randint(1, 4)
                commit = rng.randint(commit, lo + count - 1) if rng.random() < 0.7 else commit
                hs = HardState(term, 1, commit) if rng.random() < 0.8 else None
                wal.save(ents(lo, lo + count, term=term, tag=b"s%d" % seed), hs)
            elif roll < 0.65:
                term += 1
                wal.save([], HardState(term, rng.randint(0, 3), commit))
            elif roll < 0.75:
                commit = rng.randint(commit, last)
                wal.save([], HardState(term, 1, commit))
            elif roll < 0.87 and commit > snap_index:
                wal.create_snapshot(rng.randint(snap_index + 1, commit), CONF, b"img")
                if rng.random() < 0.5:
                    wal.compact(rng.randint(0, wal.snapshot().meta.index))
            elif roll >= 0.87 and rng.random() < 0.5:
                index = max(snap_index, commit) + rng.randint(0, 6)
                wal.save_snapshot(Snapshot(SnapshotMeta(index, term, CONF), b"in"))
                commit = index
                wal.save([], HardState(term, 1, commit))
            if rng.random() < 0.1:
                wal.close()
                wal = reopen(data_dir, segment_bytes=700)
    finally:
        wal.close()


@pytest.mark.parametrize("seed", range(12))
def test_recovery_equals_opening_every_record(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The oracle: the same files recovered with nothing left unread."""
    data_dir = tmp_path / "d"
    _random_history(data_dir, seed)
    every = copy_dir(data_dir, tmp_path / "every")
    with reopen(data_dir) as wal:
        fast = (view(wal), wal.key_ids_in_use(), wal.metrics.recovery_decrypted)
    monkeypatch.setattr(DiskWal, "_seems_covered", lambda *_: False)
    with reopen(every) as wal:
        slow = (view(wal), wal.key_ids_in_use(), wal.metrics.recovery_decrypted)
        assert slow[2] == wal.metrics.recovery_records
    assert fast[:2] == slow[:2]
    assert fast[2] <= slow[2]
