"""Config.lazy_commit: a leader does not send an append just to announce a commit; the next
append, a heartbeat or `flush_commit` carries it. Everything commits and applies as before."""

from __future__ import annotations

from coordinator.raft import MessageType, Role

from .harness import Harness


def _cluster(lazy: bool) -> Harness:
    h = Harness()
    h.add_nodes(3, lazy_commit=lazy)
    h.campaign(1)
    h.stabilize()
    assert h.raw(1).role is Role.LEADER
    return h


def _appends_after_commit(h: Harness) -> tuple[int, bool]:
    """Propose one entry and replicate it; (APPs the leader sent once it had committed the
    entry, whether some follower then lacked the commit index)."""
    h.propose(1, "x")
    h.process_ready(1)  # the entry to the followers (and the leader's own log)
    h.deliver()
    h.process_ready(2)
    h.process_ready(3)
    h.deliver()  # both acknowledgements reach the leader: it commits
    rd = h.process_ready(1)
    assert rd is not None
    announced = sum(m.type is MessageType.APP for m in rd.messages)
    return announced, h.raw(1).commit_unsent


def test_an_eager_leader_announces_each_commit_with_appends() -> None:
    h = _cluster(lazy=False)
    announced, unsent = _appends_after_commit(h)
    assert announced == 2 and not unsent


def test_a_lazy_leader_waits_and_flush_commit_announces() -> None:
    h = _cluster(lazy=True)
    announced, unsent = _appends_after_commit(h)
    assert announced == 0 and unsent
    index = h.raw(1).status().commit
    assert all(h.raw(n).status().commit < index for n in (2, 3))
    h.raw(1).flush_commit()
    assert not h.raw(1).commit_unsent
    h.stabilize()
    assert all(h.raw(n).status().commit == index for n in (1, 2, 3))
    assert all(h.nodes[n].fsm == h.nodes[1].fsm == ["x"] for n in (2, 3))


def test_the_next_append_or_a_heartbeat_carries_the_commit_too() -> None:
    h = _cluster(lazy=True)
    _appends_after_commit(h)
    first = h.raw(1).status().commit
    h.propose(1, "y")  # its append carries the first commit
    assert not h.raw(1).commit_unsent
    h.stabilize()
    assert all(h.raw(n).status().commit >= first for n in (2, 3))
    _appends_after_commit(h)
    assert h.raw(1).commit_unsent
    h.tick(1)  # heartbeat_ticks is 1 by default
    assert not h.raw(1).commit_unsent  # the heartbeat carried it
    h.stabilize()
    index = h.raw(1).status().commit
    assert all(h.raw(n).status().commit == index for n in (2, 3))
