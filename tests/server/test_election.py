"""Elections over gRPC: campaign (blocking), leader, proclaim, observe, resign."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from tests.server.harness import (
    Cluster,
    Session,
    eventually,
    rpc_error,
    wait_for,
    with_cluster,
)


def test_campaign_leader_observe_proclaim_resign(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        client = leader.client
        s1, s2 = Session(41), Session(42)
        l1 = (await client.lease.Grant(pb.LeaseGrantRequest(session=s1.next(), ttl_ms=10_000))).id
        l2 = (await client.lease.Grant(pb.LeaseGrantRequest(session=s2.next(), ttl_ms=10_000))).id

        # Observe from a follower: it serves the stream from its own history.
        follower = await c.follower()
        observe = follower.client.election.Observe(pb.LeaderRequest(election="primary"))
        first = await asyncio.wait_for(observe.read(), 5)
        assert not first.HasField("leader")  # nobody leads yet

        won = await client.election.Campaign(
            pb.CampaignRequest(session=s1.next(), election="primary", lease=l1, value=b"node-a")
        )
        assert won.leader.lease == l1 and won.leader.fencing_token > 0
        seen = await asyncio.wait_for(observe.read(), 5)
        assert (seen.leader.lease, seen.value) == (l1, b"node-a")

        second = asyncio.ensure_future(
            client.election.Campaign(
                pb.CampaignRequest(session=s2.next(), election="primary", lease=l2, value=b"b")
            )
        )

        async def queued() -> bool:
            return len(leader.loop.fsm.election_candidates("primary")) == 1

        await eventually(queued)
        assert not second.done()
        now = await client.election.Leader(pb.LeaderRequest(election="primary"))
        assert (now.leader.lease, now.value) == (l1, b"node-a")

        await client.election.Proclaim(
            pb.ProclaimRequest(session=s1.next(), leader=won.leader, value=b"node-a:v2")
        )
        proclaimed = await asyncio.wait_for(observe.read(), 5)
        assert proclaimed.value == b"node-a:v2"
        assert proclaimed.leader.fencing_token == won.leader.fencing_token
        # Only the leader may proclaim.
        err = await rpc_error(
            client.election.Proclaim(
                pb.ProclaimRequest(
                    session=s2.next(),
                    leader=pb.LeaderKey(election="primary", lease=l2),
                    value=b"me!",
                )
            )
        )
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "only the leader may proclaim" in err.details()

        await client.election.Resign(pb.ResignRequest(session=s1.next(), leader=won.leader))
        vacant = await asyncio.wait_for(observe.read(), 5)
        assert not vacant.HasField("leader")
        took_over = await asyncio.wait_for(second, 5)
        assert took_over.leader.lease == l2
        assert took_over.leader.fencing_token > won.leader.fencing_token
        next_leader = await asyncio.wait_for(observe.read(), 5)
        assert (next_leader.leader.lease, next_leader.value) == (l2, b"b")
        observe.cancel()

        # The old key no longer works: resigning or proclaiming with it is refused.
        stale = await rpc_error(
            client.election.Resign(pb.ResignRequest(session=s1.next(), leader=won.leader))
        )
        assert stale.code() is grpc.StatusCode.NOT_FOUND

        # A serializable Leader read from a follower sees the new leader eventually.
        async def follower_sees() -> bool:
            got = await follower.client.election.Leader(
                pb.LeaderRequest(election="primary", serializable=True)
            )
            return bool(got.leader.lease == l2)

        await eventually(follower_sees)

    with_cluster(tmp_path, scenario)


def test_observers_wake_only_for_their_election_and_see_every_change_in_order(
    tmp_path: Path,
) -> None:
    observers_n, changes_n = 20, 5

    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        client, hub = leader.client, leader.served.core.watchers
        s = Session(51)
        lease = (await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=10_000))).id
        streams = [
            client.election.Observe(pb.LeaderRequest(election="a")) for _ in range(observers_n)
        ]
        for st in streams:
            first = await asyncio.wait_for(st.read(), 5)
            assert not first.HasField("leader")
        await wait_for(lambda: len(hub) == observers_n)

        # Election "b" changes many times: no observer of "a" wakes, none gets a message.
        woken = hub.woken
        won_b = await client.election.Campaign(
            pb.CampaignRequest(session=s.next(), election="b", lease=lease, value=b"b0")
        )
        for i in range(1, 20):
            await client.election.Proclaim(
                pb.ProclaimRequest(session=s.next(), leader=won_b.leader, value=b"b%d" % i)
            )
        await client.election.Resign(pb.ResignRequest(session=s.next(), leader=won_b.leader))
        await wait_for(lambda: hub.caught_up)
        assert hub.woken == woken
        pending = [asyncio.ensure_future(st.read()) for st in streams]
        await asyncio.sleep(0)
        # No wait for a stray message to show: a stream delivers in order, so one sent for
        # "b" would be what each observer reads first below, instead of "a0".
        assert not any(p.done() for p in pending)

        # Every change of "a" reaches every observer, in order, each one wake-up per change.
        won_a = await client.election.Campaign(
            pb.CampaignRequest(session=s.next(), election="a", lease=lease, value=b"a0")
        )
        expected: list[tuple[int, bytes]] = [(won_a.leader.fencing_token, b"a0")]
        got = [await asyncio.wait_for(p, 5) for p in pending]
        assert hub.woken == woken + observers_n
        seen = [[(m.leader.fencing_token, m.value)] for m in got]
        revisions = [[m.header.revision] for m in got]
        for i in range(1, changes_n):
            await client.election.Proclaim(
                pb.ProclaimRequest(session=s.next(), leader=won_a.leader, value=b"a%d" % i)
            )
            expected.append((won_a.leader.fencing_token, b"a%d" % i))
            for j, st in enumerate(streams):
                m = await asyncio.wait_for(st.read(), 5)
                seen[j].append((m.leader.fencing_token, m.value))
                revisions[j].append(m.header.revision)
            assert hub.woken == woken + observers_n * (i + 1)
        await client.election.Resign(pb.ResignRequest(session=s.next(), leader=won_a.leader))
        for j, st in enumerate(streams):
            m = await asyncio.wait_for(st.read(), 5)
            assert not m.HasField("leader")  # vacant
            revisions[j].append(m.header.revision)
            st.cancel()
        for j in range(observers_n):
            assert seen[j] == expected
            assert revisions[j] == sorted(set(revisions[j]))  # strictly increasing
        await wait_for(lambda: len(hub) == 0)

    with_cluster(tmp_path, scenario)
