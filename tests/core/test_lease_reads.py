"""Leader-lease reads (`core/lease_reads.py`), stepped by hand: a leader serves a read at once
only while a quorum answered a heartbeat it first sent within the lease, after it committed
an entry of its own term and never after a transfer; voters refuse votes within an election
timeout of the leader's last message, and from their start."""

from __future__ import annotations

from coordinator.core import MemberCore, ReadMode
from coordinator.core.lease_reads import LeaseReads, lease_ms
from coordinator.fsm import CLOCK_RATE_BOUND, Put
from coordinator.raft import Message, MessageType
from coordinator.testing.core_mutants import (
    LeaseReadsBeforeOwnTermCommit,
    LeaseReadsFromTheAnswer,
    LeaseReadsOnTicks,
    LeaseReadsWithoutDriftMargin,
    LeaseReadsWithoutQuorum,
)
from tests.core.harness import WALL_MS, Cluster

TICK_S = 0.01
ELECTION_TICKS = 10
LEASE_MS = lease_ms(ELECTION_TICKS, TICK_S)


def lease_cluster(core_class: type[MemberCore] = MemberCore) -> Cluster:
    """Three members with lease reads on, started an election timeout ago (a member refuses
    votes for that long from its start)."""
    c = Cluster(
        core_class,
        read_mode=ReadMode.LEASE,
        tick_s=TICK_S,
        election_ticks=ELECTION_TICKS,
        heartbeat_ticks=1,
    )
    for i in (1, 2, 3):
        lease = c.core(i)._lease_reads
        assert lease is not None
        for _ in range(ELECTION_TICKS):
            lease.tick()  # the refusal's clock only: Raft's election timer stays at 0
    return c


def at(c: Cluster, i: int, now_s: float) -> None:
    """Member `i`'s turn at `now_s` on its clock: its leader duties, then its Readys."""
    c.now_s = now_s
    c.core(i).leader_duties(now_s, WALL_MS)
    c.process(i)


def leader_with_lease(c: Cluster, heartbeat_at_s: float) -> None:
    """Member 1 leads, has committed its term's entry, and its followers answered a
    heartbeat it first sent at `heartbeat_at_s`."""
    c.elect(1)
    at(c, 1, heartbeat_at_s)
    c.tick(1, 1)  # a heartbeat, sent (and stamped) in this turn, answered by both


def test_the_lease_is_the_followers_refusal_less_the_clock_rate_bound_and_a_tick() -> None:
    rho = CLOCK_RATE_BOUND
    assert (ELECTION_TICKS - 1) * 10 * (1 - rho) / (1 + rho) - 10 == LEASE_MS
    assert 0 < LEASE_MS < (ELECTION_TICKS - 1) * 10


def test_a_read_within_the_lease_is_served_without_a_round_trip() -> None:
    c = lease_cluster()
    leader_with_lease(c, 1.0)
    written = c.propose(1, Put(b"k", b"v"), client_id=7, seq=1)
    c.settle()
    rid = c.read(1)
    at(c, 1, 1.0 + (LEASE_MS - 1) / 1000)  # one turn: no message is delivered meanwhile
    seen = c.outcome(1, rid)
    assert seen is not None and seen.done.error is None
    assert isinstance(seen.done.value, int)
    assert seen.done.value >= c.applied(1, written).index  # covers the acknowledged write
    assert c.core(1).lease_reads_served == 1


def served_past_the_lease(core_class: type[MemberCore]) -> bool:
    """Is a read served on the lease a moment after it ran out?"""
    c = lease_cluster(core_class)
    leader_with_lease(c, 1.0)
    rid = c.read(1)
    at(c, 1, 1.0 + (LEASE_MS + 1) / 1000)
    return c.outcome(1, rid) is not None


def wrong_first_send_and_own_term(lease: LeaseReads) -> list[str]:
    """What a lease gets wrong about which send counts and the own-term commit (empty:
    nothing)."""
    wrong = []
    beat = Message(MessageType.HEARTBEAT, to=2, frm=1, term=3, context=0)
    lease.clock(1000.0)
    lease.sent([beat], 3)
    lease.clock(1500.0)
    lease.sent([beat], 3)  # the same context again, later: counts from the first send
    lease.received(Message(MessageType.HEARTBEAT_RESP, to=1, frm=2, term=3, context=0), 3, True)
    if not lease.valid(1000.0 + LEASE_MS - 1, 3, (1, 2, 3), True):
        wrong.append("no lease right after a quorum answered")
    if lease.valid(1000.0 + LEASE_MS + 1, 3, (1, 2, 3), True):
        wrong.append("a lease counted from a later send or from the answer")
    if lease.valid(1000.0 + 1, 3, (1, 2, 3), False):
        wrong.append("a lease read before the leader committed its term's entry")
    if lease.valid(1000.0 + 1, 4, (1, 2, 3), True):
        wrong.append("a lease of an earlier term")
    return wrong


def test_the_checks_catch_the_lease_read_mutants() -> None:
    assert not served_past_the_lease(MemberCore)
    assert served_past_the_lease(LeaseReadsWithoutDriftMargin)
    assert wrong_first_send_and_own_term(LeaseReads(1, ELECTION_TICKS, TICK_S)) == []
    for mutant, what in (
        (LeaseReadsBeforeOwnTermCommit, "before the leader committed"),
        (LeaseReadsFromTheAnswer, "from the answer"),
    ):
        lease = mutant.broken(1, ELECTION_TICKS, TICK_S)
        assert any(what in w for w in wrong_first_send_and_own_term(lease)), mutant


def lease_after_a_stall(lease: LeaseReads) -> bool:
    """Does the leader believe in its lease after a stall in which its loop ticked once but
    its clock ran on for ten leases?"""
    lease.clock(1000.0)
    lease.sent([Message(MessageType.HEARTBEAT, to=2, frm=1, term=3, context=0)], 3)
    lease.received(Message(MessageType.HEARTBEAT_RESP, to=1, frm=2, term=3, context=0), 3, True)
    lease.tick()
    now = 1000.0 + 10 * LEASE_MS
    lease.clock(now)
    return lease.valid(now, 3, (1, 2, 3), True)


def test_the_lease_is_measured_on_the_clock_not_in_ticks_a_stall_drops() -> None:
    assert not lease_after_a_stall(LeaseReads(1, ELECTION_TICKS, TICK_S))
    assert lease_after_a_stall(LeaseReadsOnTicks.broken(1, ELECTION_TICKS, TICK_S))


def test_a_read_after_the_lease_ran_out_takes_the_barrier_which_renews_the_lease() -> None:
    c = lease_cluster()
    leader_with_lease(c, 1.0)
    rid = c.read(1)
    at(c, 1, 1.0 + (LEASE_MS + 1) / 1000)
    assert c.outcome(1, rid) is None, "served on a lease that ran out"
    c.settle()  # the barrier's heartbeat (a new context), answered by a quorum
    assert c.outcome(1, rid) is not None
    again = c.read(1)
    at(c, 1, 1.0 + (LEASE_MS + 2) / 1000)
    assert c.outcome(1, again) is not None, "the barrier's answers renew the lease"


def test_the_leader_renews_its_lease_with_a_barrier_of_its_own_every_third_of_it() -> None:
    c = lease_cluster()
    leader_with_lease(c, 1.0)
    c.settle()
    at(c, 1, 1.0 + LEASE_MS / 3000 - 0.001)
    assert not c.net.queue, "renewed before a third of the lease"
    at(c, 1, 1.0 + LEASE_MS / 3000 + 0.001)
    beats = [m for m in c.net.queue if m.type is MessageType.HEARTBEAT]
    assert {m.to for m in beats} == {2, 3} and beats[0].context > 0  # a new context
    c.settle()
    rid = c.read(1)
    at(c, 1, 1.0 + LEASE_MS / 1000 + 0.01)  # past the first lease, within the renewed one
    assert c.outcome(1, rid) is not None


def served_without_a_quorum(core_class: type[MemberCore]) -> bool:
    """Does a leader that no quorum heard from answer a read (on its lease)?"""
    c = lease_cluster(core_class)
    c.elect(1)
    c.isolate(1)
    at(c, 1, 1.0)
    c.tick(1, 1)  # a heartbeat nobody hears
    rid = c.read(1)
    at(c, 1, 1.001)
    c.settle()
    return c.outcome(1, rid) is not None


def test_a_leader_that_heard_from_no_quorum_takes_the_barrier() -> None:
    assert not served_without_a_quorum(MemberCore)
    # The check bites: the random simulator meets this case rarely (one seed in a thousand
    # catches the mutant), so this scenario is what guards it.
    assert served_without_a_quorum(LeaseReadsWithoutQuorum)


def test_a_leader_that_sent_timeout_now_never_serves_on_its_lease_again_in_that_term() -> None:
    c = lease_cluster()
    leader_with_lease(c, 1.0)
    c.isolate(1)  # the transfer's TimeoutNow is sent but not delivered (a delayed copy)
    c.core(1).node.transfer_leader(2)
    c.process(1)
    c.core(1).node._raft.lead_transferee = 0  # as if the transfer had timed out
    rid = c.read(1)
    at(c, 1, 1.001)
    assert c.outcome(1, rid) is None


def test_a_voter_refuses_a_vote_within_an_election_timeout_of_the_leaders_message() -> None:
    c = lease_cluster()
    leader_with_lease(c, 1.0)
    follower = c.core(2)
    term = follower.node.term
    ask = Message(MessageType.VOTE, to=2, frm=3, term=term + 1, index=100, log_term=term)
    follower.step(ask)
    c.process(2)
    assert follower.node.term == term and not c.net.queue, "voted within the lease"
    for _ in range(ELECTION_TICKS):
        follower.tick()
    follower.step(ask)
    c.process(2)
    assert follower.node.term == term + 1, "still refusing after an election timeout"


def test_a_restarted_member_refuses_votes_for_an_election_timeout() -> None:
    lease = LeaseReads(2, ELECTION_TICKS, TICK_S)
    ask = Message(MessageType.PRE_VOTE, to=2, frm=3, term=5, index=9, log_term=4)
    assert lease.refuses_vote(ask, 4)
    for _ in range(ELECTION_TICKS):
        lease.tick()
    assert not lease.refuses_vote(ask, 4)
    forced = Message(MessageType.VOTE, to=2, frm=3, term=5, force=True)
    assert not LeaseReads(2, ELECTION_TICKS, TICK_S).refuses_vote(forced, 4)


def test_lease_reads_are_off_by_default() -> None:
    c = Cluster()
    c.elect(1)
    at(c, 1, 1.0)
    c.tick(1, 1)
    rid = c.read(1)
    at(c, 1, 1.001)
    assert c.outcome(1, rid) is None  # a barrier, as ever
    assert c.core(1).lease_reads_served == 0
    assert isinstance(c.core(1), MemberCore)


def test_a_long_term_remembers_a_bounded_number_of_heartbeat_contexts() -> None:
    lease = LeaseReads(1, ELECTION_TICKS, TICK_S)
    for ctx in range(5000):
        lease.clock(float(ctx))
        lease.sent([Message(MessageType.HEARTBEAT, to=2, frm=1, term=3, context=ctx)], 3)
    assert len(lease._first_sent) <= 1024
    lease.received(Message(MessageType.HEARTBEAT_RESP, to=1, frm=2, term=3, context=4999), 3, True)
    assert lease.valid(4999.0, 3, (1, 2, 3), True)  # the newest still counts
