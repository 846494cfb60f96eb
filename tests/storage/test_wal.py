"""DiskWal as a log: round trips, reopen, truncation by overwrite, segments, snapshots and
compaction, on a real directory with real fsync. Every reopen is a "crash": close() adds
nothing to the disk that `save` had not already fsynced."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from coordinator.raft import (
    CompactedError,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)
from coordinator.storage import (
    AlreadyInitializedError,
    DataDirBusyError,
    DiskWal,
    KeyStore,
    NotInitializedError,
    WalCorruptError,
    WalError,
)
from coordinator.storage._snapfile import write_snapshot
from tests.storage.helpers import ents, new_wal, reopen, segments, view

CONF = ConfState(frozenset({1, 2, 3}))


def test_a_fresh_wal_is_empty(tmp_path: Path) -> None:
    _, wal = new_wal(tmp_path / "d")
    with wal:
        assert (wal.first_index(), wal.last_index()) == (1, 0)
        assert wal.initial_state() == (HardState(), ConfState())
        assert wal.snapshot().empty
        assert wal.term(0) == 0
        assert wal.entries(1, 1) == []
        with pytest.raises(UnavailableError):
            wal.term(1)


def test_round_trip_matches_memory_storage(tmp_path: Path) -> None:
    """The same writes through DiskWal and MemoryStorage give the same reads."""
    _, wal = new_wal(tmp_path / "d")
    twin = MemoryStorage()
    batches = [
        ents(1, 4),
        [Entry(4, 1, EntryKind.CONF, CONF.encode())],
        ents(5, 9, term=2),
        ents(7, 10, term=3, tag=b"new"),  # overwrites 7 and 8
    ]
    with wal:
        for i, batch in enumerate(batches):
            hs = HardState(term=batch[-1].term, vote=1, commit=i)
            wal.save(batch, hs)
            twin.append(batch)
            twin.set_hard_state(hs)
            assert wal.entries(1, wal.last_index() + 1) == twin.entries(1, twin.last_index() + 1)
        assert (wal.first_index(), wal.last_index()) == (twin.first_index(), twin.last_index())
        assert wal.initial_state() == twin.initial_state()
        assert [wal.term(i) for i in range(10)] == [twin.term(i) for i in range(10)]
        assert wal.entries(2, 9, max_bytes=60) == twin.entries(2, 9, max_bytes=60)
        assert len(wal.entries(2, 9, max_bytes=0)) == 1, "at least one entry even past max_bytes"
        with pytest.raises(UnavailableError):
            wal.entries(1, 11)


def test_reopen_restores_the_identical_view(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, CONF)))
        wal.save(ents(1, 6), HardState(1, 2, 0))
        wal.save([Entry(6, 1, EntryKind.CONF, CONF.encode())], None)
        wal.save(ents(7, 20, term=2), HardState(2, 3, 12))
        wal.save([], HardState(3, 0, 15))
        before = view(wal)
    with reopen(data_dir) as wal:
        assert view(wal) == before
        assert wal.initial_state() == (HardState(3, 0, 15), CONF)
    with reopen(data_dir) as wal:  # and again: reopening must not change anything either
        assert view(wal) == before


def test_one_save_is_one_fsync(tmp_path: Path) -> None:
    _, wal = new_wal(tmp_path / "d")
    with wal:
        for batch_size in (1, 100):
            before = wal.metrics.fsyncs
            wal.save(ents(wal.last_index() + 1, wal.last_index() + 1 + batch_size), HardState(1))
            assert wal.metrics.fsyncs == before + 1
            assert wal.metrics.fsync_last_s > 0
        assert wal.metrics.entries_written == 101
        assert wal.metrics.saves == 2
        before = wal.metrics.fsyncs
        wal.save([], None)
        assert wal.metrics.fsyncs == before, "nothing to persist, nothing to sync"


def test_a_commit_only_hard_state_is_held_until_the_next_record_or_close(tmp_path: Path) -> None:
    """Only the commit index moved: nothing is written or synced then; the next record (the
    next entries), a roll or close carries it. Term and vote changes are always written and
    synced."""
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir, segment_bytes=2048)
    with wal:
        wal.save(ents(1, 3), HardState(1, 1, 0))
        fsyncs, written = wal.metrics.fsyncs, wal.metrics.bytes_written
        wal.save([], HardState(1, 1, 2))
        assert (wal.metrics.fsyncs, wal.metrics.bytes_written) == (fsyncs, written)
        assert wal.hard_state == HardState(1, 1, 2)
        # It rides with the next entries: a crash right after them keeps it.
        wal.save(ents(3, 4), None)
        crashed = tmp_path / "crashed"
        shutil.copytree(data_dir, crashed)
        wal.save([], HardState(2, 0, 2))  # a new term: written and synced
        assert wal.metrics.fsyncs == fsyncs + 2
        wal.save([], HardState(2, 3, 2))  # a vote: written and synced
        assert wal.metrics.fsyncs == fsyncs + 3
        # Rolling to a new segment writes the whole hard state in the new segment's header.
        lo, created = 4, wal.metrics.segments_created
        while wal.metrics.segments_created == created:
            wal.save([], HardState(2, 3, lo - 1))
            wal.save(ents(lo, lo + 5, 2), None)
            lo += 5
        wal.save([], HardState(2, 3, lo - 1))  # held: close writes it
        final = view(wal)
    with reopen(data_dir, segment_bytes=2048) as wal:
        assert view(wal) == final
        assert wal.hard_state.commit == lo - 1
    (crashed / "wal" / "LOCK").unlink(missing_ok=True)
    with reopen(crashed, segment_bytes=2048) as wal:
        assert wal.hard_state == HardState(1, 1, 2)
        assert wal.last_index() == 3


def test_overwritten_tail_is_truncated_and_stays_truncated(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 11), HardState(1, 1, 4))
        wal.save(ents(6, 8, term=2, tag=b"leader2"), HardState(2, 0, 4))
        assert wal.last_index() == 7
        expected = view(wal)
    with reopen(data_dir) as wal:
        assert view(wal) == expected
        assert [e.term for e in wal.entries(1, 8)] == [1] * 5 + [2] * 2
        with pytest.raises(UnavailableError):
            wal.term(8)


def test_overwrite_reaching_into_an_earlier_segment(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 31), HardState(1))
    with reopen(data_dir) as wal:  # new segment
        wal.save(ents(11, 16, term=2), HardState(2))
    with reopen(data_dir) as wal:
        assert wal.last_index() == 15
        assert [wal.term(i) for i in (10, 11, 15)] == [1, 2, 2]


def test_bad_batches_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), None)
        with pytest.raises(ValueError, match="gap"):
            wal.save(ents(6, 8), None)
        with pytest.raises(ValueError, match="contiguous"):
            wal.save([*ents(4, 5), *ents(6, 7)], None)
        assert wal.last_index() == 3
    with reopen(data_dir) as wal:
        assert wal.last_index() == 3


def test_segments_roll_at_segment_bytes(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    segment_bytes = 2048
    _, wal = new_wal(data_dir, segment_bytes=segment_bytes)
    with wal:
        for lo in range(1, 201, 5):
            wal.save(ents(lo, lo + 5), HardState(1, 1, lo))
        expected = view(wal)
        assert wal.metrics.segments_created > 5
    files = segments(data_dir)
    assert len(files) > 5
    seqs = []
    for path in files:
        m = re.fullmatch(r"([0-9a-f]{16})-([0-9a-f]{16})\.wal", path.name)
        assert m, path.name
        seqs.append(int(m.group(1), 16))
        # A segment may exceed the limit by at most one batch (a batch is never split).
        assert path.stat().st_size < segment_bytes + 5 * 100
    assert seqs == sorted(seqs)
    with reopen(data_dir, segment_bytes=segment_bytes) as wal:
        assert view(wal) == expected


def test_compaction_deletes_only_covered_segments(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir, segment_bytes=2048)
    with wal:
        for lo in range(1, 201, 5):
            wal.save(ents(lo, lo + 5), HardState(1, 1, lo))
        n_before = len(segments(data_dir))
        with pytest.raises(ValueError, match="newest snapshot"):
            wal.compact(10)
        wal.create_snapshot(150, CONF, b"state@150")
        deleted = wal.compact(150)
        assert deleted > 0
        assert len(segments(data_dir)) == n_before - deleted
        assert (wal.first_index(), wal.last_index()) == (151, 200)
        with pytest.raises(CompactedError):
            wal.entries(150, 152)
        expected = view(wal)
    with reopen(data_dir, segment_bytes=2048) as wal:
        assert view(wal) == expected
        assert wal.snapshot().data == b"state@150"


def test_compaction_can_keep_entries_for_lagging_followers(tmp_path: Path) -> None:
    """compact(i) below the snapshot keeps entries after i in memory; after a restart the
    log starts right after the snapshot (as if compacted to it), like the simulator's disk."""
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 51), HardState(1, 1, 50))
        wal.create_snapshot(40, CONF, b"s40")
        wal.compact(30)
        assert wal.first_index() == 31
        assert wal.entries(31, 33) == ents(31, 33)
    with reopen(data_dir) as wal:
        assert (wal.first_index(), wal.last_index()) == (41, 50)
        assert wal.term(40) == 1


def test_a_stale_tail_neither_pins_compaction_nor_comes_back(tmp_path: Path) -> None:
    """Segment A holds 1..30 (term 1); a new leader overwrote from 11 (segment B). After a
    snapshot at 20 and compact(20), A's stale 21..30 must not keep A alive, and must never
    reappear in the log: not after compaction, and not after a reopen without it."""
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 31), HardState(1))
    with reopen(data_dir) as wal:
        wal.save(ents(11, 21, term=2), HardState(2, 0, 20))
    with reopen(data_dir) as wal:
        wal.create_snapshot(20, CONF, b"s20")
    with reopen(data_dir) as wal:
        assert (wal.first_index(), wal.last_index()) == (21, 20), "stale 21..30 came back"
        assert wal.compact(20) >= 2
    with reopen(data_dir) as wal:
        assert (wal.first_index(), wal.last_index()) == (21, 20)
        assert wal.hard_state == HardState(2, 0, 20)
        wal.save(ents(21, 23, term=3), HardState(3))
    with reopen(data_dir) as wal:
        assert [wal.term(i) for i in (20, 21, 22)] == [2, 3, 3]


def test_an_incoming_snapshot_replaces_the_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 11), HardState(1, 1, 5))
        snap = Snapshot(SnapshotMeta(50, 3, CONF), b"leader's state")
        wal.save_snapshot(snap)
        assert (wal.first_index(), wal.last_index()) == (51, 50)
        assert wal.term(50) == 3
        assert wal.snapshot() == snap
        with pytest.raises(ValueError, match="older"):
            wal.save_snapshot(Snapshot(SnapshotMeta(40, 3, CONF)))
        wal.save(ents(51, 54, term=3), HardState(3, 0, 52))
        expected = view(wal)
    with reopen(data_dir) as wal:
        assert view(wal) == expected
        assert wal.initial_state()[1] == CONF
        wal.compact(50)
    with reopen(data_dir) as wal:
        assert view(wal) == expected


def test_an_incoming_snapshot_inside_the_log_still_resets_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 21), HardState(1))
        wal.save_snapshot(Snapshot(SnapshotMeta(10, 1, CONF), b"x"))
        assert wal.last_index() == 10
    with reopen(data_dir) as wal:
        assert (wal.first_index(), wal.last_index()) == (11, 10)


def test_create_snapshot_validates_like_memory_storage(tmp_path: Path) -> None:
    _, wal = new_wal(tmp_path / "d")
    with wal:
        wal.save(ents(1, 6), None)
        with pytest.raises(UnavailableError):
            wal.create_snapshot(6, CONF, b"")
        snap = wal.create_snapshot(5, CONF, b"five")
        assert snap.meta == SnapshotMeta(5, 1, CONF)
        assert wal.first_index() == 1, "the log is kept until compact"
        with pytest.raises(ValueError, match="not newer"):
            wal.create_snapshot(5, CONF, b"")


def test_entries_a_snapshot_covers_are_not_written(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(10, 2, CONF)))
        wal.save(ents(5, 13, term=2), None)
        assert (wal.first_index(), wal.last_index()) == (11, 12)
        wal.save(ents(8, 11, term=2), None)  # wholly covered: nothing changes
        assert wal.last_index() == 12
    with reopen(data_dir) as wal:
        assert (wal.first_index(), wal.last_index()) == (11, 12)


def test_the_newest_two_snapshots_are_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 31), HardState(1))
        for index in (10, 20, 30):
            wal.create_snapshot(index, CONF, b"s%d" % index)
    names = sorted(p.name for p in (data_dir / "snap").iterdir())
    assert names == [f"{1:016x}-{20:016x}.snap", f"{1:016x}-{30:016x}.snap"]
    with reopen(data_dir) as wal:
        assert wal.snapshot().data == b"s30"


def test_a_leftover_snapshot_temp_file_is_ignored_and_removed(tmp_path: Path) -> None:
    """A crash between writing `<name>.tmp` and renaming it: the temp file, even a complete
    one for a newer snapshot, is never read, and open removes it."""
    data_dir = tmp_path / "d"
    keys, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 11), HardState(1))
        wal.create_snapshot(5, CONF, b"s5")
    snap_dir = data_dir / "snap"
    newer = write_snapshot(
        snap_dir, Snapshot(SnapshotMeta(9, 1, CONF), b"s9"), keys.current_key_id, keys.data_key
    )
    newer.rename(newer.with_name(newer.name + ".tmp"))
    (snap_dir / "garbage.snap.tmp").write_bytes(b"half a snapshot")
    with reopen(data_dir) as wal:
        assert wal.snapshot().data == b"s5"
        assert wal.last_index() == 10
    assert not list(snap_dir.glob("*.tmp"))


def test_a_renamed_snapshot_without_its_mark_is_used(tmp_path: Path) -> None:
    """A crash after the snapshot's rename but before its WAL mark: the snapshot is whole
    and committed, so recovery starts from it."""
    data_dir = tmp_path / "d"
    keys, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 11), HardState(1, 1, 10))
    write_snapshot(
        data_dir / "snap",
        Snapshot(SnapshotMeta(8, 1, CONF), b"s8"),
        keys.current_key_id,
        keys.data_key,
    )
    with reopen(data_dir) as wal:
        assert (wal.first_index(), wal.last_index()) == (9, 10)
        assert wal.snapshot().data == b"s8"


def test_a_missing_snapshot_file_is_corruption(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 21), HardState(1))
        wal.create_snapshot(10, CONF, b"s10")
        wal.create_snapshot(20, CONF, b"s20")
    (data_dir / "snap" / f"{1:016x}-{20:016x}.snap").unlink()
    with pytest.raises(WalCorruptError, match="snapshot at index 20"):
        reopen(data_dir)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with pytest.raises(DataDirBusyError, match="already open"):
        reopen(data_dir)
    wal.close()
    reopen(data_dir).close()


def test_a_closed_wal_refuses_writes(tmp_path: Path) -> None:
    _, wal = new_wal(tmp_path / "d")
    wal.close()
    with pytest.raises(WalError, match="closed"):
        wal.save(ents(1, 2), None)


def test_create_and_open_refuse_the_wrong_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    keys = KeyStore.create(data_dir)
    with pytest.raises(NotInitializedError, match="no WAL"):
        DiskWal.open(keys)
    DiskWal.create(keys).close()
    with pytest.raises(AlreadyInitializedError):
        DiskWal.create(keys)


def test_an_interrupted_create_is_redone(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    keys = KeyStore.create(data_dir)
    (data_dir / "wal.tmp").mkdir()
    (data_dir / "wal.tmp" / "junk").write_bytes(b"x")
    with DiskWal.create(keys) as wal:
        wal.save(ents(1, 3), None)
    assert not (data_dir / "wal.tmp").exists()
    with reopen(data_dir) as wal:
        assert wal.last_index() == 2
