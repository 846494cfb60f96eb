"""The Raft core against the rules of the paper and the thesis, one test per rule.

Names carry the section: `§5.x` is the Raft paper (Ongaro & Ousterhout, 2014), `§3.10`,
`§4.x`, `§6.x` and `§9.6` are Ongaro's thesis (2014). Each test builds a small cluster with
the scenario harness (`tests/raft/harness.py`: real RawNodes, MemoryStorage, a scripted
network) or steps hand-made messages into one node, then asserts on `RawNode.status()`, the
Ready and its messages. Where a rule forbids something, the forbidden case is tested too.

Tests that document a bug in the core are marked `xfail(strict=True)` with the reason; each
asserts the correct behaviour, so fixing the core turns them into failures to un-mark.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest

from coordinator.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    NotLeaderError,
    ProgressState,
    ProposalDroppedError,
    RawNode,
    ReadState,
    Ready,
    Role,
    SessionTable,
    SessionVerdict,
    Snapshot,
    SnapshotMeta,
)
from tests.raft.harness import Harness

MT = MessageType
ADD, PROMOTE, REMOVE = ConfChangeType.ADD_LEARNER, ConfChangeType.PROMOTE, ConfChangeType.REMOVE

# --- helpers ---------------------------------------------------------------------------------


def cluster(n: int = 3, **options: Any) -> Harness:
    h = Harness()
    h.add_nodes(n, **options)
    return h


def elect(h: Harness, node: int = 1) -> Harness:
    h.campaign(node)
    h.stabilize()
    assert h.raw(node).role is Role.LEADER
    return h


def entries(*terms: int, start: int = 1) -> list[Entry]:
    """Entries with the given terms at consecutive indexes from `start`."""
    return [
        Entry(start + i, t, EntryKind.NORMAL, b"e%d" % (start + i)) for i, t in enumerate(terms)
    ]


def preload(
    h: Harness, node: int, log: Iterable[Entry], term: int, *, vote: int = 0, commit: int = 0
) -> None:
    """Give a node a log and hard state as if it had persisted them, then restart it."""
    h.crash(node)
    st = h.nodes[node].storage
    st.append(list(log))
    st.set_hard_state(HardState(term, vote, commit))
    h.restart(node)


def msg(mtype: MessageType, frm: int, to: int, term: int, **fields: object) -> Message:
    return Message(mtype, to=to, frm=frm, term=term, **fields)  # type: ignore[arg-type]


def step(h: Harness, m: Message) -> Ready | None:
    """Step `m` into its receiver, then handle (persist, queue, apply) the resulting Ready."""
    h.raw(m.to).step(m)
    return h.process_ready(m.to)


def sent(
    rd: Ready | None, mtype: MessageType | None = None, to: int | None = None
) -> list[Message]:
    if rd is None:
        return []
    return [
        m for m in rd.messages if (mtype is None or m.type is mtype) and (to is None or m.to == to)
    ]


def ticks_until_campaign(raw: RawNode, limit: int = 1000) -> int:
    for t in range(1, limit + 1):
        raw.tick()
        if raw.role is not Role.FOLLOWER:
            return t
    raise AssertionError("never campaigned")


def lone_node(node_id: int = 1, voters: Iterable[int] = (1, 2, 3), **options: Any) -> RawNode:
    st = MemoryStorage()
    st.apply_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset(voters)))))
    return RawNode(Config(id=node_id, **options), st)


# Elections happen only when told: no PreVote round, no leases in the way.
PLAIN: dict[str, Any] = {"pre_vote": False, "check_quorum": False}

# --- §5.1 terms ------------------------------------------------------------------------------


@pytest.mark.parametrize("mtype", [MT.APP_RESP, MT.HEARTBEAT_RESP, MT.VOTE_RESP, MT.SNAP_RESP])
def test_5_1_higher_term_turns_leader_into_follower(mtype: MessageType) -> None:
    h = elect(cluster())
    step(h, msg(mtype, 2, 1, term=5, reject=mtype is MT.VOTE_RESP))
    s = h.raw(1).status()
    assert (s.role, s.term, s.leader, s.vote) == (Role.FOLLOWER, 5, 0, 0)


def test_5_1_append_from_higher_term_leader_is_followed() -> None:
    h = elect(cluster())
    step(h, msg(MT.APP, 3, 1, term=4, index=1, log_term=1, commit=1))
    s = h.raw(1).status()
    assert (s.role, s.term, s.leader) == (Role.FOLLOWER, 4, 3)


def test_5_1_same_or_lower_term_does_not_depose_the_leader() -> None:
    h = elect(cluster())
    step(h, msg(MT.HEARTBEAT_RESP, 2, 1, term=1))
    step(h, msg(MT.APP_RESP, 2, 1, term=1, index=1))
    step(h, msg(MT.VOTE_RESP, 2, 1, term=1, reject=True))
    assert h.raw(1).role is Role.LEADER and h.raw(1).term == 1


@pytest.mark.parametrize("mtype", [MT.APP, MT.HEARTBEAT])
def test_5_1_stale_leader_is_told_the_current_term(mtype: MessageType) -> None:
    h = cluster()
    preload(h, 2, entries(1), term=3)
    rd = step(h, msg(mtype, 1, 2, term=2, index=1, log_term=1))
    (resp,) = sent(rd, MT.APP_RESP, to=1)
    assert resp.term == 3
    assert h.raw(2).term == 3 and h.raw(2).leader == 0


def test_5_1_stale_messages_are_ignored_without_prevote_or_check_quorum() -> None:
    h = cluster(**PLAIN)
    preload(h, 2, entries(1), term=3)
    for mtype in (MT.APP, MT.HEARTBEAT, MT.VOTE, MT.APP_RESP):
        rd = step(h, msg(mtype, 1, 2, term=2, index=1, log_term=1))
        assert sent(rd) == []
    assert h.raw(2).term == 3


def test_5_1_stale_prevote_is_rejected_with_the_current_term() -> None:
    h = cluster()
    preload(h, 2, entries(1), term=3)
    rd = step(h, msg(MT.PRE_VOTE, 1, 2, term=2, index=9, log_term=2))
    (resp,) = sent(rd, MT.PRE_VOTE_RESP)
    assert resp.reject and resp.term == 3


def test_fig2_term_and_vote_are_persisted_in_the_ready_that_answers() -> None:
    h = cluster(**PLAIN)
    rd = step(h, msg(MT.VOTE, 1, 2, term=1))
    assert rd is not None
    assert rd.hard_state == HardState(1, 1, 0) and rd.must_sync
    assert [(m.type, m.reject) for m in rd.messages] == [(MT.VOTE_RESP, False)]
    assert h.nodes[2].storage.hard_state == HardState(1, 1, 0)


def test_fig2_entries_are_persisted_in_the_ready_that_acknowledges_them() -> None:
    h = elect(cluster())
    h.propose(1, "x")
    h.process_ready(1)
    h.deliver(to=2)
    rd = h.process_ready(2)
    assert rd is not None
    assert [e.index for e in rd.entries] == [2]
    assert [(m.type, m.index) for m in rd.messages] == [(MT.APP_RESP, 2)]


def test_10_2_1_a_leader_sends_its_appends_before_its_own_write() -> None:
    h = elect(cluster())
    h.propose(1, "x")
    rd = h.process_ready(1)
    assert rd is not None and [e.index for e in rd.entries] == [2]
    assert [(m.type, m.to) for m in rd.early_messages] == [(MT.APP, 2), (MT.APP, 3)]
    assert rd.late_messages == ()
    h.deliver(to=2)
    follower = h.process_ready(2)
    assert follower is not None and follower.early_messages == ()  # an ack waits for its write
    assert [m.type for m in follower.late_messages] == [MT.APP_RESP]


def test_10_2_1_but_not_in_the_ready_that_changes_its_term_or_vote() -> None:
    st = MemoryStorage()
    st.apply_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1}), frozenset({2})))))
    raw = RawNode(Config(id=1, rng=random.Random(1)), st)
    raw.campaign()  # the only voter: leader at once, in the Ready that persists term 1
    rd = raw.ready()
    assert raw.role is Role.LEADER and rd.hard_state is not None and rd.hard_state.term == 1
    assert any(m.type is MT.APP and m.to == 2 for m in rd.messages)
    assert rd.early_messages == () and rd.late_messages == rd.messages


# --- §5.2 leader election --------------------------------------------------------------------


def test_5_2_one_vote_per_term() -> None:
    h = cluster(**PLAIN)
    first = step(h, msg(MT.VOTE, 1, 3, term=2))
    other = step(h, msg(MT.VOTE, 2, 3, term=2))
    again = step(h, msg(MT.VOTE, 1, 3, term=2))
    assert [m.reject for m in sent(first)] == [False]
    assert [m.reject for m in sent(other)] == [True]
    assert [m.reject for m in sent(again)] == [False], "a repeated request is granted again"
    assert h.raw(3).status().vote == 1


def test_5_2_vote_survives_a_crash() -> None:
    h = cluster(**PLAIN)
    step(h, msg(MT.VOTE, 1, 3, term=2))
    h.crash(3)
    h.restart(3)
    rd = step(h, msg(MT.VOTE, 2, 3, term=2))
    assert [m.reject for m in sent(rd)] == [True]


def test_5_2_a_new_term_gives_a_new_vote() -> None:
    h = cluster(**PLAIN)
    step(h, msg(MT.VOTE, 1, 3, term=2))
    rd = step(h, msg(MT.VOTE, 2, 3, term=3))
    assert [m.reject for m in sent(rd)] == [False]
    assert h.raw(3).status().vote == 2


def test_5_2_randomized_timeout_range() -> None:
    """A follower hearing nothing campaigns after a random [T, 2T) ticks, spread across it."""
    election = 10
    seen = set()
    for seed in range(200):
        raw = lone_node(rng=random.Random(seed), election_timeout_ticks=election)
        t = ticks_until_campaign(raw)
        assert election <= t < 2 * election, (seed, t)
        seen.add(t)
    assert len(seen) >= election // 2, f"timeouts are not spread out: {sorted(seen)}"


class _FixedRandom:
    def __init__(self, value: int) -> None:
        self.value = value
        self.calls: list[tuple[int, int]] = []

    def randrange(self, start: int, stop: int, /) -> int:
        self.calls.append((start, stop))
        return self.value


@pytest.mark.parametrize("draw", [0, 9])
def test_5_2_randomized_timeout_bounds_are_exact(draw: int) -> None:
    rng = _FixedRandom(draw)
    raw = lone_node(rng=rng, election_timeout_ticks=10)
    assert rng.calls and all(c == (0, 10) for c in rng.calls)
    assert ticks_until_campaign(raw) == 10 + draw


def test_5_2_timeout_is_redrawn_for_every_term() -> None:
    rng = _FixedRandom(3)
    raw = lone_node(rng=rng, **PLAIN)
    before = len(rng.calls)
    raw.campaign()
    raw.step(msg(MT.VOTE_RESP, 2, 1, term=1, reject=True))
    raw.step(msg(MT.VOTE_RESP, 3, 1, term=1, reject=True))
    assert raw.role is Role.FOLLOWER
    assert len(rng.calls) >= before + 2, "becoming candidate and then follower each redraw"


def test_a_lost_connection_to_the_leader_starts_an_election_at_once() -> None:
    h = elect(cluster())
    term = h.raw(1).term
    h.crash(1)
    for node in (2, 3):  # both transports saw the dead leader's connections close
        h.raw(node).report_unreachable(1)
        h.process_ready(node)
    h.stabilize()  # no ticks: the lowest-ranked follower campaigns at once and wins
    assert h.leaders() == [2] and h.raw(2).term == term + 1


def test_the_first_in_line_tries_again_a_heartbeat_later_if_ignored() -> None:
    h = elect(cluster())
    h.crash(1)
    h.raw(2).report_unreachable(1)
    h.process_ready(2)
    h.stabilize()  # 3 has not heard of the crash yet: still in lease, it ignores the PreVote
    assert h.leaders() == [] and h.raw(3).leader == 1
    h.raw(3).report_unreachable(1)  # now it has (it would campaign itself 2 ticks later)
    h.tick(2)
    h.stabilize()
    assert h.leaders() == [2]


def test_the_next_ranked_follower_campaigns_two_heartbeats_later() -> None:
    h = elect(cluster(5))
    h.crash(1)
    h.crash(2)  # the first in line is gone too
    h.raw(3).report_unreachable(1)
    assert h.raw(3).role is Role.FOLLOWER and h.raw(3).leader == 0
    assert ticks_until_campaign(h.raw(3)) == 2


def test_a_false_alarm_does_not_depose_a_live_leader() -> None:
    h = elect(cluster())
    term = h.raw(1).term
    h.raw(2).report_unreachable(1)  # only this link broke; 3 still hears the leader
    h.stabilize()
    assert h.leaders() == [1] and h.raw(1).term == term
    h.tick_all(1)  # the next heartbeat gives 2 its leader back
    h.stabilize()
    assert h.raw(2).leader == 1 and h.raw(2).role is Role.FOLLOWER


@pytest.mark.parametrize("option", ["pre_vote", "check_quorum"])
def test_the_hint_is_ignored_without_prevote_and_check_quorum(option: str) -> None:
    h = elect(cluster(**{option: False}))
    h.raw(2).report_unreachable(1)
    assert h.raw(2).leader == 1 and h.raw(2).role is Role.FOLLOWER


def test_a_hint_about_another_peer_changes_nothing() -> None:
    h = elect(cluster())
    h.raw(2).report_unreachable(3)
    h.raw(1).report_unreachable(2)  # a leader's hint about a follower
    assert h.raw(2).leader == 1 and h.leaders() == [1]


def test_5_2_follower_that_hears_the_leader_never_campaigns() -> None:
    h = elect(cluster())
    for _ in range(100):
        h.tick(1)
        h.tick(2)
        h.tick(3)
        h.stabilize()
    assert [h.raw(n).role for n in (1, 2, 3)] == [Role.LEADER, Role.FOLLOWER, Role.FOLLOWER]
    assert h.raw(1).term == 1


def test_5_2_candidate_wins_with_a_majority_and_not_before() -> None:
    h = cluster(5, **PLAIN)
    h.campaign(1)
    h.process_ready(1)
    assert len(h.take(mtype=MT.VOTE)) == 4
    step(h, msg(MT.VOTE_RESP, 2, 1, term=1))
    assert h.raw(1).role is Role.CANDIDATE
    step(h, msg(MT.VOTE_RESP, 3, 1, term=1, reject=True))
    assert h.raw(1).role is Role.CANDIDATE
    step(h, msg(MT.VOTE_RESP, 4, 1, term=1))
    assert h.raw(1).role is Role.LEADER


def test_5_2_candidate_loses_once_a_majority_rejects() -> None:
    h = cluster(5, **PLAIN)
    h.campaign(1)
    h.process_ready(1)
    for n in (2, 3):
        step(h, msg(MT.VOTE_RESP, n, 1, term=1, reject=True))
    assert h.raw(1).role is Role.CANDIDATE
    step(h, msg(MT.VOTE_RESP, 4, 1, term=1, reject=True))
    assert h.raw(1).role is Role.FOLLOWER and h.raw(1).term == 1


def test_5_2_duplicate_votes_are_counted_once() -> None:
    h = cluster(5, **PLAIN)
    h.campaign(1)
    for _ in range(3):
        step(h, msg(MT.VOTE_RESP, 2, 1, term=1))
    assert h.raw(1).role is Role.CANDIDATE


def test_5_2_candidate_yields_to_a_leader_of_its_term() -> None:
    h = cluster(**PLAIN)
    h.campaign(1)
    step(h, msg(MT.HEARTBEAT, 2, 1, term=1))
    s = h.raw(1).status()
    assert (s.role, s.term, s.leader) == (Role.FOLLOWER, 1, 2)


def test_5_2_candidate_ignores_a_leader_of_an_older_term() -> None:
    h = cluster(**PLAIN)
    h.campaign(1)
    h.campaign(1)
    assert h.raw(1).term == 2
    step(h, msg(MT.APP, 2, 1, term=1))
    assert h.raw(1).role is Role.CANDIDATE


def test_5_2_single_voter_elects_itself_and_commits_alone() -> None:
    h = cluster(1)
    h.campaign(1)
    assert h.raw(1).role is Role.LEADER
    h.propose(1, "x")
    rd = h.process_ready(1)
    assert rd is not None and [e.data for e in rd.committed_entries] == [b"", b"x"]


def test_5_2_learners_and_strangers_never_campaign() -> None:
    h = cluster(3, voters=[1, 2], learners=[3])
    h.add_nodes(1, voters=[])
    h.tick(3, 100)
    h.tick(4, 100)
    assert h.raw(3).role is Role.FOLLOWER and h.raw(3).term == 0
    assert h.raw(4).role is Role.FOLLOWER and h.raw(4).term == 0
    h.campaign(3)
    assert h.raw(3).role is Role.FOLLOWER


def test_5_2_leader_heartbeats_every_heartbeat_interval() -> None:
    h = elect(cluster(heartbeat_ticks=3))
    beats = []
    for t in range(1, 10):
        h.tick(1)
        rd = h.process_ready(1)
        if sent(rd, MT.HEARTBEAT):
            beats.append(t)
    assert beats == [3, 6, 9]


# --- §5.3 log replication --------------------------------------------------------------------


def test_5_3_follower_rejects_app_on_log_mismatch() -> None:
    h = cluster(**PLAIN)
    preload(h, 2, entries(1, 1, 2), term=2)
    missing = step(
        h, msg(MT.APP, 1, 2, term=3, index=5, log_term=3, entries=tuple(entries(3, start=6)))
    )
    wrong_term = step(
        h, msg(MT.APP, 1, 2, term=3, index=3, log_term=1, entries=tuple(entries(3, start=4)))
    )
    (r1,) = sent(missing, MT.APP_RESP)
    (r2,) = sent(wrong_term, MT.APP_RESP)
    # The hint: the last index that could still match, and its term, to skip whole terms.
    assert r1.reject and r1.index == 5 and (r1.hint_index, r1.log_term) == (3, 2)
    assert r2.reject and r2.index == 3 and (r2.hint_index, r2.log_term) == (2, 1)
    assert h.raw(2).status().last_index == 3, "nothing appended"


def test_5_3_follower_accepts_and_appends_when_prev_matches() -> None:
    h = cluster(**PLAIN)
    preload(h, 2, entries(1, 1), term=1)
    rd = step(h, msg(MT.APP, 1, 2, term=1, index=2, log_term=1, entries=tuple(entries(1, start=3))))
    (r,) = sent(rd, MT.APP_RESP)
    assert not r.reject and r.index == 3
    assert h.raw(2).status().last_index == 3


def test_5_3_conflicting_entries_truncated() -> None:
    h = cluster(**PLAIN)
    preload(h, 2, entries(1, 1, 2, 2, 2), term=2)
    rd = step(h, msg(MT.APP, 1, 2, term=3, index=2, log_term=1, entries=tuple(entries(3, start=3))))
    assert rd is not None and [(e.index, e.term) for e in rd.entries] == [(3, 3)]
    st = h.nodes[2].storage
    assert [st.term(i) for i in range(1, st.last_index() + 1)] == [1, 1, 3]


def test_5_3_delayed_app_does_not_truncate_newer_entries() -> None:
    h = cluster(**PLAIN)
    preload(h, 2, entries(1, 1, 1, 1), term=1)
    rd = step(h, msg(MT.APP, 1, 2, term=1, index=1, log_term=1, entries=tuple(entries(1, start=2))))
    (r,) = sent(rd, MT.APP_RESP)
    assert not r.reject and r.index == 2, "acknowledges only what the message proved"
    assert h.raw(2).status().last_index == 4


def test_5_3_follower_commit_is_capped_by_what_it_verified() -> None:
    h = cluster(**PLAIN)
    preload(h, 2, entries(1, 1, 1, 1, 1), term=1)
    step(
        h,
        msg(
            MT.APP, 1, 2, term=1, index=1, log_term=1, entries=tuple(entries(1, start=2)), commit=5
        ),
    )
    assert h.raw(2).status().commit == 2, "entries 3..5 were not checked against the leader"
    step(h, msg(MT.HEARTBEAT, 1, 2, term=1, commit=4))
    assert h.raw(2).status().commit == 4


def test_5_3_app_below_commit_is_answered_with_the_commit_index() -> None:
    h = cluster(**PLAIN)
    preload(h, 2, entries(1, 1, 1), term=1, commit=3)
    rd = step(h, msg(MT.APP, 1, 2, term=1, index=1, log_term=1, entries=tuple(entries(1, start=2))))
    (r,) = sent(rd, MT.APP_RESP)
    assert not r.reject and r.index == 3


def test_5_3_fast_backtracking_needs_one_rejection_per_conflicting_term() -> None:
    """Follower: 1 1 | 2 2 2 2 2 2 (stale). Leader of term 4: 1 1 | 3 3 3 | 4 (no-op)."""
    h = cluster(**PLAIN)
    preload(h, 1, entries(1, 1, 3, 3, 3), term=3)
    preload(h, 2, entries(1, 1, 3, 3, 3), term=3)
    preload(h, 3, entries(1, 1, 2, 2, 2, 2, 2, 2), term=3)
    h.campaign(1)
    h.stabilize([1, 2])
    h.take(to=3)
    assert h.raw(1).role is Role.LEADER
    h.tick(1)
    h.stabilize()
    rejections = [
        ln for ln in h.out if "APP_RESP" in ln and "REJECT" in ln and ln.startswith("    3->1")
    ]
    assert len(rejections) == 1, rejections
    st = h.nodes[3].storage
    assert [st.term(i) for i in range(1, st.last_index() + 1)] == [1, 1, 3, 3, 3, 4]


def test_5_3_pipelining_respects_the_inflight_window() -> None:
    h = elect(cluster(max_inflight_msgs=2))
    for d in "abcd":
        h.propose(1, d)
    rd = h.process_ready(1)
    assert [m.entries[0].data for m in sent(rd, MT.APP, to=2)] == [b"a", b"b"]
    assert h.raw(1).status().peers[2].state is ProgressState.REPLICATE
    h.stabilize()
    assert h.raw(1).status().commit == 5
    assert h.nodes[2].fsm == ["a", "b", "c", "d"]


def test_5_3_leader_never_overwrites_its_own_log() -> None:
    h = elect(cluster(**PLAIN))
    h.propose(1, "x")
    h.process_ready(1)
    h.take()
    step(h, msg(MT.APP_RESP, 2, 1, term=1, index=2, reject=True, hint_index=0, log_term=0))
    assert h.raw(1).status().last_index == 2 and h.raw(1).role is Role.LEADER


# --- §5.4 safety ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cand_index", "cand_term", "granted"),
    [
        (5, 1, False),  # longer, but last term older
        (2, 2, False),  # same last term, shorter
        (3, 2, True),  # identical
        (4, 2, True),  # same last term, longer
        (1, 3, True),  # shorter, but last term newer
    ],
)
@pytest.mark.parametrize("mtype", [MT.VOTE, MT.PRE_VOTE])
def test_5_4_1_vote_denied_to_less_up_to_date_log(
    mtype: MessageType, cand_index: int, cand_term: int, granted: bool
) -> None:
    h = cluster(**PLAIN)
    preload(h, 2, entries(1, 2, 2), term=2)
    rd = step(h, msg(mtype, 1, 2, term=3, index=cand_index, log_term=cand_term))
    (r,) = sent(rd)
    assert r.reject is not granted
    assert h.raw(2).status().vote == (1 if granted and mtype is MT.VOTE else 0)


def test_5_4_2_leader_does_not_commit_prior_term_entry_by_counting() -> None:
    """Figure 8 in miniature: node 1 leads term 3 holding x (term 1) at index 2; node 3 lacks
    it, node 2 goes silent after voting. One entry per APP (max_msg_bytes=1)."""
    h = cluster(max_msg_bytes=1, **PLAIN)
    preload(h, 1, entries(1, 1), term=2, commit=1)
    preload(h, 2, entries(1, 1), term=2, commit=1)
    preload(h, 3, entries(1), term=2, commit=1)
    h.campaign(1)
    h.process_ready(1)
    h.deliver(to=2)
    h.process_ready(2)
    h.deliver(to=1)  # node 1 leads term 3 with node 2's vote
    h.process_ready(1)
    h.take(to=2)  # node 2 hears nothing more; node 3 catches up one entry at a time
    h.take(to=3, mtype=MT.VOTE)
    h.deliver(to=3)
    h.process_ready(3)
    h.deliver(to=1)
    h.process_ready(1)
    h.deliver(to=3, mtype=MT.APP)
    h.process_ready(3)
    h.deliver(to=1)
    s = h.raw(1).status()
    assert s.peers[3].match == 2 and s.role is Role.LEADER and s.term == 3
    assert s.commit == 1, "x (term 1) is on nodes 1 and 3, a majority, but not of this term"
    # Once this term's no-op reaches node 3, both commit together.
    h.process_ready(1)
    h.deliver(to=3, mtype=MT.APP)
    h.process_ready(3)
    h.deliver(to=1)
    assert h.raw(1).status().commit == 3


def test_5_4_3_leader_completeness_committed_entries_survive_leader_change() -> None:
    h = elect(cluster())
    h.propose(1, "x")
    h.stabilize()
    h.crash(1)
    h.tick_all(11)
    h.stabilize([2, 3])
    (leader,) = h.leaders()
    h.propose(leader, "y")
    h.stabilize([2, 3])
    assert h.nodes[leader].fsm == ["x", "y"]


# --- §5.5, Fig. 2 -------------------------------------------------------------------------


def test_5_5_restart_resumes_from_persisted_state() -> None:
    h = elect(cluster())
    h.propose(1, "x")
    h.stabilize()
    h.crash(2)
    h.restart(2)
    s = h.raw(2).status()
    assert (s.term, s.vote, s.commit, s.applied, s.last_index) == (1, 1, 2, 0, 2)
    rd = h.process_ready(2)
    assert rd is not None and [e.index for e in rd.committed_entries] == [1, 2]
    assert h.nodes[2].fsm == ["x"]


def test_5_5_restart_does_not_reapply_what_the_snapshot_holds() -> None:
    h = elect(cluster(1))
    for d in "abcd":
        h.propose(1, d)
    h.stabilize()
    h.compact(1, 3)  # snapshot at the applied index 5; entries 4 and 5 kept for followers
    st = h.nodes[1].storage
    assert (st.first_index(), st.snapshot().meta.index) == (4, 5)
    h.crash(1)
    h.restart(1)  # the state machine restarts from the snapshot: [a b c d], applied 5
    assert h.raw(1).status().applied >= 5
    rd = h.raw(1).ready()
    assert [e.index for e in rd.committed_entries if e.index <= 5] == []


def test_5_5_unpersisted_proposal_is_lost_in_a_crash() -> None:
    h = elect(cluster())
    h.propose(1, "x")
    h.crash(1)
    h.restart(1)
    assert h.raw(1).status().last_index == 1


# --- §6.2 CheckQuorum -----------------------------------------------------------------------


def test_6_2_check_quorum_leader_steps_down_without_quorum() -> None:
    h = elect(cluster())
    h.partition = [frozenset({1}), frozenset({2, 3})]
    for _ in range(20):
        h.tick(1)
        h.stabilize([1])
        h.deliver(drop=True)
    assert h.raw(1).role is Role.FOLLOWER and h.raw(1).term == 1


def test_6_2_leader_with_a_quorum_stays() -> None:
    h = elect(cluster())
    h.crash(3)  # one follower down still leaves a quorum
    for _ in range(50):
        h.tick(1)
        h.stabilize()
    assert h.raw(1).role is Role.LEADER


def test_6_2_without_check_quorum_an_isolated_leader_stays() -> None:
    h = elect(cluster(check_quorum=False))
    h.partition = [frozenset({1}), frozenset({2, 3})]
    for _ in range(50):
        h.tick(1)
        h.stabilize([1])
        h.deliver(drop=True)
    assert h.raw(1).role is Role.LEADER


# --- §6.3 client sessions --------------------------------------------------------------------


def test_6_3_new_then_duplicate_answered_from_cache() -> None:
    t = SessionTable()
    assert t.check(7, 1).verdict is SessionVerdict.NEW
    t.record(7, 1, b"ok-1", index=10)
    dup = t.check(7, 1)
    assert (dup.verdict, dup.response) == (SessionVerdict.DUPLICATE, b"ok-1")
    assert t.check(7, 2).verdict is SessionVerdict.NEW
    assert t.check(8, 1).verdict is SessionVerdict.NEW, "sessions are per client"


def test_6_3_stale_sequence_ignored() -> None:
    t = SessionTable()
    t.record(7, 5, b"r5", index=10)
    stale = t.check(7, 4)
    assert (stale.verdict, stale.response) == (SessionVerdict.STALE, b"")


def test_6_3_eviction_by_index_oldest_first() -> None:
    t = SessionTable(max_sessions=2)
    t.record(1, 1, b"a", index=1)
    t.record(2, 1, b"b", index=2)
    t.record(1, 2, b"c", index=3)  # client 1 is now the most recent
    t.record(3, 1, b"d", index=4)
    assert len(t) == 2
    assert t.check(2, 1).verdict is SessionVerdict.NEW, "client 2, idle longest, was evicted"
    assert t.check(1, 2).verdict is SessionVerdict.DUPLICATE
    assert t.check(3, 1).verdict is SessionVerdict.DUPLICATE


def test_6_3_encode_decode_round_trip() -> None:
    t = SessionTable(max_sessions=3)
    for cid, seq, resp, idx in [(5, 1, b"", 1), (9, 4, b"\x00\xff", 2), (5, 2, b"r" * 300, 3)]:
        t.record(cid, seq, resp, index=idx)
    data = t.encode()
    u = SessionTable.decode(data, max_sessions=3)
    assert u.encode() == data and len(u) == 2
    assert u.check(5, 2).response == b"r" * 300 and u.check(9, 4).response == b"\x00\xff"
    # Recency order survives: the next insert evicts the same session on both.
    for table in (t, u):
        table.record(11, 1, b"", index=4)
        table.record(12, 1, b"", index=5)
    assert t.encode() == u.encode()
    assert u.check(9, 4).verdict is SessionVerdict.NEW
    assert SessionTable.decode(SessionTable().encode()).encode() == SessionTable().encode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "version"),
        (b"\x02\x00\x00\x00\x00", "version"),
        (b"\x01\x00\x00\x00\x00junk", "trailing"),
    ],
)
def test_6_3_decode_rejects_bad_input(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SessionTable.decode(data)


@pytest.mark.parametrize("cut", [1, 4, 10, 32])
def test_6_3_decode_rejects_truncated_input_with_value_error(cut: int) -> None:
    t = SessionTable()
    t.record(1, 1, b"resp", index=1)
    with pytest.raises(ValueError):
        SessionTable.decode(t.encode()[:cut])


def test_6_3_decode_keeps_the_size_invariant() -> None:
    t = SessionTable(max_sessions=3)
    for cid in (1, 2, 3):
        t.record(cid, 1, b"", index=cid)
    assert len(SessionTable.decode(t.encode(), max_sessions=2)) <= 2


def test_6_3_max_sessions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SessionTable(max_sessions=0)


# --- §6.4 ReadIndex ------------------------------------------------------------------------


def test_6_4_read_index_waits_for_heartbeat_quorum() -> None:
    h = elect(cluster(5))
    h.propose(1, "x")
    h.stabilize()
    h.read_index(1, 42)
    rd = h.process_ready(1)
    beats = sent(rd, MT.HEARTBEAT)
    assert len(beats) == 4 and len({m.context for m in beats}) == 1
    ctx = beats[0].context
    h.take()
    rd = step(h, msg(MT.HEARTBEAT_RESP, 2, 1, term=1, context=ctx))
    assert rd is None or rd.read_states == (), "leader + 1 of 5 is no quorum"
    rd = step(h, msg(MT.HEARTBEAT_RESP, 3, 1, term=1, context=ctx))
    assert rd is not None and rd.read_states == (ReadState(2, 42),)
    rd = step(h, msg(MT.HEARTBEAT_RESP, 4, 1, term=1, context=ctx))
    assert rd is None or rd.read_states == (), "answered once"


def test_6_4_acks_of_older_heartbeats_do_not_confirm_a_read() -> None:
    h = elect(cluster())
    h.read_index(1, 1)
    h.stabilize()  # read 1 confirmed with sequence 1
    h.read_index(1, 2)
    h.take()
    rd = step(h, msg(MT.HEARTBEAT_RESP, 2, 1, term=1, context=1))
    assert rd is None or rd.read_states == ()
    rd = step(h, msg(MT.HEARTBEAT_RESP, 2, 1, term=1, context=2))
    assert rd is not None and rd.read_states == (ReadState(1, 2),)


def test_6_4_new_leader_defers_reads_until_its_first_commit() -> None:
    h = cluster(**PLAIN)
    h.campaign(1)
    h.process_ready(1)
    h.deliver(to=2)
    h.process_ready(2)
    h.deliver(to=1)
    assert h.raw(1).role is Role.LEADER and h.raw(1).status().commit == 0
    h.read_index(1, 9)
    rd = h.process_ready(1)
    assert sent(rd, MT.HEARTBEAT) == [] and rd is not None and rd.read_states == ()
    h.stabilize()
    assert ReadState(1, 9) in _all_read_states(h, 1)


def _all_read_states(h: Harness, node: int) -> list[ReadState]:
    """Read states in the transcript lines printed for `node`'s Readys."""
    out, current = [], None
    for ln in h.out:
        if ln.startswith("> "):
            current = int(ln.split()[1])
        elif current == node and ln.startswith("  read-state: "):
            ctx, idx = (int(part.split("=")[1]) for part in ln.split()[1:])
            out.append(ReadState(idx, ctx))
    return out


def test_6_4_follower_read_is_forwarded_and_answered() -> None:
    h = elect(cluster())
    h.read_index(2, 5)
    rd = h.process_ready(2)
    assert [(m.type, m.to, m.context) for m in sent(rd)] == [(MT.READ_INDEX, 1, 5)]
    h.out = []
    h.stabilize()
    assert _all_read_states(h, 2) == [ReadState(1, 5)]
    assert _all_read_states(h, 1) == []


def test_6_4_single_voter_serves_reads_at_once() -> None:
    h = elect(cluster(1))
    h.process_ready(1)
    h.read_index(1, 3)
    rd = h.process_ready(1)
    assert rd is not None and rd.read_states == (ReadState(1, 3),) and rd.messages == ()


def test_6_4_read_without_a_known_leader_is_refused() -> None:
    raw = lone_node(rng=random.Random(1))
    with pytest.raises(NotLeaderError):
        raw.read_index(1)


def test_6_4_deposed_leader_never_answers_a_pending_read() -> None:
    h = elect(cluster())
    h.read_index(1, 8)
    h.process_ready(1)
    h.take()
    h.out = []
    step(h, msg(MT.APP_RESP, 2, 1, term=2))
    step(h, msg(MT.HEARTBEAT_RESP, 3, 1, term=2, context=1))
    h.stabilize()
    assert _all_read_states(h, 1) == []


# --- §9.6 PreVote and leader stickiness ------------------------------------------------------


def test_9_6_prevote_does_not_bump_term() -> None:
    h = cluster()
    h.campaign(1)
    rd = h.process_ready(1)
    s = h.raw(1).status()
    assert (s.role, s.term, s.vote) == (Role.PRE_CANDIDATE, 0, 0)
    assert rd is not None and rd.hard_state is None
    assert {(m.type, m.term) for m in sent(rd)} == {(MT.PRE_VOTE, 1)}
    rd2 = step(h, msg(MT.PRE_VOTE, 1, 2, term=1))
    assert [(m.type, m.term, m.reject) for m in sent(rd2)] == [(MT.PRE_VOTE_RESP, 1, False)]
    s2 = h.raw(2).status()
    assert (s2.term, s2.vote) == (0, 0) and rd2 is not None and rd2.hard_state is None


def test_9_6_prevote_lost_leaves_term_unchanged() -> None:
    h = cluster()
    preload(h, 2, entries(1, 1), term=1)
    preload(h, 3, entries(1, 1), term=1)
    preload(h, 1, entries(1), term=1)
    h.campaign(1)
    h.stabilize()
    s = h.raw(1).status()
    assert (s.role, s.term) == (Role.FOLLOWER, 1)
    assert h.raw(2).term == 1 and h.raw(3).term == 1


def test_9_6_prevote_won_starts_the_real_election() -> None:
    h = cluster()
    h.campaign(1)
    h.process_ready(1)
    step(h, msg(MT.PRE_VOTE_RESP, 2, 1, term=1))
    s = h.raw(1).status()
    assert (s.role, s.term, s.vote) == (Role.CANDIDATE, 1, 1)


def test_9_6_rejected_prevote_from_a_higher_term_makes_a_follower() -> None:
    h = cluster()
    h.campaign(1)
    step(h, msg(MT.PRE_VOTE_RESP, 2, 1, term=7, reject=True))
    s = h.raw(1).status()
    assert (s.role, s.term) == (Role.FOLLOWER, 7)


@pytest.mark.parametrize("mtype", [MT.VOTE, MT.PRE_VOTE])
def test_9_6_follower_that_hears_the_leader_ignores_vote_requests(mtype: MessageType) -> None:
    h = elect(cluster())
    rd = step(h, msg(mtype, 3, 2, term=5, index=99, log_term=9))
    assert sent(rd) == [] and h.raw(2).term == 1 and h.raw(2).leader == 1


@pytest.mark.parametrize("mtype", [MT.VOTE, MT.PRE_VOTE])
def test_9_6_follower_out_of_touch_grants_vote_requests(mtype: MessageType) -> None:
    h = elect(cluster())
    h.tick(2, 10)  # a whole election timeout without hearing the leader
    rd = step(h, msg(mtype, 3, 2, term=5, index=99, log_term=9))
    assert [(m.type.name, m.reject) for m in sent(rd, to=3)] == [(f"{mtype.name}_RESP", False)]


def test_9_6_stickiness_needs_check_quorum() -> None:
    h = elect(cluster(check_quorum=False))
    step(h, msg(MT.VOTE, 3, 2, term=5, index=99, log_term=9))
    assert h.raw(2).term == 5 and h.raw(2).status().vote == 3


def test_9_6_partitioned_node_rejoins_without_disruption() -> None:
    h = elect(cluster())
    h.partition = [frozenset({1, 2}), frozenset({3})]
    for _ in range(60):
        h.tick(3)
    h.stabilize()
    assert h.raw(3).term == 1
    h.partition = None
    h.tick(1)
    h.stabilize()
    assert h.raw(1).role is Role.LEADER and h.raw(1).term == 1 and h.raw(3).leader == 1


# --- thesis §4: membership changes -----------------------------------------------------------


def test_4_1_one_pending_change_at_a_time() -> None:
    h = elect(cluster())
    h.propose_conf_change(1, ADD, 4)
    with pytest.raises(ProposalDroppedError, match="still uncommitted"):
        h.raw(1).propose_conf_change(ConfChange(ADD, 5))
    h.stabilize()
    assert h.raw(1).propose_conf_change(ConfChange(ADD, 5))[0] == 3


def test_4_1_no_change_before_the_first_commit_in_term() -> None:
    h = cluster(**PLAIN)
    h.campaign(1)
    h.process_ready(1)
    h.deliver(to=2)
    h.process_ready(2)
    h.deliver(to=1)
    assert h.raw(1).role is Role.LEADER
    with pytest.raises(ProposalDroppedError, match="not committed an entry in its term"):
        h.raw(1).propose_conf_change(ConfChange(ADD, 4))
    h.stabilize()
    h.raw(1).propose_conf_change(ConfChange(ADD, 4))


def test_4_1_last_voter_cannot_be_removed() -> None:
    h = elect(cluster(1))
    h.process_ready(1)
    with pytest.raises(ConfChangeError, match="last voter"):
        h.raw(1).propose_conf_change(ConfChange(REMOVE, 1))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (ConfChange(ADD, 2), "already a voter"),
        (ConfChange(PROMOTE, 2), "already a voter"),
        (ConfChange(PROMOTE, 9), "not a learner"),
        (ConfChange(REMOVE, 9), "not a member"),
        (ConfChange(ADD, 0), "positive"),
    ],
)
def test_4_1_invalid_changes_are_refused(change: ConfChange, match: str) -> None:
    h = elect(cluster())
    with pytest.raises(ConfChangeError, match=match):
        h.raw(1).propose_conf_change(change)
    assert h.raw(1).status().last_index == 1, "nothing appended"


def test_4_1_only_the_leader_proposes_changes() -> None:
    h = elect(cluster())
    with pytest.raises(NotLeaderError):
        h.raw(2).propose_conf_change(ConfChange(ADD, 4))


def test_4_1_configuration_is_used_when_appended_and_rolled_back_when_truncated() -> None:
    h = cluster(**PLAIN)
    conf_entry = Entry(2, 1, EntryKind.CONF, ConfState(frozenset({1, 2})).encode())
    preload(h, 3, [Entry(1, 1)], term=1)
    step(h, msg(MT.APP, 1, 3, term=1, index=1, log_term=1, entries=(conf_entry,)))
    assert h.raw(3).conf.voters == {1, 2}, "in force uncommitted"
    step(h, msg(MT.APP, 2, 3, term=2, index=1, log_term=1, entries=tuple(entries(2, start=2))))
    assert h.raw(3).conf.voters == {1, 2, 3}, "the entry was overwritten, so is the config"


def test_4_2_1_learner_acks_do_not_count_for_commit() -> None:
    h = elect(cluster(4, voters=[1, 2, 3], learners=[4]))
    h.partition = [frozenset({1, 4}), frozenset({2}), frozenset({3})]
    h.propose(1, "x")
    h.stabilize()
    s = h.raw(1).status()
    assert s.peers[4].match == 2 and s.commit == 1


def test_4_2_1_promotion_refused_while_learner_lags() -> None:
    h = elect(cluster())
    h.propose_conf_change(1, ADD, 4)
    h.add_nodes(1, voters=[])
    h.partition = [frozenset({1, 2, 3}), frozenset({4})]
    h.stabilize()
    with pytest.raises(ConfChangeError, match="not caught up"):
        h.raw(1).propose_conf_change(ConfChange(PROMOTE, 4))
    h.partition = None
    h.tick(1)
    h.stabilize()
    h.raw(1).propose_conf_change(ConfChange(PROMOTE, 4))
    h.stabilize()
    assert h.raw(4).conf.voters == {1, 2, 3, 4}


def test_4_2_2_removed_leader_steps_down_and_hands_over() -> None:
    h = elect(cluster())
    h.propose_conf_change(1, REMOVE, 1)
    with pytest.raises(ProposalDroppedError, match="removed"):
        h.raw(1).propose(b"x")
    assert h.raw(1).role is Role.LEADER, "leads until the removal commits"
    h.stabilize()
    assert h.raw(1).role is Role.FOLLOWER
    assert h.leaders() == [2] and h.raw(2).term == 2
    h.tick(1, 100)
    assert h.raw(1).role is Role.FOLLOWER


def test_4_2_2_removed_leader_hands_over_only_to_a_caught_up_voter() -> None:
    h = elect(cluster())
    h.propose_conf_change(1, REMOVE, 1)
    h.process_ready(1)
    h.deliver()
    h.process_ready(2)
    h.process_ready(3)
    h.deliver(to=1)
    rd = h.process_ready(1)
    (tn,) = sent(rd, MT.TIMEOUT_NOW)
    assert tn.to == 2, "both are caught up; the lower id wins the tie"


# --- thesis §3.10: leadership transfer -------------------------------------------------------


def test_3_10_transfer_to_caught_up_follower_sends_timeout_now() -> None:
    h = elect(cluster())
    h.transfer_leader(1, 3)
    rd = h.process_ready(1)
    assert [(m.type, m.to) for m in sent(rd)] == [(MT.TIMEOUT_NOW, 3)]
    h.stabilize()
    assert h.leaders() == [3] and h.raw(3).term == 2


def test_3_10_transfer_to_lagging_follower_catches_it_up_first() -> None:
    h = elect(cluster())
    h.partition = [frozenset({1, 2}), frozenset({3})]
    h.propose(1, "x")
    h.stabilize()
    h.partition = None
    h.transfer_leader(1, 3)
    rd = h.process_ready(1)
    assert sent(rd, MT.TIMEOUT_NOW) == [] and sent(rd, MT.APP, to=3)
    h.stabilize()
    assert h.leaders() == [3]
    assert h.nodes[3].fsm == ["x"]


def test_3_10_transfer_aborts_after_an_election_timeout() -> None:
    h = elect(cluster())
    h.crash(3)
    h.transfer_leader(1, 3)
    for _ in range(9):
        h.tick(1)
        h.stabilize([1, 2])
    assert h.raw(1).status().lead_transferee == 3
    h.tick(1)
    assert h.raw(1).status().lead_transferee == 0
    assert h.raw(1).role is Role.LEADER
    h.raw(1).propose(b"x")


def test_3_10_proposals_and_changes_refused_during_transfer() -> None:
    h = elect(cluster())
    h.transfer_leader(1, 2)
    with pytest.raises(ProposalDroppedError):
        h.raw(1).propose(b"x")
    with pytest.raises(ProposalDroppedError):
        h.raw(1).propose_conf_change(ConfChange(ADD, 4))


def test_3_10_transfer_preconditions() -> None:
    h = elect(cluster(4, voters=[1, 2, 3], learners=[4]))
    with pytest.raises(ConfChangeError, match="not a voter"):
        h.raw(1).transfer_leader(4)
    with pytest.raises(NotLeaderError):
        h.raw(2).transfer_leader(3)
    h.raw(1).transfer_leader(1)
    assert h.raw(1).status().lead_transferee == 0, "to itself: nothing to do"


def test_3_10_timeout_now_vote_overrides_leader_stickiness() -> None:
    h = elect(cluster())
    rd = step(h, msg(MT.VOTE, 3, 2, term=2, index=1, log_term=1, force=True))
    assert [(m.type, m.reject) for m in sent(rd)] == [(MT.VOTE_RESP, False)]


def test_3_10_learner_ignores_timeout_now() -> None:
    h = elect(cluster(4, voters=[1, 2, 3], learners=[4]))
    step(h, msg(MT.TIMEOUT_NOW, 1, 4, term=1))
    assert h.raw(4).role is Role.FOLLOWER and h.raw(4).term == 1


# --- §7 log compaction: snapshots ----------------------------------------------------------


def _lagging_follower_after_compaction(chunk: int = 4) -> Harness:
    h = elect(cluster(snapshot_chunk_bytes=chunk))
    h.partition = [frozenset({1, 2}), frozenset({3})]
    for d in "abcdef":
        h.propose(1, d)
    h.stabilize()
    h.compact(1, 7)
    h.partition = None
    return h


def test_7_lagging_follower_receives_snapshot_in_chunks() -> None:
    h = _lagging_follower_after_compaction()
    h.tick(1)
    h.stabilize()
    chunks = [ln for ln in h.out if ln.startswith("    1->3 SNAP ")]
    assert len(chunks) == 3  # "a,b,c,d,e,f" is 11 bytes
    assert h.nodes[3].fsm == list("abcdef")
    assert h.raw(1).status().peers[3].state is ProgressState.REPLICATE
    h.propose(1, "g")
    h.stabilize()
    assert h.nodes[3].fsm == list("abcdefg")


def _run_until_a_chunk_is_sent(h: Harness) -> None:
    """Handle Readys and deliver everything until the leader has put a SNAP on the wire."""
    for _ in range(20):
        for n in sorted(h.nodes):
            if h.raw(n).has_ready():
                h.process_ready(n)
        if any(m.type is MT.SNAP for m in h.queue):
            return
        h.deliver()
    raise AssertionError("no snapshot chunk was sent")


def test_7_lost_chunk_is_resent_on_heartbeat_response() -> None:
    h = _lagging_follower_after_compaction()
    h.tick(1)
    _run_until_a_chunk_is_sent(h)
    (lost,) = h.take(mtype=MT.SNAP)
    h.out = []
    h.stabilize()
    assert not [ln for ln in h.out if "SNAP" in ln], "nothing is resent without a sign of life"
    assert h.raw(1).status().peers[3].state is ProgressState.SNAPSHOT
    h.tick(1)
    h.stabilize()
    first = next(ln for ln in h.out if ln.startswith("    1->3 SNAP "))
    assert f"off={lost.offset} " in first
    assert h.nodes[3].fsm == list("abcdef")
    assert h.raw(1).status().peers[3].state is ProgressState.REPLICATE


def test_7_out_of_order_chunk_is_refused_with_the_expected_offset() -> None:
    h = cluster()
    meta = SnapshotMeta(5, 1, ConfState(frozenset({1, 2, 3})))
    rd = step(h, msg(MT.SNAP, 1, 2, term=1, snapshot_meta=meta, offset=4, data=b"xxxx"))
    (r,) = sent(rd, MT.SNAP_RESP)
    assert r.reject and r.offset == 0
    rd = step(h, msg(MT.SNAP, 1, 2, term=1, snapshot_meta=meta, offset=0, data=b"abcd"))
    (r,) = sent(rd, MT.SNAP_RESP)
    assert not r.reject and r.offset == 4
    rd = step(h, msg(MT.SNAP, 1, 2, term=1, snapshot_meta=meta, offset=4, data=b"ef", done=True))
    assert rd is not None and rd.snapshot == Snapshot(meta, b"abcdef")
    assert [(m.type, m.index) for m in sent(rd)] == [(MT.APP_RESP, 5)]


def test_7_snapshot_older_than_commit_is_not_installed() -> None:
    h = cluster()
    preload(h, 2, entries(1, 1, 1), term=1, commit=3)
    meta = SnapshotMeta(2, 1, ConfState(frozenset({1, 2, 3})))
    rd = step(h, msg(MT.SNAP, 1, 2, term=1, snapshot_meta=meta, data=b"old", done=True))
    assert rd is not None and rd.snapshot is None
    assert [(m.type, m.index, m.reject) for m in sent(rd)] == [(MT.APP_RESP, 3, False)]


def test_7_snapshot_ack_vouches_only_for_what_it_proved() -> None:
    h = cluster()
    # Entries 1..5 agree with the leader (term 1); 6..8 are a deposed leader's (term 2).
    preload(h, 2, entries(1, 1, 1, 1, 1, 2, 2, 2), term=2, commit=1)
    meta = SnapshotMeta(5, 1, ConfState(frozenset({1, 2, 3})))
    rd = step(h, msg(MT.SNAP, 1, 2, term=3, snapshot_meta=meta, data=b"img", done=True))
    (ack,) = sent(rd, MT.APP_RESP)
    assert not ack.reject
    assert ack.index <= 5, f"claims to match the leader up to {ack.index}"


def test_7_slow_chunk_does_not_double_the_rest_of_the_transfer() -> None:
    h = elect(cluster(snapshot_chunk_bytes=2))
    h.partition = [frozenset({1, 2}), frozenset({3})]
    for d in "abcdefghij":
        h.propose(1, d)
    h.stabilize()
    h.compact(1, 11)
    h.partition = None
    h.tick(1)
    _run_until_a_chunk_is_sent(h)
    # A heartbeat round trip overtakes the first chunk.
    h.tick(1)
    h.process_ready(1)
    h.deliver(mtype=MT.HEARTBEAT)
    h.process_ready(2)
    h.process_ready(3)
    h.deliver(mtype=MT.HEARTBEAT_RESP)
    h.out = []
    h.stabilize()
    assert h.nodes[3].fsm == list("abcdefghij")
    chunks = [ln for ln in h.out if ln.startswith("    1->3 SNAP ")]
    need = -(-len(b"a,b,c,d,e,f,g,h,i,j") // 2)
    assert len(chunks) <= need + 1, f"{len(chunks)} chunks sent for {need}"


# --- the API's own guards --------------------------------------------------------------------


def test_proposals_only_on_the_leader_and_never_empty() -> None:
    h = elect(cluster())
    with pytest.raises(NotLeaderError) as err:
        h.raw(2).propose(b"x")
    assert err.value.leader == 1
    with pytest.raises(ValueError, match="empty"):
        h.raw(1).propose(b"")


def test_local_messages_cannot_be_stepped_in() -> None:
    raw = lone_node(rng=random.Random(1))
    with pytest.raises(ValueError, match="local"):
        raw.step(Message(MT.HUP, to=1, frm=1))


@pytest.mark.parametrize(
    "options",
    [
        {"id": 0},
        {"heartbeat_ticks": 0},
        {"election_timeout_ticks": 1, "heartbeat_ticks": 1},
        {"max_inflight_msgs": 0},
        {"snapshot_chunk_bytes": 0},
    ],
)
def test_invalid_config_is_refused(options: dict[str, int]) -> None:
    st = MemoryStorage()
    cfg = {"id": 1, "rng": random.Random(1), **options}
    with pytest.raises(ValueError, match="Config"):
        RawNode(Config(**cfg), st)  # type: ignore[arg-type]
