"""Cluster over gRPC: member list (Leader / Reachable / Unreachable), learners, promotion,
removal, leadership transfer, status; leader redirects; failing fast without a quorum."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.raft import ConfState
from coordinator.server import LEADER_METADATA_KEY
from tests.server.harness import (
    Cluster,
    Session,
    eventually,
    rpc_error,
    trailing,
    wait_for,
    with_cluster,
)

M = pb.Member


def test_member_list_shows_leader_and_reachability(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        await c.register_directory()
        leader = await c.leader()
        listed = await leader.client.cluster.MemberList(pb.MemberListRequest())
        assert listed.leader == leader.id
        by_id = {m.id: m for m in listed.members}
        assert sorted(by_id) == [1, 2, 3]
        assert by_id[leader.id].status == M.LEADER
        assert all(
            m.status == M.REACHABLE and m.role == M.VOTER
            for i, m in by_id.items()
            if i != leader.id
        )
        assert (
            by_id[leader.id].client_url == leader.url and by_id[leader.id].name == f"m{leader.id}"
        )
        assert all(m.match_index > 0 for m in listed.members)

        status = await leader.client.cluster.Status(pb.StatusRequest())
        assert (status.leader, status.role) == (leader.id, "leader")
        assert status.applied_index <= status.commit_index <= status.last_index

        # A follower redirects a strict list to the leader and answers a serializable one.
        follower = await c.follower()
        err = await rpc_error(follower.client.cluster.MemberList(pb.MemberListRequest()))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert trailing(err)[LEADER_METADATA_KEY] == leader.url
        local = await follower.client.cluster.MemberList(pb.MemberListRequest(serializable=True))
        assert {m.id: m.status for m in local.members}[leader.id] == M.LEADER

        # A stopped follower turns Unreachable.
        await c.stop(follower.id)

        async def unreachable() -> bool:
            got = await leader.client.cluster.MemberList(pb.MemberListRequest())
            return {m.id: m.status for m in got.members}[follower.id] == M.UNREACHABLE

        await eventually(unreachable)

    with_cluster(tmp_path, scenario)


def test_add_learner_promote_remove_and_transfer(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        cluster = leader.client.cluster
        add = pb.MemberAddLearnerRequest(
            id=4, name="m4", peer_url="http://127.0.0.1:7004", client_url="http://127.0.0.1:9"
        )
        await cluster.MemberAddLearner(add)
        await cluster.MemberAddLearner(add)  # already a learner: nothing to do
        listed = await cluster.MemberList(pb.MemberListRequest())
        four = next(m for m in listed.members if m.id == 4)
        assert (four.role, four.status, four.name) == (M.LEARNER, M.UNREACHABLE, "m4")
        # Not running, so not caught up: promotion is refused with the reason.
        err = await rpc_error(cluster.MemberPromote(pb.MemberIdRequest(id=4)))
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "has not caught up" in err.details()

        # Start it: it catches up as a learner and can then be promoted.
        await c.start_member(4, ConfState(frozenset({1, 2, 3})))
        await wait_for(lambda: c.members[4].loop.fsm.applied_index >= leader.loop.fsm.applied_index)

        async def promoted() -> bool:
            try:
                await cluster.MemberPromote(pb.MemberIdRequest(id=4))
            except grpc.aio.AioRpcError as e:
                assert e.code() is grpc.StatusCode.FAILED_PRECONDITION, e
                return False
            return True

        await eventually(promoted)
        listed = await cluster.MemberList(pb.MemberListRequest())
        assert {m.id: m.role for m in listed.members} == dict.fromkeys((1, 2, 3, 4), M.VOTER)

        # The leader will not remove itself; another member goes, from Raft and the directory.
        err = await rpc_error(cluster.MemberRemove(pb.MemberIdRequest(id=leader.id)))
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "transfer leadership to another voter first (`concordctl member transfer ID`)" in (
            err.details()
        )
        await cluster.MemberRemove(pb.MemberIdRequest(id=4))
        await c.stop(4)
        listed = await cluster.MemberList(pb.MemberListRequest())
        assert sorted(m.id for m in listed.members) == [1, 2, 3]
        assert not any(m.id == 4 for m in leader.loop.fsm.members())
        err = await rpc_error(cluster.MemberRemove(pb.MemberIdRequest(id=4)))
        assert err.code() is grpc.StatusCode.NOT_FOUND
        # Its id is never given out again (member 4 may still run somewhere, cut off).
        err = await rpc_error(cluster.MemberAddLearner(add))
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "member id 4 was removed from this cluster and is never reused" in err.details()
        assert 4 not in leader.loop.node.conf.learners
        # Unless the caller says it is member 4 itself coming back (the operator's scaled-down
        # and scaled-up StatefulSet ordinal): readmitted, listed and a learner again.
        readmit = pb.MemberAddLearnerRequest(
            id=4, name=add.name, peer_url=add.peer_url, client_url=add.client_url, readmit=True
        )
        await cluster.MemberAddLearner(readmit)
        assert 4 in leader.loop.node.conf.learners
        assert 4 not in leader.loop.fsm.removed_member_ids()
        await cluster.MemberRemove(pb.MemberIdRequest(id=4))

        # Leadership moves where it is told to.
        target = next(m for m in c.running() if m is not leader)
        await cluster.TransferLeader(pb.MemberIdRequest(id=target.id))
        assert (await c.leader()).id == target.id
        err = await rpc_error(target.client.cluster.TransferLeader(pb.MemberIdRequest(id=99)))
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "not a voter" in err.details()

    with_cluster(tmp_path, scenario)


def test_a_follower_redirects_writes_to_the_leader(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        follower = await c.follower()
        s = Session(71)
        put = pb.PutRequest(session=s.next(), key=b"k", value=b"v")
        # No member directory yet: the metadata names the leader by id.
        err = await rpc_error(follower.client.kv.Put(put))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert trailing(err)[LEADER_METADATA_KEY] == str(leader.id)
        assert f"member {follower.id} is not the leader" in err.details()
        # With the directory, it is the leader's client URL.
        await c.register_directory()
        err = await rpc_error(follower.client.kv.Put(put))
        assert trailing(err)[LEADER_METADATA_KEY] == leader.url
        assert leader.url in err.details()
        # Retrying there with the same session executes it once.
        done = await leader.client.kv.Put(put)
        again = await leader.client.kv.Put(put)
        assert again.header.revision == done.header.revision
        # Streams redirect too (keep-alives go to the leader).
        lease = await leader.client.lease.Grant(pb.LeaseGrantRequest(ttl_ms=5_000))
        stream = follower.client.lease.KeepAlive()
        await stream.write(pb.LeaseKeepAliveRequest(id=lease.id))
        err = await rpc_error(stream.read())
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert trailing(err)[LEADER_METADATA_KEY] == leader.url

    with_cluster(tmp_path, scenario)


@pytest.mark.parametrize("survivor_role", ["follower", "leader"])
def test_without_a_quorum_writes_fail_fast_and_serializable_reads_work(
    tmp_path: Path, survivor_role: str
) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        s = Session(81)
        await leader.client.kv.Put(pb.PutRequest(session=s.next(), key=b"k", value=b"before"))
        survivor = leader if survivor_role == "leader" else await c.follower()
        await wait_for(lambda: survivor.loop.fsm.get(b"k") is not None)
        for m in list(c.running()):
            if m is not survivor:
                await c.stop(m.id)

        # A client retries: for a moment the survivor may still redirect to the leader it
        # heard from last; within a few seconds it answers "no quorum" with the count.
        stopped_at = time.monotonic()
        put = pb.PutRequest(session=s.next(), key=b"k", value=b"after")
        errors: list[grpc.aio.AioRpcError] = []

        async def says_no_quorum() -> bool:
            err = await rpc_error(survivor.client.kv.Put(put))
            errors.append(err)
            assert err.code() is grpc.StatusCode.UNAVAILABLE, err
            if "no quorum" in err.details():
                return True
            assert LEADER_METADATA_KEY in trailing(err), err.details()
            return False

        await eventually(says_no_quorum, timeout_s=3.0)
        err = errors[-1]
        assert time.monotonic() - stopped_at < 3.0
        assert "no quorum: 1 of 3 members reachable" in err.details(), err.details()
        assert "unreachable: " in err.details()
        assert "retry" in err.details() and "quorum is back" in err.details()
        if survivor_role == "leader":  # the write was in flight when the quorum went
            assert "outcome is unknown: retry it with the same session" in err.details()

        # Now it fails at once, for writes and linearizable reads alike ...
        started = time.monotonic()
        err = await rpc_error(survivor.client.kv.Range(pb.RangeRequest(key=b"k")))
        assert err.code() is grpc.StatusCode.UNAVAILABLE and "no quorum" in err.details()
        assert time.monotonic() - started < 1.0
        # ... while a serializable read still answers, from local state.
        got = await asyncio.wait_for(
            survivor.client.kv.Range(pb.RangeRequest(key=b"k", serializable=True)), 2
        )
        assert got.kvs[0].value == b"before"

    with_cluster(tmp_path, scenario)
