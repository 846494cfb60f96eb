"""Regression: a WAL compacted while its first kept segment opens with stale entries must
reopen (found by tests/storage/test_model.py with --hypothesis-seed=24).

Segment A holds entries 1..4; segment B starts with entry 3 (a newer leader's) and then
entry 2 (a newer one still), which discards 3 and 4. Compacting to a snapshot at 1 deletes A
(and every live entry in it is <= 1). Replaying B from the snapshot meets entry 3 before
entry 2 closes the gap: it must be skipped, not reported as a missing segment. A gap that
nothing closes is still corruption."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.raft import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from coordinator.storage import DiskWal, KeyStore, WalCorruptError, log_position

CONF = ConfState(frozenset({1, 2, 3}))


def build(path: Path) -> list[Path]:
    keys = KeyStore.create(path)
    with DiskWal.create(keys, segment_bytes=600) as wal:
        for term in range(1, 11):  # fill a segment with overwrites of entry 1
            wal.save([Entry(1, term, data=b"x")], None)
        wal.save([Entry(i, 11, data=b"y") for i in range(1, 5)], None)
        wal.create_snapshot(1, CONF, b"image")
        wal.save([Entry(3, 12, data=b"z")], None)  # rolls a segment that opens with entry 3
        wal.save([Entry(2, 13, data=b"w")], None)
        assert wal.compact(1) >= 1
        assert (wal.last_index(), wal.term(2)) == (2, 13)
    kept = sorted((path / "wal").glob("*.wal"))
    # The scenario: what is left opens with the stale entry 3 (its name: first index 3).
    assert kept[0].name.endswith("-0000000000000003.wal")
    return kept


def test_a_compacted_wal_whose_kept_segment_opens_with_stale_entries_reopens(
    tmp_path: Path,
) -> None:
    build(tmp_path / "d")
    with DiskWal.open(KeyStore.open(tmp_path / "d"), segment_bytes=600) as wal:
        assert (wal.first_index(), wal.last_index()) == (2, 2)
        assert wal.entries(2, 3) == [Entry(2, 13, data=b"w")]
    pos = log_position(tmp_path / "d")
    assert (pos.last_index, pos.last_term) == (2, 13)


def test_a_gap_nothing_closes_is_still_corruption(tmp_path: Path) -> None:
    keys = KeyStore.create(tmp_path / "d")
    with DiskWal.create(keys, segment_bytes=600) as wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, CONF)))
        for i in range(1, 31):
            wal.save([Entry(i, 1, data=b"%d" % i)], HardState(1, 1, i))
    segments = sorted((tmp_path / "d" / "wal").glob("*.wal"))
    assert len(segments) >= 3
    segments[1].unlink()  # a middle segment lost
    with pytest.raises(WalCorruptError, match="leaves a gap"):
        DiskWal.open(KeyStore.open(tmp_path / "d"))
    with pytest.raises(WalCorruptError, match="leaves a gap"):
        log_position(tmp_path / "d")
