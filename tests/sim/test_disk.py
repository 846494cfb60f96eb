"""SimDisk and SimWal (`coordinator/testing/disk.py`): the simulator's crash model.

- a torn write keeps only a prefix of the batch on disk (and the hard state only if the
  whole batch made it, and then not always), raises SimCrash, and leaves the in-memory
  storage and the persist hook untouched: the node dies before it can act on the write;
- a normal write reaches disk and MemoryStorage, and the persist hook sees it first;
- `load()` rebuilds the MemoryStorage view a restarted node boots from: the same snapshot,
  hard state and entries from the snapshot on, after compaction (the live storage may keep
  a few entries below the snapshot for lagging followers; a reload need not) and after an
  installed snapshot. Checked on examples and on random write/compact/install/crash runs
  that obey Raft's rules (committed entries are never truncated, snapshots only cover
  committed entries, an installed snapshot is newer than anything committed).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.raft import ConfState, Entry, HardState, MemoryStorage, Snapshot, SnapshotMeta
from coordinator.testing.disk import SimCrash, SimDisk, SimWal

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=150)

CONF = ConfState(frozenset({1, 2, 3}))


def ents(first: int, n: int, term: int) -> list[Entry]:
    return [Entry(first + k, term, data=b"%d/%d" % (first + k, term)) for k in range(n)]


class Recorder:
    def __init__(self, storage: MemoryStorage) -> None:
        self.storage = storage
        self.calls: list[tuple[list[Entry], int]] = []

    def __call__(self, entries: Sequence[Entry]) -> None:
        # Record what storage held at that moment: the hook runs before the write.
        self.calls.append((list(entries), self.storage.last_index()))


def booted(disk: SimDisk, seed: int = 0) -> tuple[SimWal, Recorder]:
    storage = disk.load()
    rec = Recorder(storage)
    return SimWal(disk, storage, random.Random(seed), rec), rec


def view(st_: MemoryStorage) -> tuple[object, ...]:
    """What a booting node reads, from the snapshot on."""
    snap = st_.snapshot()
    last = st_.last_index()
    return (
        snap,
        st_.initial_state(),
        last,
        [st_.term(i) for i in range(snap.meta.index, last + 1)],
        st_.entries(snap.meta.index + 1, last + 1),
    )


def assert_reload_matches(wal: SimWal) -> None:
    loaded = wal.disk.load()
    assert view(loaded) == view(wal.storage)
    assert loaded.first_index() == loaded.snapshot().meta.index + 1
    assert wal.storage.first_index() <= wal.storage.snapshot().meta.index + 1


# --- writes ----------------------------------------------------------------------------------


def test_a_normal_write_reaches_disk_then_storage() -> None:
    wal, rec = booted(SimDisk())
    wal.save(ents(1, 3, 1), HardState(1, 1, 0))
    assert rec.calls == [(ents(1, 3, 1), 0)]  # the hook ran before storage had them
    assert wal.disk.entries == ents(1, 3, 1)
    assert wal.disk.hard_state == HardState(1, 1, 0)
    assert wal.storage.last_index() == 3
    assert wal.storage.hard_state == HardState(1, 1, 0)
    assert wal.disk.fsyncs == 1
    wal.save([], HardState(2, 1, 0))  # a hard-state-only write that changes the term
    assert wal.disk.hard_state == HardState(2, 1, 0)
    assert wal.disk.fsyncs == 2
    assert_reload_matches(wal)


def test_a_commit_only_write_is_not_synced_and_a_crash_loses_it() -> None:
    wal, _ = booted(SimDisk())
    wal.save(ents(1, 3, 1), HardState(1, 1, 0))
    wal.save([], HardState(1, 1, 2))  # only the commit moved: no fsync (as DiskWal)
    assert wal.disk.fsyncs == 1
    assert wal.storage.hard_state == HardState(1, 1, 2)  # the node sees it at once
    assert wal.disk.hard_state == HardState(1, 1, 0)
    assert wal.disk.load().hard_state == HardState(1, 1, 0)  # a crash now loses it
    wal.save([], HardState(1, 1, 3))
    wal.save(ents(4, 1, 1), None)  # the next fsync carries it
    assert wal.disk.hard_state == HardState(1, 1, 3)
    assert wal.disk.fsyncs == 2


def test_a_vote_is_always_synced() -> None:
    wal, _ = booted(SimDisk())
    wal.save([], HardState(3, 2, 0))
    assert wal.disk.hard_state == HardState(3, 2, 0)
    assert wal.disk.fsyncs == 1


def test_a_write_truncates_the_durable_suffix() -> None:
    wal, _ = booted(SimDisk())
    wal.save(ents(1, 5, 1), None)
    wal.save(ents(3, 1, 2), None)
    assert wal.disk.entries == ents(1, 2, 1) + ents(3, 1, 2)
    assert_reload_matches(wal)


def test_a_gap_on_disk_is_an_error() -> None:
    wal, _ = booted(SimDisk())
    wal.save(ents(1, 2, 1), None)
    with pytest.raises(AssertionError, match="disk gap: writing 5 after"):
        wal.save(ents(5, 1, 1), None)


@pytest.mark.parametrize(
    ("first", "n"), [(6, 3), (4, 4), (2, 1)], ids=["extend", "overlap", "truncate"]
)
def test_a_torn_write_keeps_only_a_prefix_and_crashes(first: int, n: int) -> None:
    old_entries, old_hs, new_hs = ents(1, 5, 1), HardState(1, 1, 2), HardState(2, 2, 3)
    new = ents(first, n, 2)
    kept_counts, hard_states = set(), set()
    for seed in range(60):
        disk = SimDisk(hard_state=old_hs, entries=list(old_entries))
        wal, rec = booted(disk, seed)
        before = view(wal.storage)
        disk.tear_next_write = True
        with pytest.raises(SimCrash, match=rf"torn write: kept (\d+) of {n} entries") as info:
            wal.save(new, new_hs)
        keep = int(info.value.args[0].split()[3])
        kept_counts.add(keep)
        hard_states.add(disk.hard_state)
        expected = old_entries if keep == 0 else old_entries[: first - 1] + new[:keep]
        assert disk.entries == expected, seed
        assert disk.hard_state == old_hs or (keep == n and disk.hard_state == new_hs)
        assert not disk.tear_next_write  # one torn write per arming
        assert disk.fsyncs == 1
        assert view(wal.storage) == before  # the node died: memory never saw it
        assert rec.calls == []  # nor did the persist hook
        reloaded = disk.load()  # what survived is a consistent log to restart from
        assert reloaded.last_index() == len(expected)
    # The sweep exercised every outcome: nothing, a proper prefix, all, with and without
    # the hard state.
    assert kept_counts == set(range(n + 1))
    assert hard_states == {old_hs, new_hs}


def test_a_torn_hard_state_only_write() -> None:
    outcomes = set()
    for seed in range(30):
        disk = SimDisk(hard_state=HardState(1, 1, 0))
        wal, _ = booted(disk, seed)
        disk.tear_next_write = True
        with pytest.raises(SimCrash, match="kept 0 of 0 entries"):
            wal.save([], HardState(2, 2, 0))
        outcomes.add(disk.hard_state)
    assert outcomes == {HardState(1, 1, 0), HardState(2, 2, 0)}


# --- compaction and snapshots ----------------------------------------------------------------


def sim_snapshot(wal: SimWal, applied: int, keep: int) -> None:
    """What the simulator does after applying (SimNode._maybe_snapshot)."""
    storage, disk = wal.storage, wal.disk
    snap = storage.create_snapshot(applied, CONF, b"image@%d" % applied)
    disk.snapshot = snap
    disk.fsyncs += 1
    keep_from = max(applied - keep, storage.first_index() - 1)
    storage.compact(keep_from)
    disk.compact(keep_from)


def test_load_after_compaction_rebuilds_the_same_view() -> None:
    wal, _ = booted(SimDisk())
    wal.save(ents(1, 10, 1), HardState(1, 1, 8))
    sim_snapshot(wal, applied=8, keep=3)
    assert wal.storage.first_index() == 6  # entries 6..8 kept for lagging followers
    assert [e.index for e in wal.disk.entries] == list(range(6, 11))
    assert_reload_matches(wal)
    wal.save(ents(11, 2, 2), HardState(2, 1, 12))
    sim_snapshot(wal, applied=12, keep=0)
    assert wal.disk.entries == []
    assert_reload_matches(wal)


def test_compacting_the_disk_past_its_snapshot_is_an_error() -> None:
    disk = SimDisk(entries=ents(1, 5, 1))
    with pytest.raises(AssertionError, match="compacting past the durable snapshot"):
        disk.compact(3)


def test_load_after_an_installed_snapshot_rebuilds_the_same_view() -> None:
    wal, _ = booted(SimDisk())
    wal.save(ents(1, 6, 1), HardState(1, 1, 4))
    snap = Snapshot(SnapshotMeta(20, 3, CONF), b"from the leader")
    wal.save_snapshot(snap)
    assert (wal.disk.snapshot, wal.disk.entries) == (snap, [])
    assert_reload_matches(wal)
    wal.save(ents(21, 2, 3), HardState(3, 2, 20))  # what the same Ready carries next
    assert_reload_matches(wal)
    assert wal.disk.load().initial_state() == (HardState(3, 2, 20), CONF)


# --- random runs -----------------------------------------------------------------------------

# write n entries at last + delta (a new leader's, so a fresh term) and maybe a hard state
# committing up to `ahead` more entries
saves = st.tuples(
    st.just("save"),
    st.sampled_from([1, 1, 1, 0, -2]),
    st.integers(0, 4),
    st.integers(0, 4),
    st.sampled_from([True, True, False]),
)
ops = st.lists(
    st.one_of(
        saves,
        saves,
        st.tuples(st.just("snapshot"), st.integers(0, 2), st.integers(0, 4)),
        st.tuples(st.just("install"), st.integers(1, 5), st.integers(0, 3)),
        st.tuples(st.just("crash"), st.integers(0, 3)),
    ),
    min_size=5,
    max_size=30,
)


@SETTINGS
@given(ops=ops, seed=st.integers(0, 2**32))
def test_reload_matches_the_live_storage_on_random_runs(
    ops: list[tuple[object, ...]], seed: int
) -> None:
    rng = random.Random(seed)
    wal, _ = booted(SimDisk(), rng.randrange(2**32))
    term = committed = 0
    for op in ops:
        storage = wal.storage
        last = storage.last_index()
        match op:
            case ("save", int(delta), int(n), int(ahead), bool(with_hs)):
                term += 1
                first = max(committed + 1, last + delta, storage.snapshot().meta.index + 1)
                first = min(first, last + 1)
                new_last = first + n - 1 if n else last
                commit = min(committed + ahead, new_last) if with_hs else committed
                wal.save(ents(first, n, term), HardState(term, 1, commit) if with_hs else None)
                committed = max(committed, commit)
            case ("snapshot", int(behind), int(keep)):
                applied = committed - behind
                if applied > storage.snapshot().meta.index:
                    sim_snapshot(wal, applied, keep)
            case ("install", int(ahead), int(n)):
                term += 1
                index = max(committed, last) + ahead
                wal.save_snapshot(Snapshot(SnapshotMeta(index, term, CONF), b"leader"))
                wal.save(ents(index + 1, n, term), HardState(term, 1, index))
                committed = index
            case ("crash", int(n)):
                term += 1
                wal.disk.tear_next_write = True
                with pytest.raises(SimCrash):
                    wal.save(ents(max(committed, last) + 1, n, term), HardState(term, 1, committed))
                wal, _ = booted(wal.disk, rng.randrange(2**32))  # restart from what survived
            case _:
                raise AssertionError(op)
        assert_reload_matches(wal)
