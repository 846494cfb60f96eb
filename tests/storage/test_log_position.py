"""`log_position`: how far a data dir's log reaches, read-only (for `concordctl cluster
recover --data-dir`), checked against what `DiskWal.open` itself recovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.raft import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from coordinator.storage import (
    DiskWal,
    KeyStore,
    LockedError,
    WalCorruptError,
    WrongUnlockKeyError,
    log_position,
)

VOTERS = ConfState(frozenset({1, 2, 3}))


def entries(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(i, term, EntryKind.NORMAL, b"x%d" % i) for i in range(lo, hi + 1)]


def new_wal(path: Path, autolock: bool = False) -> tuple[DiskWal, KeyStore]:
    keys = KeyStore.create(path, autolock=autolock)
    wal = DiskWal.create(keys, segment_bytes=600)  # small segments: several files
    wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, VOTERS)))
    return wal, keys


def agrees_with_open(path: Path, unlock_key: str | None = None) -> None:
    pos = log_position(path, unlock_key)
    with DiskWal.open(KeyStore.open(path, unlock_key)) as wal:
        assert (pos.last_index, pos.last_term) == (wal.last_index(), wal.term(wal.last_index()))
        assert pos.hard_state == wal.hard_state
        assert pos.snapshot_index == wal.snapshot().meta.index


def test_an_overwritten_tail_and_a_configuration_change(tmp_path: Path) -> None:
    wal, _ = new_wal(tmp_path / "d")
    with wal:
        wal.save(entries(1, 8, 1), HardState(1, 1, 5))
        shrunk = ConfState(frozenset({1, 2})).encode()
        wal.save([Entry(9, 1, EntryKind.CONF, shrunk)], None)
        # A new leader overwrote 7.. with its own entries (and the CONF entry with them).
        wal.save(entries(7, 7, 2), HardState(2, 3, 6))
    pos = log_position(tmp_path / "d")
    assert (pos.last_index, pos.last_term) == (7, 2)
    assert pos.hard_state == HardState(2, 3, 6)
    assert pos.conf == VOTERS  # the CONF entry at 9 was truncated away
    assert pos.torn_bytes == 0
    agrees_with_open(tmp_path / "d")
    # Read-only: no new segment, no lock left behind (it can run beside a member).
    before = sorted(p.name for p in (tmp_path / "d" / "wal").iterdir())
    log_position(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d" / "wal").iterdir()) == before


def test_snapshot_and_torn_tail(tmp_path: Path) -> None:
    wal, _ = new_wal(tmp_path / "d")
    with wal:
        wal.save(entries(1, 10, 3), HardState(3, 2, 10))
        wal.create_snapshot(8, VOTERS, b"image")
        wal.compact(8)
        wal.save([Entry(11, 4, EntryKind.CONF, ConfState(frozenset({1, 2, 3, 4})).encode())], None)
    last = sorted((tmp_path / "d" / "wal").glob("*.wal"))[-1]
    with last.open("ab") as f:
        f.write(b"\x00\x00\x01\x00garbage")  # a write that never completed
    pos = log_position(tmp_path / "d")
    assert (pos.last_index, pos.last_term, pos.snapshot_index) == (11, 4, 8)
    assert pos.conf == ConfState(frozenset({1, 2, 3, 4}))
    assert pos.torn_bytes > 0
    agrees_with_open(tmp_path / "d")


def test_keys_are_needed_and_damage_is_reported(tmp_path: Path) -> None:
    wal, keys = new_wal(tmp_path / "d", autolock=True)
    unlock_key = keys.unlock_key
    assert unlock_key is not None
    with wal:
        for i in range(1, 21):  # several segments of 600 bytes
            wal.save(entries(i, i, 1), HardState(1, 1, i))
    with pytest.raises(LockedError):
        log_position(tmp_path / "d")
    other = KeyStore.create(tmp_path / "other", autolock=True).unlock_key
    with pytest.raises(WrongUnlockKeyError):
        log_position(tmp_path / "d", other)
    assert log_position(tmp_path / "d", unlock_key).last_index == 20
    segments = sorted((tmp_path / "d" / "wal").glob("*.wal"))
    assert len(segments) > 2
    data = bytearray(segments[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage before the last segment: corruption, not a torn tail
    segments[0].write_bytes(bytes(data))
    with pytest.raises(WalCorruptError, match="corrupt at offset"):
        log_position(tmp_path / "d", unlock_key)
