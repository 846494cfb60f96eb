"""DiskWal against MemoryStorage, under random sequences of appends (with overwrites),
hard states, own and incoming snapshots, compaction, and restarts, with tiny segments so
rolling and segment deletion happen constantly. After every step the two must agree on
everything the Raft core can read.

The one intended difference: after a restart the WAL's log starts right after its newest
snapshot, so the model compacts to the snapshot on every reopen."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.raft import ConfState, Entry, HardState, MemoryStorage, Snapshot, SnapshotMeta
from coordinator.storage import DiskWal, KeyStore
from tests.storage.helpers import view

CONF = ConfState(frozenset({1, 2, 3}))
SEGMENT_BYTES = 600

Op = tuple[str, int, int]
ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["append", "append", "append", "hs", "snap", "compact", "install", "reopen"]
        ),
        st.integers(0, 1000),
        st.integers(1, 6),
    ),
    min_size=1,
    max_size=18,
)


def _same(wal: DiskWal, model: MemoryStorage) -> None:
    got = view(wal)
    first, last = model.first_index(), model.last_index()
    assert (got.first, got.last) == (first, last)
    assert got.entries == tuple(model.entries(first, last + 1) if last >= first else [])
    assert got.snapshot_term == model.term(first - 1)
    assert (got.hard_state, got.conf) == model.initial_state()
    assert got.snapshot == model.snapshot()


def _apply(data_dir: Path, wal: DiskWal, model: MemoryStorage, op: Op, term: list[int]) -> DiskWal:
    name, pick, n = op
    snap_index = model.snapshot().meta.index
    first, last = model.first_index(), model.last_index()
    match name:
        case "append":
            lo_min = max(first, snap_index + 1)
            lo = lo_min + pick % (last + 2 - lo_min)
            if lo <= last:
                term[0] += 1  # an overwrite comes from a newer leader
            batch = [Entry(i, term[0], data=b"%d@%d" % (i, term[0])) for i in range(lo, lo + n)]
            wal.save(batch, None)
            model.append(batch)
        case "hs":
            hs = HardState(term[0], pick % 4, min(pick, last))
            wal.save([], hs)
            model.set_hard_state(hs)
        case "snap" if last > snap_index:
            index = snap_index + 1 + pick % (last - snap_index)
            data = b"image@%d" % index
            assert wal.create_snapshot(index, CONF, data) == model.create_snapshot(
                index, CONF, data
            )
        case "compact" if snap_index >= first:
            index = first - 1 + pick % (snap_index - first + 2)
            wal.compact(index)
            model.compact(index)
        case "install":
            term[0] += 1
            snap = Snapshot(SnapshotMeta(last + pick % 5, term[0], CONF), b"from the leader")
            wal.save_snapshot(snap)
            model.apply_snapshot(snap)
        case "reopen":
            wal.close()
            wal = DiskWal.open(KeyStore.open(data_dir), segment_bytes=SEGMENT_BYTES)
            if snap_index >= first:
                model.compact(snap_index)
        case _:
            pass
    return wal


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(ops)
def test_disk_wal_behaves_like_memory_storage(steps: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "d"
        keys = KeyStore.create(data_dir)
        wal = DiskWal.create(keys, segment_bytes=SEGMENT_BYTES)
        model = MemoryStorage()
        term = [1]
        try:
            for step in [*steps, ("reopen", 0, 0)]:
                wal = _apply(data_dir, wal, model, step, term)
                _same(wal, model)
        finally:
            wal.close()
