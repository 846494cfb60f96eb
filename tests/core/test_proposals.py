"""A proposal is answered only once its entry is applied, and a proposal a new leader made
unknowable fails (ProposalLostError) instead of waiting forever."""

from __future__ import annotations

import pytest

from coordinator.core import MemberCore, ProposalLostError
from coordinator.fsm import Applied, Put
from coordinator.testing.core_mutants import AnswersBeforeApply
from tests.core.harness import Cluster


def answered_only_after_apply(core_class: type[MemberCore]) -> list[str]:
    """What went wrong when the leader, cut off from its followers, is asked for a write and
    the partition then heals (empty: nothing)."""
    wrong = []
    c = Cluster(core_class)
    c.elect(1)
    c.isolate(1)
    pid = c.propose(1, Put(b"k", b"v"), client_id=7, seq=1)
    c.settle()
    c.tick(1, 3)  # heartbeats go nowhere; the entry cannot commit
    if c.outcome(1, pid) is not None:
        wrong.append("answered while the entry could not commit")
    c.heal()
    c.tick(1, 1)
    seen = c.outcome(1, pid)
    if seen is None:
        return [*wrong, "never answered after the partition healed"]
    applied = seen.done.value
    if not isinstance(applied, Applied) or seen.done.error is not None:
        return [*wrong, f"answered {seen.done}"]
    if seen.applied_index < applied.index:
        wrong.append(f"answered at applied index {seen.applied_index} < entry {applied.index}")
    if c.members[1].fsm.get(b"k") is None:
        wrong.append("answered but the state machine has no such key")
    return wrong


def test_a_proposal_is_answered_only_after_it_is_applied() -> None:
    assert answered_only_after_apply(MemberCore) == []


def test_the_check_catches_a_core_that_answers_before_applying() -> None:
    assert "answered while the entry could not commit" in answered_only_after_apply(
        AnswersBeforeApply
    )


def test_every_member_applies_the_answered_write() -> None:
    c = Cluster()
    c.elect(1)
    pids = [c.propose(1, Put(b"k%d" % n, b"v"), client_id=7, seq=n + 1) for n in range(5)]
    c.settle()
    c.tick(1, 1)  # the commit index reaches the followers with the next heartbeat
    indexes = [c.applied(1, pid).index for pid in pids]
    assert indexes == sorted(indexes) and len(set(indexes)) == 5
    for m in c.members.values():
        assert m.fsm.applied_index >= indexes[-1]
        assert all(m.fsm.get(b"k%d" % n) is not None for n in range(5))


def test_a_proposal_on_a_follower_fails_at_once() -> None:
    c = Cluster()
    c.elect(1)
    pid = c.propose(2, Put(b"k", b"v"))
    seen = c.outcome(2, pid)
    assert seen is not None and seen.done.error is not None
    assert not isinstance(seen.done.error, ProposalLostError)  # refused, not lost


def test_a_proposal_overtaken_by_a_new_leader_is_lost_not_left_waiting() -> None:
    c = Cluster()
    c.elect(1)
    c.isolate(1)
    lost = c.propose(1, Put(b"k", b"old"), client_id=7, seq=1)
    c.settle()
    stale_index = c.core(1).status().last_index
    new = c.elect_among(2, 3)  # the majority moves on; 1 (not ticked) still believes it leads
    assert c.core(1).is_leader and c.outcome(1, lost) is None
    won = c.propose(new, Put(b"k", b"new"), client_id=8, seq=1)
    c.settle()
    assert c.applied(new, won).index == stale_index + 1  # the no-op took the old index
    c.heal()
    c.tick(new, 1)
    seen = c.outcome(1, lost)
    assert seen is not None and isinstance(seen.done.error, ProposalLostError)
    assert c.core(1).leader == new
    # The old leader's entry was overwritten: every member applied the new leader's write.
    for m in c.members.values():
        kv = m.fsm.get(b"k")
        assert kv is not None and kv.value == b"new"


def test_a_proposal_whose_index_applies_with_another_term_is_lost() -> None:
    """The same overwrite, learnt from the entries themselves: the member applies the new
    leader's entry at its proposal's index before it ever notes the new leader."""
    c = Cluster()
    c.elect(1)
    c.isolate(1)
    lost = c.propose(1, Put(b"k", b"old"), client_id=7, seq=1)
    c.settle()
    new = c.elect_among(2, 3)
    c.propose(new, Put(b"k", b"new"), client_id=8, seq=1)
    c.settle()
    c.heal()
    c.tick(new, 1, blind=frozenset({1}))
    seen = c.outcome(1, lost)
    assert seen is not None and isinstance(seen.done.error, ProposalLostError)
    assert "overwrote" in str(seen.done.error)


def test_proposals_keep_waiting_while_no_leader_is_known() -> None:
    c = Cluster()
    c.elect(1)
    c.isolate(1)
    pid = c.propose(1, Put(b"k", b"v"))
    c.settle()
    c.tick(1, 2 * 10 + 1)  # CheckQuorum: 1 steps down, knows no leader
    assert not c.core(1).is_leader and c.core(1).leader == 0
    assert c.outcome(1, pid) is None


@pytest.mark.parametrize("seed", range(5))
def test_completions_are_deterministic(seed: int) -> None:
    def history() -> list[tuple[int, int, int]]:
        c = Cluster(seed=seed)
        c.elect(1 + seed % 3)
        leader = 1 + seed % 3
        pids = [c.propose(leader, Put(b"k", b"%d" % n), 1, n + 1) for n in range(4)]
        c.settle()
        return [(p, c.applied(leader, p).index, c.applied(leader, p).term) for p in pids]

    assert history() == history()
