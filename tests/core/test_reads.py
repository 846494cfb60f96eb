"""A read barrier is answered only once a quorum confirmed this member still leads (ReadIndex)
and its state machine applied up to the read index."""

from __future__ import annotations

from coordinator.core import MemberCore
from coordinator.fsm import Put
from coordinator.raft import MessageType, NotLeaderError
from coordinator.testing.core_mutants import ReadsWithoutQuorum
from tests.core.harness import Cluster


def deposed_leader_reads(core_class: type[MemberCore]) -> list[str]:
    """What went wrong when a leader cut off from the majority, which still believes it
    leads, is asked for a read barrier after the majority moved on and wrote (empty: nothing)."""
    wrong = []
    c = Cluster(core_class)
    c.elect(1)
    c.propose(1, Put(b"k", b"old"), client_id=7, seq=1)
    c.settle()
    c.tick(1, 1)
    c.isolate(1)
    new = c.elect_among(2, 3)
    written = c.propose(new, Put(b"k", b"new"), client_id=8, seq=1)
    c.settle()
    c.tick(new, 1)
    write_index = c.applied(new, written).index
    assert c.core(1).is_leader, "the old leader must not know it was deposed yet"
    rid = c.read(1)
    c.settle()
    seen = c.outcome(1, rid)
    if seen is not None and seen.done.error is None:
        wrong.append(
            f"a deposed leader answered a read barrier at {seen.done.value}, before the write "
            f"at {write_index} it cannot see"
        )
    c.heal()
    c.tick(new, 1)
    seen = c.outcome(1, rid)
    if seen is not None and seen.done.error is None and seen.done.value < write_index:  # type: ignore[operator]
        wrong.append(f"after healing, the read was answered at a stale index {seen.done.value}")
    return wrong


def test_a_deposed_leader_gets_no_read_answer() -> None:
    assert deposed_leader_reads(MemberCore) == []


def test_the_check_catches_a_read_barrier_without_quorum() -> None:
    wrong = deposed_leader_reads(ReadsWithoutQuorum)
    assert wrong and "deposed leader answered" in wrong[0]


def test_a_read_waits_for_the_quorum_and_then_for_the_apply() -> None:
    c = Cluster()
    c.elect(1)
    pid = c.propose(1, Put(b"k", b"v"), client_id=7, seq=1)
    c.settle()
    assert c.outcome(1, pid) is not None  # acknowledged: a later read must cover it
    rid = c.read(1)
    # The leader cannot confirm before its followers answer: nothing yet.
    c.process(1)
    assert c.outcome(1, rid) is None
    c.settle()
    c.tick(1, 1)
    read = c.outcome(1, rid)
    assert read is not None and read.done.error is None
    assert isinstance(read.done.value, int)
    assert read.applied_index >= read.done.value  # served only once applied that far
    # The write acknowledged before the read is covered by it.
    assert read.done.value >= c.applied(1, pid).index


def test_a_read_on_a_follower_is_confirmed_by_the_leader() -> None:
    c = Cluster()
    c.elect(1)
    written = c.propose(1, Put(b"k", b"v"), client_id=7, seq=1)
    c.settle()
    rid = c.read(2)
    c.settle()
    c.tick(1, 1)
    read = c.outcome(2, rid)
    assert read is not None and read.done.error is None
    assert isinstance(read.done.value, int) and read.done.value >= c.applied(1, written).index
    assert read.applied_index >= read.done.value
    kv = c.members[2].fsm.get(b"k")
    assert kv is not None and kv.value == b"v"


def test_a_read_with_no_leader_known_fails_at_once() -> None:
    c = Cluster()
    rid = c.read(1)  # nobody was elected yet
    seen = c.outcome(1, rid)
    assert seen is not None and seen.done.error is not None


def heartbeats_from(c: Cluster, leader: int) -> int:
    return sum(1 for m in c.net.queue if m.frm == leader and m.type is MessageType.HEARTBEAT)


def test_reads_asked_together_share_one_heartbeat_round() -> None:
    c = Cluster()
    c.elect(1)
    c.settle()
    rids = [c.core(1).read() for _ in range(10)]
    c.process(1)
    assert heartbeats_from(c, 1) == 2  # one per follower for the ten, not twenty
    c.settle()
    c.tick(1, 1)
    seen = [c.outcome(1, rid) for rid in rids]
    assert all(s is not None and s.done.error is None for s in seen)
    assert len({s.done.value for s in seen if s is not None}) == 1


def test_a_read_asked_after_a_round_went_out_waits_for_a_round_of_its_own() -> None:
    # The earlier round's read index was taken before this read arrived: it could miss a
    # write acknowledged in between, so the read may not ride on it.
    c = Cluster()
    c.elect(1)
    c.settle()
    first = c.read(1)
    assert heartbeats_from(c, 1) == 2
    second = c.read(1)
    assert heartbeats_from(c, 1) == 4
    c.settle()
    c.tick(1, 1)
    assert all(c.outcome(1, rid) is not None for rid in (first, second))


def test_reads_asked_with_no_leader_all_fail() -> None:
    c = Cluster()
    rids = [c.core(1).read() for _ in range(3)]
    c.process(1)
    for rid in rids:
        seen = c.outcome(1, rid)
        assert seen is not None and seen.done.error is not None


def test_a_read_whose_barrier_was_dropped_with_the_leadership_fails_rather_than_waits() -> None:
    # The old leader asks for a barrier, then hears of a newer term before any follower
    # answers: Raft drops the pending request, and the read is failed (the caller looks for
    # the leader again) instead of waiting forever with its bookkeeping.
    c = Cluster()
    c.elect(1)
    c.settle()
    rid = c.read(1)  # the heartbeat round is queued, not delivered
    c.net.queue.clear()
    c.isolate(1)
    new = c.elect_among(2, 3)
    c.heal()
    c.tick(new, 1)  # the old leader hears the new term
    assert not c.core(1).is_leader
    seen = c.outcome(1, rid)
    assert seen is not None and isinstance(seen.done.error, NotLeaderError)
