"""Locks over gRPC: blocking acquisition, fencing tokens, lease expiry, semaphores,
CheckFence, try-lock, and withdrawal of a cancelled or timed-out wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from coordinator.api.v1 import concord_pb2 as pb
from tests.server.harness import (
    Client,
    Cluster,
    Session,
    answers,
    eventually,
    rpc_error,
    with_cluster,
)


async def grant(client: Client, s: Session, ttl_ms: int = 10_000) -> int:
    lease = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=ttl_ms))
    return int(lease.id)


async def waiters(client: Client, name: str) -> int:
    info = await client.lock.Info(pb.LockInfoRequest(name=name))
    return int(info.waiters)


async def waiters_are(client: Client, name: str, expected: int) -> bool:
    return await waiters(client, name) == expected


def test_contending_clients_block_until_unlock_with_increasing_tokens(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        a = (await c.leader()).client
        b = Client((await c.leader()).served.port)  # a second client connection
        try:
            sa, sb = Session(31), Session(32)
            la, lb = await grant(a, sa), await grant(b, sb)
            first = await a.lock.Lock(
                pb.LockRequest(session=sa.next(), name="job", lease=la, wait=True)
            )
            assert first.granted
            blocked = asyncio.ensure_future(
                b.lock.Lock(pb.LockRequest(session=sb.next(), name="job", lease=lb, wait=True))
            )
            await eventually(lambda: waiters_are(a, "job", 1))
            assert not blocked.done()
            fence = await a.lock.CheckFence(
                pb.CheckFenceRequest(name="job", fencing_token=first.fencing_token)
            )
            assert fence.current

            unlocked = await a.lock.Unlock(
                pb.UnlockRequest(session=sa.next(), name="job", lease=la)
            )
            assert unlocked.held
            second = await asyncio.wait_for(blocked, 5)
            assert second.granted and second.fencing_token > first.fencing_token
            stale = await a.lock.CheckFence(
                pb.CheckFenceRequest(name="job", fencing_token=first.fencing_token)
            )
            assert not stale.current

            # Re-acquiring is idempotent for the holder; a third round gets a bigger token.
            again = await b.lock.Lock(
                pb.LockRequest(session=sb.next(), name="job", lease=lb, wait=True)
            )
            assert again.fencing_token == second.fencing_token
            await b.lock.Unlock(pb.UnlockRequest(session=sb.next(), name="job", lease=lb))
            third = await a.lock.Lock(
                pb.LockRequest(session=sa.next(), name="job", lease=la, wait=True)
            )
            assert third.fencing_token > second.fencing_token

            # An Unlock by the waiting lease withdraws it: the blocked Lock is told so.
            withdrawn = asyncio.ensure_future(
                b.lock.Lock(pb.LockRequest(session=sb.next(), name="job", lease=lb, wait=True))
            )
            await eventually(lambda: waiters_are(a, "job", 1))
            left = await a.lock.Unlock(pb.UnlockRequest(session=sa.next(), name="job", lease=lb))
            assert not left.held
            err = await rpc_error(withdrawn)
            assert err.code() is grpc.StatusCode.ABORTED and "withdrawn by Unlock" in err.details()

            # A blocked Lock whose client cancels is withdrawn from the queue ...
            cancelled = b.lock.Lock(
                pb.LockRequest(session=sb.next(), name="job", lease=lb, wait=True)
            )
            await eventually(lambda: waiters_are(a, "job", 1))
            cancelled.cancel()
            await eventually(lambda: waiters_are(a, "job", 0))
            holders = await a.lock.Info(pb.LockInfoRequest(name="job"))
            assert [h.lease for h in holders.holders] == [la]
        finally:
            await b.close()

    with_cluster(tmp_path, scenario)


# Real gRPC deadlines (1 s, then 5 s) decide when "still queued" is answered: wall time.
@pytest.mark.process
def test_a_waiter_near_its_deadline_is_told_so_and_keeps_its_place(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        a = (await c.leader()).client
        b = Client((await c.leader()).served.port)
        try:
            sa, sb = Session(33), Session(34)
            la, lb = await grant(a, sa), await grant(b, sb)
            held = await a.lock.Lock(
                pb.LockRequest(session=sa.next(), name="job", lease=la, wait=True)
            )
            assert held.granted

            # One whose deadline comes near is told so before it passes, and keeps its place:
            # re-issuing the same request (same session) waits on and gets the grant.
            queued = pb.LockRequest(session=sb.next(), name="job", lease=lb, wait=True)
            loop = asyncio.get_running_loop()
            started = loop.time()
            err = await rpc_error(b.lock.Lock(queued, timeout=1.0))
            answered_s = loop.time() - started
            assert err.code() is grpc.StatusCode.UNAVAILABLE, err
            assert "still queued" in err.details()
            assert ("concord-queued", "1") in tuple(err.trailing_metadata() or ())
            assert 0.5 <= answered_s < 1.0
            assert await waiters(a, "job") == 1
            again_queued = asyncio.ensure_future(b.lock.Lock(queued, timeout=5.0))
            await asyncio.sleep(0.3)
            assert not again_queued.done()
            await a.lock.Unlock(pb.UnlockRequest(session=sa.next(), name="job", lease=la))
            granted = await asyncio.wait_for(again_queued, 5)
            assert granted.granted and granted.fencing_token > held.fencing_token
        finally:
            await b.close()

    with_cluster(tmp_path, scenario)


def test_an_expired_holder_lease_grants_the_waiter(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        s = Session(33)
        short = await grant(client, s, ttl_ms=1_000)  # never kept alive
        long = await grant(client, s, ttl_ms=30_000)
        held = await client.lock.Lock(
            pb.LockRequest(session=s.next(), name="leader-job", lease=short, wait=True)
        )
        waiter = Session(34)
        got = await asyncio.wait_for(
            client.lock.Lock(
                pb.LockRequest(session=waiter.next(), name="leader-job", lease=long, wait=True)
            ),
            10,
        )
        assert got.granted and got.fencing_token > held.fencing_token
        gone = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=1_000))
        assert gone.id != short
        info = await client.lock.Info(pb.LockInfoRequest(name="leader-job"))
        assert [h.lease for h in info.holders] == [long]

        # A waiter whose own lease is revoked is told so (NOT_FOUND), not left hanging.
        third = await grant(client, s)
        pending = asyncio.ensure_future(
            client.lock.Lock(
                pb.LockRequest(session=s.next(), name="leader-job", lease=third, wait=True)
            )
        )
        await eventually(lambda: waiters_are(client, "leader-job", 1))
        await client.lease.Revoke(pb.LeaseRevokeRequest(session=Session(35).next(), id=third))
        err = await rpc_error(pending)
        assert err.code() is grpc.StatusCode.NOT_FOUND
        assert f"lease {third} was revoked while waiting" in err.details()

    with_cluster(tmp_path, scenario)


def test_semaphore_with_two_holders_and_try_lock(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        s = Session(36)
        leases = [await grant(client, s) for _ in range(3)]

        def req(lease: int, wait: bool) -> pb.LockRequest:
            return pb.LockRequest(
                session=s.next(), name="pool", lease=lease, max_holders=2, wait=wait
            )

        one = await client.lock.Lock(req(leases[0], True))
        two = await client.lock.Lock(req(leases[1], True))
        assert one.granted and two.granted and two.fencing_token > one.fencing_token
        # A try-lock on a full semaphore answers at once and does not stay queued.
        tried = await client.lock.Lock(req(leases[2], False))
        assert not tried.granted and tried.fencing_token == 0
        assert await waiters(client, "pool") == 0
        third = asyncio.ensure_future(client.lock.Lock(req(leases[2], True)))
        await eventually(lambda: waiters_are(client, "pool", 1))
        # Joining with another max_holders is refused with the value in use.
        err = await rpc_error(
            client.lock.Lock(
                pb.LockRequest(session=s.next(), name="pool", lease=leases[2], max_holders=3)
            )
        )
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "max_holders=2" in err.details()
        await client.lock.Unlock(pb.UnlockRequest(session=s.next(), name="pool", lease=leases[0]))
        got = await asyncio.wait_for(third, 5)
        assert got.granted and got.fencing_token > two.fencing_token
        info = await client.lock.Info(pb.LockInfoRequest(name="pool", serializable=True))
        assert sorted(h.lease for h in info.holders) == sorted(leases[1:])
        for token, current in ((one.fencing_token, False), (got.fencing_token, True)):
            fence = await client.lock.CheckFence(
                pb.CheckFenceRequest(name="pool", fencing_token=token)
            )
            assert fence.current is current

    with_cluster(tmp_path, scenario)


def test_a_waiter_is_told_when_its_member_loses_the_quorum(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        a = leader.client
        sa, sb = Session(41), Session(42)
        la, lb = await grant(a, sa), await grant(a, sb)
        held = await a.lock.Lock(pb.LockRequest(session=sa.next(), name="job", lease=la))
        assert held.granted
        blocked = asyncio.ensure_future(
            a.lock.Lock(
                pb.LockRequest(session=sb.next(), name="job", lease=lb, wait=True), timeout=30
            )
        )
        await eventually(lambda: waiters_are(a, "job", 1))
        loop = asyncio.get_running_loop()
        started = loop.time()
        for m in list(c.running()):
            if m is not leader:
                await c.stop(m.id)
        err = await rpc_error(blocked)
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err
        assert "no quorum" in err.details(), err.details()
        assert f"Lease {lb} keeps its place in the queue" in err.details(), err.details()
        assert loop.time() - started < 10

    with_cluster(tmp_path, scenario)


def test_a_release_and_the_grant_it_causes_are_answered_together(tmp_path: Path) -> None:
    """On one Pipeline stream, the Unlock's answer and the waiter's grant leave in one
    message: a grant that trailed would let the releasing client's next request reach the
    leader first and delay the new holder's release by a whole Raft round."""

    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        sa, sb = Session(51), Session(52)
        la, lb = await grant(client, sa), await grant(client, sb)
        stream = client.pipeline.Stream()

        async def send(call: pb.PipelineCall) -> None:
            await stream.write(pb.PipelineRequest(calls=[call]))

        await send(
            pb.PipelineCall(id=1, lock=pb.LockRequest(session=sa.next(), name="j", lease=la))
        )
        first = await answers(stream)
        assert [r.id for r in first.results] == [1] and first.results[0].lock.granted
        waiting = pb.LockRequest(session=sb.next(), name="j", lease=lb, wait=True)
        await send(pb.PipelineCall(id=2, lock=waiting))
        await eventually(lambda: waiters_are(client, "j", 1))
        await send(
            pb.PipelineCall(id=3, unlock=pb.UnlockRequest(session=sa.next(), name="j", lease=la))
        )
        both = await answers(stream)
        by_id = {r.id: r for r in both.results}
        assert sorted(by_id) == [2, 3], f"answered apart: {sorted(by_id)} first"
        assert by_id[3].unlock.held and by_id[2].lock.granted
        assert by_id[2].lock.fencing_token > first.results[0].lock.fencing_token
        await stream.done_writing()

    with_cluster(tmp_path, scenario)
