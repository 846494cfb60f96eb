"""MemoryStorage (`coordinator/raft/storage.py`) against a naive model, plus its edges.

The model keeps the log as a plain dict {index: Entry} above a "compacted through" marker
and answers every read by looking the index up, with no offset arithmetic. Random
sequences of append (with truncation and gaps), create_snapshot, compact and apply_snapshot
drive both; after every step first_index/last_index/term/entries/snapshot must agree,
including which of CompactedError/UnavailableError/ValueError a read or write raises.

`compact` is only ever asked to compact up to the snapshot's index (its documented
precondition); compacting past it is refused, as a separate test pins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.raft import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    LogStorage,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)
from coordinator.raft.storage import entry_size, limit_size

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=100)


# --- the naive model ---------------------------------------------------------------------


@dataclass
class Model:
    compacted: int = 0
    """Every index <= compacted is gone; `compacted` itself still has a known term."""
    compacted_term: int = 0
    log: dict[int, Entry] = field(default_factory=dict)
    snapshot: Snapshot = field(default_factory=Snapshot)

    def first_index(self) -> int:
        return self.compacted + 1

    def last_index(self) -> int:
        return max(self.log, default=self.compacted)

    def term(self, index: int) -> int:
        if index < self.compacted:
            raise CompactedError(index)
        if index == self.compacted:
            return self.compacted_term
        if index not in self.log:
            raise UnavailableError(index)
        return self.log[index].term

    def entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        out: list[Entry] = []
        total = 0
        for i in range(lo, hi):
            total += len(self.log[i].data) + 24
            if out and max_bytes is not None and total > max_bytes:
                break
            out.append(self.log[i])
        return out

    def append(self, entries: list[Entry]) -> None:
        entries = [e for e in entries if e.index > self.compacted]
        if not entries:
            return
        if entries[0].index > self.last_index() + 1:
            raise ValueError("gap")
        self.log = {i: e for i, e in self.log.items() if i < entries[0].index}
        self.log.update((e.index, e) for e in entries)

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> None:
        if index <= self.snapshot.meta.index:
            raise ValueError("not newer")
        if index > self.last_index():
            raise UnavailableError(index)
        self.snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf), data)

    def compact(self, index: int) -> None:
        if index <= self.compacted:
            return
        if index > self.last_index():
            raise UnavailableError(index)
        self.compacted_term = self.term(index)
        self.log = {i: e for i, e in self.log.items() if i > index}
        self.compacted = index

    def apply_snapshot(self, snap: Snapshot) -> None:
        if snap.meta.index < self.snapshot.meta.index:
            raise ValueError("out of date")
        self.snapshot = snap
        self.compacted, self.compacted_term = snap.meta.index, snap.meta.term
        self.log = {}


def outcome(fn: object, *args: object) -> object:
    """The value, or the type of the exception raised (so two outcomes compare)."""
    assert callable(fn)
    try:
        return fn(*args)
    except (LookupError, ValueError) as e:
        return type(e)


def assert_same(st_: MemoryStorage, m: Model) -> None:
    assert st_.first_index() == m.first_index()
    assert st_.last_index() == m.last_index()
    assert st_.snapshot() == m.snapshot
    assert st_.initial_state()[1] == m.snapshot.meta.conf
    lo_min, hi_max = m.compacted - 2, m.last_index() + 2
    for i in range(lo_min, hi_max + 1):
        assert outcome(st_.term, i) == outcome(m.term, i), f"term({i})"
    for lo in range(lo_min, hi_max + 1):
        for hi in range(lo, hi_max + 1):
            assert outcome(st_.entries, lo, hi) == outcome(m.entries, lo, hi, None), (lo, hi)
        for max_bytes in (0, 30, 60):
            got = outcome(st_.entries, lo, m.last_index() + 1, max_bytes)
            assert got == outcome(m.entries, lo, m.last_index() + 1, max_bytes), (lo, max_bytes)


# --- random operation sequences ----------------------------------------------------------

confs = st.builds(
    lambda v, lr: ConfState(frozenset(v), frozenset(lr - v)),
    st.frozensets(st.integers(1, 5), min_size=1, max_size=3),
    st.frozensets(st.integers(1, 5), max_size=2),
)
# append n entries starting `delta` past the current last index (1 extends, <= 0 truncates,
# 2 leaves a gap), with data sizes that exercise max_bytes; weighted so logs grow long.
appends = st.tuples(
    st.just("append"),
    st.sampled_from([1, 1, 1, 1, 0, -1, -3, -6, 2]),
    st.lists(st.binary(max_size=12), min_size=1, max_size=4),
)
ops = st.lists(
    st.one_of(
        appends,
        appends,
        appends,
        st.tuples(st.just("create_snapshot"), st.integers(-4, 1), confs),
        st.tuples(st.just("compact"), st.integers(-3, 0)),
        st.tuples(st.just("apply_snapshot"), st.integers(-2, 4), confs),
    ),
    min_size=8,
    max_size=30,
)


@SETTINGS
@given(ops=ops)
def test_memory_storage_matches_naive_model(ops: list[tuple[object, ...]]) -> None:
    storage, model = MemoryStorage(), Model()
    term = 0
    for op in ops:
        kind = op[0]
        if kind == "append":
            _, delta, datas = op
            assert isinstance(delta, int) and isinstance(datas, list)
            term += 1  # every write is a new leader's: (index, term) names one entry
            start = max(1, model.last_index() + delta)
            batch = [Entry(start + k, term, data=d) for k, d in enumerate(datas)]
            expected = outcome(model.append, batch)
            assert outcome(storage.append, batch) == expected, op
        elif kind == "create_snapshot":
            _, delta, conf = op
            assert isinstance(delta, int) and isinstance(conf, ConfState)
            index = model.last_index() + delta
            data = b"image@%d" % index
            expected = outcome(model.create_snapshot, index, conf, data)
            got = outcome(storage.create_snapshot, index, conf, data)
            assert (got if isinstance(got, type) else None) == expected, op
        elif kind == "compact":
            _, delta = op
            assert isinstance(delta, int)
            index = max(0, model.snapshot.meta.index + delta)  # never past the snapshot
            assert outcome(storage.compact, index) == outcome(model.compact, index), op
        else:
            _, delta, conf = op
            assert isinstance(delta, int) and isinstance(conf, ConfState)
            term += 1
            index = max(0, model.last_index() + delta)
            snap = Snapshot(SnapshotMeta(index, term, conf), b"installed")
            assert outcome(storage.apply_snapshot, snap) == outcome(model.apply_snapshot, snap)
        assert_same(storage, model)


# --- examples and edges ------------------------------------------------------------------


def _storage(n: int, term: int = 1) -> MemoryStorage:
    s = MemoryStorage()
    s.append([Entry(i, term, data=b"x" * i) for i in range(1, n + 1)])
    return s


def test_memory_storage_satisfies_the_protocol() -> None:
    storage: LogStorage = MemoryStorage()  # checked by mypy/pyright; here: it runs
    assert storage.initial_state() == (HardState(), ConfState())
    assert (storage.first_index(), storage.last_index()) == (1, 0)
    assert storage.term(0) == 0
    assert storage.snapshot().empty


def test_empty_storage_edges() -> None:
    s = MemoryStorage()
    assert s.entries(1, 1) == []
    with pytest.raises(UnavailableError):
        s.term(1)
    with pytest.raises(UnavailableError):
        s.entries(1, 2)
    with pytest.raises(CompactedError):
        s.entries(0, 1)


def test_reads_at_the_compaction_edges() -> None:
    s = _storage(10)
    s.create_snapshot(4, ConfState(frozenset({1})), b"img")
    s.compact(4)
    assert (s.first_index(), s.last_index()) == (5, 10)
    assert s.term(4) == 1  # the snapshot's own index keeps its term
    with pytest.raises(CompactedError):
        s.term(3)
    with pytest.raises(CompactedError):
        s.entries(4, 6)
    assert [e.index for e in s.entries(5, 11)] == list(range(5, 11))
    with pytest.raises(UnavailableError):
        s.entries(5, 12)
    with pytest.raises(UnavailableError):
        s.term(11)


def test_entries_returns_at_least_one_entry_past_max_bytes() -> None:
    s = _storage(5)
    assert [e.index for e in s.entries(3, 6, max_bytes=0)] == [3]
    budget = entry_size(Entry(3, 1, data=b"xxx")) + entry_size(Entry(4, 1, data=b"xxxx"))
    assert [e.index for e in s.entries(3, 6, max_bytes=budget)] == [3, 4]
    assert limit_size([], 0) == []


def test_append_truncates_the_conflicting_suffix() -> None:
    s = _storage(5)
    s.append([Entry(3, 2), Entry(4, 2)])
    assert [(e.index, e.term) for e in s.entries(1, 5)] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_append_with_a_gap_raises_and_changes_nothing() -> None:
    s = _storage(3)
    with pytest.raises(ValueError, match=r"gap in log: appending index 5 after 3"):
        s.append([Entry(5, 1)])
    assert s.last_index() == 3


def test_append_below_the_snapshot_is_trimmed_or_ignored() -> None:
    s = _storage(6)
    s.create_snapshot(4, ConfState(), b"")
    s.compact(4)
    s.append([Entry(2, 1), Entry(3, 1)])  # wholly covered: ignored
    assert s.last_index() == 6
    s.append([Entry(3, 1), Entry(4, 1), Entry(5, 3)])  # the covered part is dropped
    assert (s.first_index(), s.last_index(), s.term(5)) == (5, 5, 3)


def test_create_snapshot_rejects_old_and_unknown_indexes() -> None:
    s = _storage(5)
    s.create_snapshot(3, ConfState(), b"")
    with pytest.raises(ValueError, match="snapshot at 3 is not newer than 3"):
        s.create_snapshot(3, ConfState(), b"")
    with pytest.raises(UnavailableError):
        s.create_snapshot(6, ConfState(), b"")


def test_create_snapshot_keeps_the_log_until_compact() -> None:
    s = _storage(5)
    snap = s.create_snapshot(3, ConfState(frozenset({1, 2})), b"img")
    assert snap == Snapshot(SnapshotMeta(3, 1, ConfState(frozenset({1, 2}))), b"img")
    assert s.first_index() == 1  # lagging followers can still be served
    assert s.initial_state()[1] == ConfState(frozenset({1, 2}))


def test_compact_past_the_last_index_is_unavailable() -> None:
    s = _storage(3)
    with pytest.raises(UnavailableError):
        s.compact(4)


def test_apply_snapshot_replaces_everything_and_rejects_older() -> None:
    s = _storage(5)
    conf = ConfState(frozenset({1, 2, 3}))
    s.apply_snapshot(Snapshot(SnapshotMeta(8, 4, conf), b"img"))
    assert (s.first_index(), s.last_index(), s.term(8)) == (9, 8, 4)
    assert s.initial_state()[1] == conf
    with pytest.raises(ValueError, match="snapshot out of date"):
        s.apply_snapshot(Snapshot(SnapshotMeta(7, 4, conf), b""))


def test_hard_state_round_trip() -> None:
    s = MemoryStorage()
    s.set_hard_state(HardState(term=3, vote=2, commit=1))
    assert s.hard_state == HardState(3, 2, 1)
    assert s.initial_state()[0] == HardState(3, 2, 1)


def test_compact_past_the_snapshot_raises() -> None:
    s = _storage(10)
    s.create_snapshot(4, ConfState(), b"")
    with pytest.raises(ValueError, match="snapshot"):
        s.compact(7)
