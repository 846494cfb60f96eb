"""Leases over gRPC: grant, keep-alive (bidirectional stream), time-to-live, revoke."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.runtime.clock import Clock, SystemClock
from tests.server.harness import Cluster, Session, rpc_error, with_cluster


class SteppedClock:
    """The system clock, plus the steps a test asks for: time passes for the members at once,
    without the test waiting for it."""

    def __init__(self) -> None:
        self._real = SystemClock()
        self._ahead_s = 0.0

    def step(self, seconds: float) -> None:
        self._ahead_s += seconds

    def monotonic_s(self) -> float:
        return self._real.monotonic_s() + self._ahead_s

    def wall_ms(self) -> int:
        return self._real.wall_ms() + round(self._ahead_s * 1000)


class SteppedCluster(Cluster):
    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.clock = SteppedClock()

    def clock_for(self, member: int) -> Clock:
        return self.clock


def test_grant_keepalive_revoke(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        s = Session(21)
        lease = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=3_000))
        assert lease.id > 0 and lease.ttl_ms == 3_000
        await client.kv.Put(pb.PutRequest(session=s.next(), key=b"eph", value=b"x", lease=lease.id))

        stream = client.lease.KeepAlive()
        for _ in range(3):
            await stream.write(pb.LeaseKeepAliveRequest(id=lease.id))
            answer = await asyncio.wait_for(stream.read(), 5)
            assert (answer.id, answer.ttl_ms) == (lease.id, 3_000)
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF

        ttl = await client.lease.TimeToLive(pb.LeaseTimeToLiveRequest(id=lease.id))
        assert ttl.ttl_ms == 3_000 and 0 < ttl.remaining_ms <= 3_000

        await client.lease.Revoke(pb.LeaseRevokeRequest(session=s.next(), id=lease.id))
        assert (await client.kv.Range(pb.RangeRequest(key=b"eph"))).count == 0
        err = await rpc_error(client.lease.TimeToLive(pb.LeaseTimeToLiveRequest(id=lease.id)))
        assert err.code() is grpc.StatusCode.NOT_FOUND
        assert f"lease {lease.id} not found" in err.details()

        # Keeping a lease alive that is gone is answered with TTL 0 (it has ended), and the
        # stream goes on serving the client's other leases.
        other = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=3_000))
        stream = client.lease.KeepAlive()
        await stream.write(pb.LeaseKeepAliveRequest(id=lease.id))
        answer = await asyncio.wait_for(stream.read(), 5)
        assert (answer.id, answer.ttl_ms) == (lease.id, 0)
        await stream.write(pb.LeaseKeepAliveRequest(id=other.id))
        answer = await asyncio.wait_for(stream.read(), 5)
        assert (answer.id, answer.ttl_ms) == (other.id, 3_000)
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF

        # A duplicate Grant (same session) is answered, not executed: same id, no new lease.
        again = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=5_000))
        dup = await client.lease.Grant(pb.LeaseGrantRequest(session=s.same(), ttl_ms=5_000))
        assert dup.id == again.id

    with_cluster(tmp_path, scenario)


def test_renewals_sent_together_are_answered_together(tmp_path: Path) -> None:
    """Renewals in one message (`ids`) are answered in responses' `renewed` (every answer
    decided by then in one response), a lease that is gone with TTL 0, and a single `id` on
    the same stream still in `id`: one message per renewal each way is what a member cannot
    afford for thousands of leases."""

    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        s = Session(23)
        leases = [
            (await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=ttl))).id
            for ttl in (3_000, 4_000, 5_000)
        ]
        gone = leases.pop()
        await client.lease.Revoke(pb.LeaseRevokeRequest(session=s.next(), id=gone))

        stream = client.lease.KeepAlive()
        await stream.write(pb.LeaseKeepAliveRequest(ids=[*leases, gone]))
        answered: dict[int, int] = {}
        responses = 0
        while len(answered) < 3:
            resp = await asyncio.wait_for(stream.read(), 5)
            assert resp.id == 0 and resp.renewed
            responses += 1
            answered.update((r.id, r.ttl_ms) for r in resp.renewed)
        assert answered == {leases[0]: 3_000, leases[1]: 4_000, gone: 0}
        assert responses == 1  # decided by one barrier, written in one response

        await stream.write(pb.LeaseKeepAliveRequest(id=leases[0]))
        resp = await asyncio.wait_for(stream.read(), 5)
        assert (resp.id, resp.ttl_ms, list(resp.renewed)) == (leases[0], 3_000, [])

        # A bad id in a batch ends the stream like a bad single id.
        await stream.write(pb.LeaseKeepAliveRequest(ids=[leases[1], 0]))
        err = await rpc_error(stream.read())
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT

    with_cluster(tmp_path, scenario)


def test_more_answers_than_a_response_holds_go_on_in_the_next(tmp_path: Path) -> None:
    """One message's renewals are decided together; their answers fill responses of at most
    4,096 and the rest follow in the next, none lost or doubled. An id out of range among
    them ends the stream before any is renewed."""

    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        s = Session(25)
        lease = (await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=3_000))).id
        stream = client.lease.KeepAlive()
        await stream.write(pb.LeaseKeepAliveRequest(ids=[lease] * 5_000))
        sizes = []
        while sum(sizes) < 5_000:
            resp = await asyncio.wait_for(stream.read(), 5)
            assert {(r.id, r.ttl_ms) for r in resp.renewed} == {(lease, 3_000)}
            sizes.append(len(resp.renewed))
        assert sizes == [4_096, 904]

        await stream.write(pb.LeaseKeepAliveRequest(ids=[lease, 2**63]))
        err = await rpc_error(stream.read())
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "out of range" in err.details()

    with_cluster(tmp_path, scenario)


def test_a_renewal_does_not_wait_for_the_barrier_asked_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewals are confirmed by barriers in flight together (up to a bound): one arriving
    while a barrier is on its way takes its own at once. When they went one at a time, it
    waited for the round trip before its own too: under a burst of lock acquisitions that
    doubled a renewal's wait, all of it out of the lease's TTL. Here the first barrier is held
    up until the second renewal has been answered, as a busy leader's are."""

    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        client, s = leader.client, Session(23)
        first = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=30_000))
        second = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=30_000))
        core = leader.served.core
        confirm = core.confirm_leading
        first_waiting, release_first = asyncio.Event(), asyncio.Event()

        async def held_once() -> None:
            if not first_waiting.is_set():
                first_waiting.set()
                await release_first.wait()
            await confirm()

        monkeypatch.setattr(core, "confirm_leading", held_once)
        stream = client.lease.KeepAlive()
        await stream.write(pb.LeaseKeepAliveRequest(id=first.id))
        await asyncio.wait_for(first_waiting.wait(), 10)
        await stream.write(pb.LeaseKeepAliveRequest(id=second.id))
        # Answered while the first renewal's barrier is still held up: its own barrier.
        answer = await asyncio.wait_for(stream.read(), 10)
        assert (answer.id, answer.ttl_ms) == (second.id, 30_000)
        release_first.set()
        answer = await asyncio.wait_for(stream.read(), 10)
        assert (answer.id, answer.ttl_ms) == (first.id, 30_000)
        await stream.done_writing()

    with_cluster(tmp_path, scenario)


def test_time_to_live_comes_from_the_leaders_lessor(tmp_path: Path) -> None:
    """Only the leader knows the renewals (they are not in the log): it answers TimeToLive from
    its lessor, counting from the latest renewal; a follower redirects the question to it."""

    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        client = leader.client
        s = Session(22)
        lease = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=5_000))
        assert isinstance(c, SteppedCluster)
        c.clock.step(1.0)  # a second of the TTL passes on every member's clock
        before = await client.lease.TimeToLive(pb.LeaseTimeToLiveRequest(id=lease.id))
        assert before.remaining_ms <= 4_100
        stream = client.lease.KeepAlive()
        await stream.write(pb.LeaseKeepAliveRequest(id=lease.id))
        assert (await asyncio.wait_for(stream.read(), 5)).ttl_ms == 5_000
        after = await client.lease.TimeToLive(pb.LeaseTimeToLiveRequest(id=lease.id))
        assert 4_500 < after.remaining_ms <= 5_000  # renewed, without a log entry
        await stream.done_writing()

        follower = await c.follower()
        err = await rpc_error(
            follower.client.lease.TimeToLive(pb.LeaseTimeToLiveRequest(id=lease.id))
        )
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert "not the leader" in err.details()

    with_cluster(tmp_path, scenario, cluster=SteppedCluster)
