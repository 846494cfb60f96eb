"""Sequences over gRPC: blocks never repeat, even across a leader stop; a retry with the same
session is answered from the session table, not executed again."""

from __future__ import annotations

from pathlib import Path

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from tests.server.harness import Cluster, Session, rpc_error, with_cluster


def test_next_never_repeats_across_a_leader_stop(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        s = Session(51)
        seq = leader.client.seq
        await seq.Create(pb.SequenceCreateRequest(session=s.next(), name="orders", start=100))
        issued: list[int] = []
        for _ in range(5):
            block = await seq.Next(pb.SequenceNextRequest(session=s.next(), name="orders", count=3))
            assert (block.count, block.increment) == (3, 1)
            issued += range(block.first, block.first + 3)
        last = block

        # The leader stops right after answering (the client may not have seen the answer):
        # the client retries the same request, same session, on the new leader.
        await c.stop(leader.id)
        new = await c.leader()
        assert new.id != leader.id
        retried = await new.client.seq.Next(
            pb.SequenceNextRequest(session=s.same(), name="orders", count=3)
        )
        assert retried.first == last.first  # the duplicate is answered, not executed
        fresh = await new.client.seq.Next(pb.SequenceNextRequest(session=s.next(), name="orders"))
        assert fresh.count == 1  # count 0 means 1
        issued += [fresh.first]
        assert issued == sorted(set(issued)) and fresh.first == last.first + 3
        got = await new.client.seq.Get(pb.SequenceGetRequest(name="orders"))
        assert got.next == fresh.first + 1
        # An older seq than the newest applied is refused, and changes nothing.
        stale = await rpc_error(
            new.client.seq.Next(
                pb.SequenceNextRequest(
                    session=pb.Session(client_id=51, seq=2), name="orders", count=1
                )
            )
        )
        assert stale.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "older than the newest" in stale.details()
        again = await new.client.seq.Get(pb.SequenceGetRequest(name="orders"))
        assert again.next == got.next

    with_cluster(tmp_path, scenario)
