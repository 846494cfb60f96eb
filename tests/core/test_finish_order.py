"""`finish` hands a Ready's messages to the transport, then calls `sent`, then applies: a
runtime that writes at the end of its turn flushes in `sent`, so a follower acknowledges
an append without waiting for its own apply of the entries committed with it."""

from __future__ import annotations

from coordinator.core import persist
from coordinator.fsm import Put
from coordinator.raft import MessageType
from tests.core.harness import Cluster


def test_a_followers_acknowledgement_is_handed_over_before_its_apply() -> None:
    c = Cluster()
    c.elect(1)
    c.propose(1, Put(b"a", b"1"), client_id=7, seq=1)
    c.process(1)
    c.propose(1, Put(b"b", b"2"), client_id=7, seq=2)
    c.process(1)
    follower = c.members[2]
    seen: list[tuple[int, int]] = []  # (acknowledgements handed over, applied index) at `sent`
    checked = 0
    for _ in range(20):
        batch, c.net.queue = c.net.queue, []
        for msg in batch:
            if msg.to in c.members:
                c.core(msg.to).step(msg)
        for i in (1, 3):
            c.process(i)
        core = follower.core
        while core.has_ready():
            rd = core.ready()
            persist(follower.log, rd)
            before = follower.fsm.applied_index

            def sent(rd_applied: int = before) -> None:
                acks = sum(1 for m in c.net.queue if m.frm == 2 and m.type is MessageType.APP_RESP)
                seen.append((acks, follower.fsm.applied_index))
                assert follower.fsm.applied_index == rd_applied  # nothing applied yet

            calls = len(seen)
            core.finish(rd, c.net, sent)
            if rd.late_messages:
                assert len(seen) == calls + 1  # called once, after the sends
            if rd.late_messages and rd.committed_entries:
                checked += 1
        c.collect(2)
        if not c.net.queue:
            break
    assert any(acks for acks, _ in seen)
    assert checked, "no Ready had both an acknowledgement and entries to apply"
