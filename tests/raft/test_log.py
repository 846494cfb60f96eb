"""RaftLog (`coordinator/raft/_log.py`): stable storage + unstable tail against a naive model.

The model is the log as one Python list of entries, plus committed and applied. RaftLog keeps
the same log split across a `MemoryStorage` (what the caller persisted) and an unstable tail
(what it has not), and the split moves as the caller persists Ready batches, possibly stale
ones: a batch handed out before a new leader truncated the tail is still written, and
`stable_to` must then leave the replaced entries alone. Whatever the split, the log seen
through RaftLog must equal the model after every step.

Terms are handed out fresh for every write (a new leader per write), so (index, term) names
one entry everywhere, as the Log Matching property guarantees in a real cluster.
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
    MemoryStorage,
    Snapshot,
    UnavailableError,
)
from coordinator.raft import SnapshotMeta as Meta
from coordinator.raft._log import RaftLog

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=200)


def ents(first: int, terms: list[int]) -> list[Entry]:
    return [Entry(first + k, t, data=b"%d" % (first + k)) for k, t in enumerate(terms)]


def stored_log(terms: list[int], snapshot_at: int = 0) -> tuple[MemoryStorage, RaftLog]:
    """Storage holding entries 1..len(terms), compacted through `snapshot_at`."""
    storage = MemoryStorage()
    storage.append(ents(1, terms))
    if snapshot_at:
        storage.create_snapshot(snapshot_at, ConfState(frozenset({1})), b"img")
        storage.compact(snapshot_at)
    return storage, RaftLog(storage)


# --- the naive model ---------------------------------------------------------------------


@dataclass
class Model:
    log: list[Entry] = field(default_factory=list)  # log[i - 1] is index i
    committed: int = 0
    applied: int = 0

    def last(self) -> int:
        return len(self.log)

    def term(self, index: int) -> int:
        return self.log[index - 1].term if 1 <= index <= len(self.log) else 0

    def match(self, index: int, term: int) -> bool:
        return self.term(index) == term and (term != 0 or index == 0)


def check_same(log: RaftLog, m: Model) -> None:
    assert log.last_index() == m.last()
    assert log.first_index() == 1
    assert log.last_term() == m.term(m.last())
    assert (log.committed, log.applied) == (m.committed, m.applied)
    assert log.entries_from(1) == m.log
    for i in range(m.last() + 3):
        assert log.term(i) == m.term(i), f"term({i})"
    assert log.next_committed() == m.log[m.applied : m.committed]
    # The unstable tail is exactly the model's suffix from unstable_offset.
    assert log.unstable == m.log[log.unstable_offset - 1 :]
    assert 1 <= log.unstable_offset <= m.last() + 1
    assert m.applied <= m.committed <= m.last()
    # find_conflict_by_term: the largest i <= index with a known term <= term.
    for index in range(m.last() + 2):
        for term in {0, 1, m.term(index), m.term(m.last()) + 1}:
            known = range(1, min(index, m.last()) + 1)
            want = max([i for i in known if m.term(i) <= term], default=0)
            assert log.find_conflict_by_term(index, term) == want, (index, term)


ops = st.lists(
    st.one_of(
        # Leader append at last + delta (<= 0 truncates the tail).
        st.tuples(st.just("append"), st.sampled_from([1, 1, 1, 0, -1, -3]), st.integers(1, 3)),
        # Follower APP: prev index = last + p_delta, `agree` entries copied from our log, then
        # `new` fresh ones; `bad` sends a wrong prev term; commit = last_new + c_delta.
        st.tuples(
            st.just("maybe_append"),
            st.integers(-5, 1),
            st.integers(0, 3),
            st.integers(0, 3),
            st.booleans(),
            st.integers(-3, 2),
        ),
        st.tuples(st.just("commit_to"), st.integers(-1, 4)),
        st.tuples(st.just("applied_to"), st.integers(-1, 3)),
        st.tuples(st.just("ready")),
        st.tuples(st.just("advance")),
    ),
    min_size=15,
    max_size=50,
)


@SETTINGS
@given(ops=ops)
def test_raft_log_matches_naive_model(ops: list[tuple[object, ...]]) -> None:
    storage = MemoryStorage()
    log = RaftLog(storage)
    m = Model()
    term = 0
    batch: list[Entry] | None = None  # a Ready's entries, handed out but not yet persisted
    for op in ops:
        match op:
            case ("append", int(delta), int(n)):
                term += 1
                after = max(1, m.last() + delta)
                new = ents(after, [term] * n)
                if after <= m.committed:
                    with pytest.raises(AssertionError, match="truncating committed entry"):
                        log.append(new)
                else:
                    m.log = m.log[: after - 1] + new
                    assert log.append(new) == m.last()
            case ("maybe_append", int(p_delta), int(agree), int(n_new), bool(bad), int(c_delta)):
                term += 1
                index = max(0, m.last() + p_delta)
                log_term = m.term(index) + (7 if bad else 0)
                entries = tuple(m.log[index : index + agree]) + tuple(
                    ents(index + 1 + len(m.log[index : index + agree]), [term] * n_new)
                )
                last_new = index + len(entries)
                commit = max(0, last_new + c_delta)
                if not m.match(index, log_term):
                    before = (list(m.log), m.committed)
                    assert log.maybe_append(index, log_term, commit, entries) is None
                    assert (m.log, m.committed) == before
                    continue
                conflict = next((e.index for e in entries if not m.match(e.index, e.term)), 0)
                if conflict and conflict <= m.committed:
                    with pytest.raises(AssertionError, match="conflicts with committed entry"):
                        log.maybe_append(index, log_term, commit, entries)
                    continue
                if conflict:
                    m.log = m.log[: conflict - 1] + list(entries[conflict - index - 1 :])
                m.committed = max(m.committed, min(commit, last_new))
                assert log.maybe_append(index, log_term, commit, entries) == last_new
            case ("commit_to", int(delta)):
                target = m.committed + delta
                if target > m.last() and target > m.committed:
                    with pytest.raises(AssertionError, match=f"commit {target} beyond last"):
                        log.commit_to(target)
                else:
                    m.committed = max(m.committed, target)
                    log.commit_to(target)
            case ("applied_to", int(delta)):
                target = m.applied + delta
                if target != 0 and not m.applied <= target <= m.committed:
                    with pytest.raises(AssertionError, match=f"applied {target} outside"):
                        log.applied_to(target)
                else:
                    m.applied = max(m.applied, target)
                    log.applied_to(target)
            case ("ready",):
                if batch is None and log.unstable:
                    batch = list(log.unstable)
            case ("advance",):
                if batch is not None:
                    storage.append(batch)
                    log.stable_to(batch[-1].index, batch[-1].term)
                    batch = None
            case _:
                raise AssertionError(op)
        check_same(log, m)


# --- positions and reads -------------------------------------------------------------------


def test_a_fresh_log_over_compacted_storage_starts_at_the_snapshot() -> None:
    _, log = stored_log([1, 1, 2, 2, 3], snapshot_at=3)
    assert (log.first_index(), log.last_index(), log.last_term()) == (4, 5, 3)
    assert (log.committed, log.applied) == (3, 3)
    assert log.term(3) == 2  # the snapshot's own term is still known
    assert log.term(2) == 0  # compacted: unknown
    assert log.term(6) == 0  # past the end: unknown


def test_match_term_never_matches_an_unknown_entry() -> None:
    _, log = stored_log([1, 1])
    assert log.match_term(0, 0)
    assert log.match_term(2, 1)
    assert not log.match_term(3, 0)  # term(3) is 0 because it does not exist
    assert not log.match_term(2, 2)


def test_slice_edges() -> None:
    _, log = stored_log([1, 1, 2, 2, 3], snapshot_at=2)
    log.append(ents(6, [4, 4]))  # 3..5 stable, 6..7 unstable
    assert [e.index for e in log.slice(3, 8)] == [3, 4, 5, 6, 7]
    assert log.slice(5, 5) == []
    assert log.slice(6, 4) == []
    with pytest.raises(CompactedError):
        log.slice(2, 4)
    with pytest.raises(UnavailableError):
        log.slice(6, 9)


def test_slice_respects_max_bytes_across_the_stable_unstable_boundary() -> None:
    _, log = stored_log([1, 1, 1])
    log.append(ents(4, [2, 2]))
    size = 24 + 1  # every entry here carries one byte of data
    assert [e.index for e in log.slice(1, 6, max_bytes=0)] == [1]
    assert [e.index for e in log.slice(1, 6, max_bytes=2 * size)] == [1, 2]
    assert [e.index for e in log.slice(2, 6, max_bytes=3 * size)] == [2, 3, 4]
    assert [e.index for e in log.slice(4, 6, max_bytes=0)] == [4]


@pytest.mark.parametrize(
    ("last_index", "last_term", "up_to_date"),
    [(5, 3, True), (6, 3, True), (4, 3, False), (1, 4, True), (9, 2, False)],
)
def test_is_up_to_date_compares_last_term_then_index(
    last_index: int, last_term: int, up_to_date: bool
) -> None:
    """§5.4.1: the later last term wins; with equal terms, the longer log."""
    _, log = stored_log([1, 1, 2, 3, 3])
    assert log.is_up_to_date(last_index, last_term) is up_to_date


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [(5, 5, 5), (5, 4, 4), (5, 3, 4), (5, 2, 2), (5, 1, 1), (5, 0, 0), (3, 9, 3), (0, 9, 0)],
)
def test_find_conflict_by_term_examples(index: int, term: int, expected: int) -> None:
    _, log = stored_log([1, 2, 3, 3, 5])
    assert log.find_conflict_by_term(index, term) == expected


def test_find_conflict_by_term_stops_at_the_compaction_point() -> None:
    _, log = stored_log([1, 2, 3, 3, 5], snapshot_at=3)
    assert log.find_conflict_by_term(5, 1) == 3
    assert log.find_conflict_by_term(5, 3) == 4


# --- writes: §5.3 log matching, and what must never happen ------------------------------------


def test_maybe_append_rejects_a_mismatching_prev_entry() -> None:
    """§5.3: a follower refuses entries whose predecessor it does not hold."""
    _, log = stored_log([1, 1, 2])
    assert log.maybe_append(3, 1, 3, tuple(ents(4, [3]))) is None
    assert log.maybe_append(4, 2, 3, tuple(ents(5, [3]))) is None
    assert log.last_index() == 3
    assert log.committed == 0


def test_maybe_append_keeps_agreeing_entries_and_truncates_at_the_first_conflict() -> None:
    """§5.3: delete the conflicting entry and all that follow it, append what is new."""
    _, log = stored_log([1, 1, 2, 2])
    assert log.maybe_append(1, 1, 0, (*ents(2, [1, 2]), *ents(4, [3, 3]))) == 5
    assert [e.term for e in log.entries_from(1)] == [1, 1, 2, 3, 3]
    assert log.unstable_offset == 4


def test_maybe_append_does_not_truncate_on_a_stale_shorter_append() -> None:
    _, log = stored_log([1, 1, 2, 2])
    assert log.maybe_append(1, 1, 0, tuple(ents(2, [1]))) == 2
    assert log.last_index() == 4  # entries past the message's are kept


def test_maybe_append_commits_only_what_it_knows_matches() -> None:
    """§5.3: commit = min(leader commit, index of last new entry)."""
    _, log = stored_log([1, 1, 1, 1])
    assert log.maybe_append(1, 1, 10, tuple(ents(2, [1]))) == 2
    assert log.committed == 2


def test_commit_beyond_the_last_index_raises() -> None:
    _, log = stored_log([1, 1, 1, 1, 1])
    with pytest.raises(AssertionError, match=r"commit 6 beyond last index 5"):
        log.commit_to(6)
    log.commit_to(4)
    log.commit_to(2)  # never moves backwards
    assert log.committed == 4


def test_truncating_a_committed_entry_raises() -> None:
    _, log = stored_log([1, 1, 1, 1, 1])
    log.commit_to(4)
    with pytest.raises(AssertionError, match=r"truncating committed entry 3 \(committed 4\)"):
        log.append(ents(3, [2]))
    with pytest.raises(AssertionError, match=r"entry 4 conflicts with committed entry"):
        log.maybe_append(3, 1, 4, tuple(ents(4, [2])))
    assert [e.term for e in log.entries_from(1)] == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("target", [1, 6])
def test_applied_outside_applied_committed_raises(target: int) -> None:
    _, log = stored_log([1, 1, 1, 1, 1, 1])
    log.commit_to(5)
    log.applied_to(2)
    with pytest.raises(AssertionError, match=rf"applied {target} outside \[2, committed 5\]"):
        log.applied_to(target)
    assert log.applied == 2


def test_applied_to_zero_is_a_no_op() -> None:
    _, log = stored_log([1])
    log.applied_to(0)
    assert log.applied == 0


def test_stable_to_ignores_entries_replaced_since_the_ready() -> None:
    storage, log = stored_log([1])
    log.append(ents(2, [1, 1]))
    ready = list(log.unstable)
    log.append(ents(3, [2]))  # a new leader replaced index 3 before the write finished
    storage.append(ready)
    log.stable_to(3, 1)  # index 3 is no longer the entry of term 1 that was written
    assert log.unstable == [*ents(2, [1]), *ents(3, [2])]
    assert log.unstable_offset == 2
    assert [e.term for e in log.entries_from(1)] == [1, 1, 2]


def test_append_with_a_gap_raises() -> None:
    _, log = stored_log([1, 1, 1, 1, 1])
    with pytest.raises((AssertionError, ValueError), match="gap"):
        log.append(ents(8, [2]))


# --- snapshots ----------------------------------------------------------------------------


def test_restore_replaces_the_log_until_the_snapshot_is_persisted() -> None:
    storage, log = stored_log([1, 1, 2])
    log.commit_to(2)
    log.applied_to(2)
    snap = Snapshot(Meta(9, 4, ConfState(frozenset({1, 2}))), b"img")
    log.restore(snap)
    assert (log.first_index(), log.last_index(), log.last_term()) == (10, 9, 4)
    assert log.term(9) == 4
    assert log.term(3) == 0  # the old log is gone from view
    assert (log.committed, log.applied) == (9, 2)
    assert log.next_committed() == []  # the snapshot covers them: restore, do not apply
    log.append(ents(10, [4]))
    assert log.term(10) == 4
    assert log.term(9) == 4

    log.snapshot_persisted(8)  # not this snapshot: nothing happens
    assert log.pending_snapshot is snap
    storage.apply_snapshot(snap)
    log.snapshot_persisted(9)
    assert log.pending_snapshot is None
    assert log.applied == 9
    assert (log.first_index(), log.last_index()) == (10, 10)


def test_restore_of_a_snapshot_older_than_committed_raises() -> None:
    _, log = stored_log([1, 1, 1, 1, 1])
    log.commit_to(5)
    log.applied_to(5)
    with pytest.raises(AssertionError, match="committed"):
        log.restore(Snapshot(Meta(3, 1, ConfState(frozenset({1}))), b""))
