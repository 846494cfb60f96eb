"""Progress and Inflights (`coordinator/raft/_progress.py`): state rules and invariants.

Unit tests pin each transition of the PROBE/REPLICATE/SNAPSHOT machine. A property test
drives one Progress the way the leader does (send when not paused, accept or reject
answers, fall back to a snapshot, heartbeat responses) and checks the module's invariants
after every step: 0 <= match < next, and in REPLICATE every inflight index lies in
(match, next), oldest first. Inflights is compared against a plain list.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.raft import ConfState, ProgressState, Snapshot, SnapshotMeta
from coordinator.raft._progress import Inflights, Progress

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=200)

PROBE, REPLICATE, SNAPSHOT = ProgressState.PROBE, ProgressState.REPLICATE, ProgressState.SNAPSHOT


def progress(match: int = 0, next_: int = 1, capacity: int = 3) -> Progress:
    return Progress(match, next_, Inflights(capacity))


def snap(index: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index, 1, ConfState(frozenset({1}))), b"img")


# --- Inflights -----------------------------------------------------------------------------


@SETTINGS
@given(
    capacity=st.integers(0, 4),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 3)),
            st.tuples(st.just("free_to"), st.integers(-1, 4)),
            st.tuples(st.just("reset"), st.just(0)),
        ),
        max_size=30,
    ),
)
def test_inflights_match_a_plain_list(capacity: int, ops: list[tuple[str, int]]) -> None:
    inf = Inflights(capacity)
    model: list[int] = []
    last = 0
    for kind, arg in ops:
        if kind == "add":
            last += arg  # the leader sends increasing last indexes
            if len(model) >= capacity:
                with pytest.raises(AssertionError, match="inflight window overflow"):
                    inf.add(last)
            else:
                inf.add(last)
                model.append(last)
        elif kind == "free_to":
            cut = last + arg - 3
            inf.free_to(cut)
            model = [i for i in model if i > cut]
        else:
            inf.reset()
            model = []
        assert list(inf.items) == model
        assert inf.full() is (len(model) >= capacity)


def test_inflight_overflow_raises_and_keeps_the_window() -> None:
    inf = Inflights(2, deque([3, 5]))
    assert inf.full()
    with pytest.raises(AssertionError, match="inflight window overflow"):
        inf.add(7)
    assert list(inf.items) == [3, 5]
    inf.free_to(4)
    assert list(inf.items) == [5]
    assert not inf.full()


# --- transitions ---------------------------------------------------------------------------


def test_a_new_progress_probes() -> None:
    pr = progress(0, 6)
    assert pr.state is PROBE
    assert not pr.is_paused()


def test_probe_sends_one_app_then_waits() -> None:
    pr = progress(0, 6)
    pr.sent_entries(8, 3)
    assert pr.probe_sent
    assert pr.is_paused()
    assert pr.next == 6  # a probe does not move next optimistically
    pr.sent_entries(8, 0)  # an empty probe (heartbeat-driven) pauses just the same
    assert pr.is_paused()


def test_become_replicate_restarts_from_match() -> None:
    pr = progress(4, 9)
    pr.probe_sent = True
    pr.become_replicate()
    assert (pr.state, pr.next, pr.probe_sent) == (REPLICATE, 5, False)


def test_replicate_pipelines_until_the_window_is_full() -> None:
    pr = progress(4, 5, capacity=2)
    pr.become_replicate()
    pr.sent_entries(6, 2)
    assert (pr.next, list(pr.inflights.items), pr.is_paused()) == (7, [6], False)
    pr.sent_entries(6, 0)  # nothing sent: nothing in flight
    assert list(pr.inflights.items) == [6]
    pr.sent_entries(9, 3)
    assert (pr.next, list(pr.inflights.items), pr.is_paused()) == (10, [6, 9], True)
    with pytest.raises(AssertionError, match="inflight window overflow"):
        pr.sent_entries(10, 1)


def test_become_probe_from_replicate_restarts_after_match() -> None:
    pr = progress(4, 5)
    pr.become_replicate()
    pr.sent_entries(9, 5)
    pr.become_probe()
    assert (pr.state, pr.next, list(pr.inflights.items)) == (PROBE, 5, [])


def test_become_snapshot_pauses_and_keeps_the_image() -> None:
    pr = progress(2, 3)
    pr.probe_sent = True
    pr.become_snapshot(snap(10))
    assert pr.state is SNAPSHOT
    assert pr.snapshot == snap(10)
    assert (pr.probe_sent, pr.snapshot_offset, pr.snapshot_sent) == (False, 0, False)
    assert pr.is_paused()
    pr.sent_entries(20, 5)  # nothing is sent as entries while a snapshot is in flight
    assert pr.next == 3


def test_become_probe_after_a_snapshot_resumes_past_it() -> None:
    pr = progress(2, 3)
    pr.become_snapshot(snap(10))
    pr.become_probe()
    assert (pr.state, pr.next, pr.snapshot) == (PROBE, 11, None)
    pr = progress(12, 13)  # the follower is already past the snapshot
    pr.become_snapshot(snap(10))
    pr.become_probe()
    assert pr.next == 13


def test_maybe_update_moves_match_and_next() -> None:
    pr = progress(2, 3)
    pr.probe_sent = True
    assert pr.maybe_update(5)
    assert (pr.match, pr.next, pr.probe_sent) == (5, 6, False)
    pr.next = 9
    assert not pr.maybe_update(4)  # stale: match never goes back
    assert (pr.match, pr.next) == (5, 9)
    assert not pr.maybe_update(5)


def test_maybe_decr_to_in_replicate() -> None:
    pr = progress(5, 6)
    pr.become_replicate()
    pr.sent_entries(9, 4)
    assert not pr.maybe_decr_to(5, 3)  # at or below match: an answer to something settled
    assert pr.next == 10
    assert pr.maybe_decr_to(7, 3)
    assert pr.next == 6


def test_maybe_decr_to_in_probe_uses_the_hint() -> None:
    pr = progress(2, 9)
    pr.probe_sent = True
    assert not pr.maybe_decr_to(7, 4)  # not the probe we are waiting for
    assert pr.maybe_decr_to(8, 4)
    assert (pr.next, pr.probe_sent) == (5, False)
    pr = progress(2, 9)
    assert pr.maybe_decr_to(8, 0)  # a hint below match never takes next below match + 1
    assert pr.next == 3
    pr = progress(2, 9)
    assert pr.maybe_decr_to(8, 20)  # a hint above the rejected index is capped by it
    assert pr.next == 8


# --- the leader's use of a Progress, at random ------------------------------------------------


@SETTINGS
@given(
    capacity=st.integers(1, 3),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(0, 3)),
            st.tuples(st.just("accept"), st.integers(0, 12)),
            st.tuples(st.just("reject"), st.integers(0, 12)),
            st.tuples(st.just("snapshot"), st.integers(0, 12)),
            st.tuples(st.just("heartbeat_resp"), st.just(0)),
        ),
        min_size=5,
        max_size=40,
    ),
)
def test_progress_invariants_hold_under_leader_use(
    capacity: int, ops: list[tuple[str, int]]
) -> None:
    leader_last = 20
    pr = Progress(0, leader_last + 1, Inflights(capacity))
    sent_max = 0  # the highest index the follower can have heard of
    for kind, arg in ops:
        if kind == "send" and not pr.is_paused() and pr.state is not SNAPSHOT:
            count = min(arg, leader_last - pr.next + 1)
            last = pr.next - 1 + count
            pr.sent_entries(last, count)
            sent_max = max(sent_max, last)
        elif kind == "accept":
            index = min(arg, sent_max)
            if pr.maybe_update(index):
                if pr.state is PROBE:
                    pr.become_replicate()
                elif pr.state is SNAPSHOT:
                    pr.become_probe()
                    pr.become_replicate()
                else:
                    pr.inflights.free_to(index)
        elif kind == "reject":
            rejected = pr.next - 1 if arg % 2 else arg  # the probe we await, or any stale one
            if pr.maybe_decr_to(rejected, arg // 2) and pr.state is REPLICATE:
                pr.become_probe()
        elif kind == "snapshot" and pr.state is not SNAPSHOT:
            index = max(arg, pr.match)
            pr.become_snapshot(snap(index))
            sent_max = max(sent_max, index)
        elif kind == "heartbeat_resp":
            pr.probe_sent = False
            if pr.state is REPLICATE and pr.inflights.full():
                pr.inflights.items.popleft()
        assert 0 <= pr.match < pr.next, (pr.match, pr.next)
        items = list(pr.inflights.items)
        assert items == sorted(set(items))
        assert len(items) <= capacity
        if pr.state is REPLICATE:
            assert all(pr.match < i < pr.next for i in items), (pr.match, items, pr.next)
        else:
            assert items == []
        assert (pr.snapshot is not None) is (pr.state is SNAPSHOT)
