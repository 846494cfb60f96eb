"""Held locks and leaderships, and deadlines on blocking calls, against a real 3-member
cluster (tests/server/harness.py): a loss is said at once (a lease revoked behind the holder's
back, a majority stopped), leaving never hides the body's exception, a timed-out or cancelled
waiter leaves the queue (checked with Lock Info), a grant racing a timeout is released, and a
deadline holds with every member down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import (
    Client,
    DeadlineExceeded,
    HeldLeadership,
    HeldLock,
    LockBusy,
    LockLost,
)
from coordinator.testing.ports import free_ports
from tests.server.harness import Cluster, eventually, with_cluster


def endpoints(c: Cluster) -> list[str]:
    return [f"127.0.0.1:{m.served.port}" for m in c.running()]


async def lock_info(c: Cluster, name: str) -> pb.LockInfoResponse:
    """Lock Info from the leader (a linearizable read)."""
    leader = await c.leader()
    info: pb.LockInfoResponse = await leader.client.lock.Info(
        pb.LockInfoRequest(name=name), timeout=5
    )
    return info


def test_lock_lost_when_its_lease_is_revoked_behind_the_holders_back(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        async with Client(endpoints(c)) as a, Client(endpoints(c)) as other:
            async with a.lock("revoked", ttl_ms=3000) as held:
                assert isinstance(held, HeldLock)
                assert not held.lost.is_set() and held.error is None
                held.check()  # held: no error
                called: list[LockLost] = []
                held.add_lost_callback(called.append)

                await other.lease_revoke(held.lease)  # behind the holder's back
                err = await asyncio.wait_for(held.wait_lost(), 10)

                assert err.code == "NOT_FOUND" and "lock 'revoked' is lost" in str(err)
                assert held.lost.is_set() and held.error is err
                with pytest.raises(LockLost):
                    held.check()
                await asyncio.sleep(0)  # callbacks run on the loop, soon after the loss
                assert called == [err]
                late: list[LockLost] = []
                held.add_lost_callback(late.append)  # registered after the loss: still called
                await asyncio.sleep(0)
                assert late == [err]
            # Leaving after a loss raises nothing (the revoke finds no lease: nothing to do),
            # and the lock is free.
            assert not (await lock_info(c, "revoked")).holders

    with_cluster(tmp_path, scenario)


def test_a_lock_released_behind_the_holders_back_is_heard_before_the_next_renewal(
    tmp_path: Path,
) -> None:
    """With a 60 s TTL the first renewal is 20 s away: the loss comes from the handle's watch
    of the lock's events (the bound only keeps a broken build from hanging)."""

    async def scenario(c: Cluster) -> None:
        async with Client(endpoints(c)) as a, Client(endpoints(c)) as other:
            async with a.lock("watched", ttl_ms=60_000) as held:
                await other.release(held.grant)  # the lock, not the lease, let go of
                err = await asyncio.wait_for(held.wait_lost(), 10)
                assert err.code == "NOT_FOUND" and "lock 'watched' is lost" in str(err)
                info = await a.lease_time_to_live(held.lease)  # the lease itself lives on
                assert info.id == held.lease and info.remaining_ms > 0
            async with a.leadership("watched", b"v", ttl_ms=60_000) as lead:
                await lead.proclaim(b"v2")  # its own change is not a loss
                await other.resign(lead.leadership)
                err = await asyncio.wait_for(lead.wait_lost(), 10)
                assert "the leadership of election 'watched' is lost" in str(err)

    with_cluster(tmp_path, scenario)


def test_lock_lost_when_the_majority_stops_and_the_bodys_error_survives_the_release(
    tmp_path: Path,
) -> None:
    """No renewal can succeed without a quorum: the hold is declared lost (UNAVAILABLE) once
    the TTL since the last successful renewal's send has run out. Leaving the block then
    cannot revoke the lease (no quorum), and the body's own exception still comes out."""

    async def scenario(c: Cluster) -> None:
        async with Client(endpoints(c), timeout_s=2, rpc_timeout_s=0.5) as a:
            with pytest.raises(ValueError, match="the body's own error"):
                async with a.lock("majority", ttl_ms=1500) as held:
                    leader = await c.leader()
                    for m in [m for m in c.running() if m is not leader]:
                        await c.stop(m.id)
                    err = await asyncio.wait_for(held.wait_lost(), 20)
                    assert err.code == "UNAVAILABLE"
                    assert "no renewal of lease" in err.message
                    loop = asyncio.get_running_loop()
                    assert loop.time() >= held.expires_at  # never declared before the TTL ran out
                    raise ValueError("the body's own error")

    with_cluster(tmp_path, scenario)


def test_acquire_deadline_with_every_member_down(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        async with Client(endpoints(c), rpc_timeout_s=1.0) as a:
            lease = await a.lease_grant(30_000)
            for m in list(c.running()):
                await c.stop(m.id)
            # The client's own retries (timeout_s=10) would go on for longer: the caller's
            # deadline bounds them. The bound below only keeps a broken build from hanging.
            with pytest.raises(DeadlineExceeded) as err:
                await asyncio.wait_for(a.acquire("down", lease, timeout_s=1), 30)
            assert err.value.code == "DEADLINE_EXCEEDED"
            assert "lock 'down'" in err.value.message and "1 s" in err.value.message
            with pytest.raises(DeadlineExceeded):
                await asyncio.wait_for(a.campaign("down", lease, b"x", timeout_s=0.5), 30)

    with_cluster(tmp_path, scenario)


def test_lock_deadline_with_no_member_listening() -> None:
    ports = free_ports(3)

    async def scenario() -> None:
        async with Client([f"127.0.0.1:{p}" for p in ports], rpc_timeout_s=0.5) as a:
            with pytest.raises(DeadlineExceeded) as err:
                async with a.lock("nobody", timeout_s=1):
                    raise AssertionError("granted by nobody")
            assert err.value.code == "DEADLINE_EXCEEDED" and "lock 'nobody'" in str(err.value)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_timed_out_waiter_leaves_the_queue(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        eps = endpoints(c)
        async with Client(eps) as a, Client(eps) as b, Client(eps) as d:
            async with a.lock("queue", ttl_ms=5000) as first:
                lease_b = await b.lease_grant(30_000)
                with pytest.raises(DeadlineExceeded) as err:
                    await b.acquire("queue", lease_b, timeout_s=0.5)
                assert "lock 'queue' not obtained within the timeout of 0.5 s" in str(err.value)
                info = await lock_info(c, "queue")
                assert [h.lease for h in info.holders] == [first.lease] and info.waiters == 0
                # The lock context manager times out the same way (its lease is revoked).
                with pytest.raises(DeadlineExceeded):
                    async with b.lock("queue", timeout_s=0.3):
                        raise AssertionError("granted while held")
                assert (await lock_info(c, "queue")).waiters == 0

                got: asyncio.Future[HeldLock] = asyncio.get_running_loop().create_future()
                done = asyncio.Event()

                async def third() -> None:
                    async with d.lock("queue", ttl_ms=5000) as held:
                        got.set_result(held)
                        await done.wait()

                task = asyncio.create_task(third())
                await eventually(lambda: _waiters(c, "queue", 1))
            # a lets go: the lock goes straight to d; nobody else is in line or holds it.
            held_d = await asyncio.wait_for(got, 10)
            info = await lock_info(c, "queue")
            assert [h.lease for h in info.holders] == [held_d.lease] and info.waiters == 0
            assert held_d.fencing_token > first.fencing_token
            done.set()
            await asyncio.wait_for(task, 10)
            await b.lease_revoke(lease_b)

    with_cluster(tmp_path, scenario)


async def _waiters(c: Cluster, name: str, count: int) -> bool:
    return (await lock_info(c, name)).waiters == count


def test_a_cancelled_waiter_leaves_the_queue(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        eps = endpoints(c)
        async with Client(eps) as a, Client(eps) as b:
            async with a.lock("cancel", ttl_ms=5000) as first:
                # The context manager: cancelled while queued, it revokes its lease.
                waiting = asyncio.create_task(_enter(b, "cancel"))
                await eventually(lambda: _waiters(c, "cancel", 1))
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                assert (await lock_info(c, "cancel")).waiters == 0
                # A bare acquire: cancelled while queued, it unlocks its (name, lease).
                lease_b = await b.lease_grant(30_000)
                waiting = asyncio.create_task(b.acquire("cancel", lease_b))
                await eventually(lambda: _waiters(c, "cancel", 1))
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                info = await lock_info(c, "cancel")
                assert [h.lease for h in info.holders] == [first.lease] and info.waiters == 0
            assert not (await lock_info(c, "cancel")).holders  # nobody got it behind our back
            await b.lease_revoke(lease_b)

    with_cluster(tmp_path, scenario)


async def _enter(client: Client, name: str) -> None:
    async with client.lock(name, ttl_ms=5000):
        raise AssertionError("granted while held")


def test_a_grant_that_races_the_timeout_is_released(tmp_path: Path) -> None:
    """A free lock and a deadline that has passed before any answer can arrive: the Lock
    request still goes out and may be granted; whichever way each round goes, the grant is
    released (Unlock under the next seq of the same session), never leaked."""

    async def scenario(c: Cluster) -> None:
        eps = endpoints(c)
        async with Client(eps) as b, Client(eps) as other:
            lease_b = await b.lease_grant(30_000)
            start = (await b.put(b"race/mark", b"")) + 1
            for _ in range(5):
                with pytest.raises(DeadlineExceeded):
                    await b.acquire("race", lease_b, timeout_s=0)
                info = await lock_info(c, "race")
                assert not info.holders and info.waiters == 0
            # Somebody else gets it at once: nothing was left held or queued.
            lease_o = await other.lease_grant(30_000)
            got = await other.acquire("race", lease_o, timeout_s=5)
            assert [h.lease for h in (await lock_info(c, "race")).holders] == [lease_o]
            # Every grant to lease_b in the history was followed by its release.
            granted = released = 0
            async for event in other.watch(b"race", start_revision=start):
                if event.kv.lease == lease_b and event.type == pb.Event.LOCK:
                    granted += 1
                elif event.kv.lease == lease_b and event.type == pb.Event.UNLOCK:
                    released += 1
                if event.kv.lease == lease_o:
                    break
            assert granted == released
            await other.release(got)

    with_cluster(tmp_path, scenario)


def test_leadership_is_held_lost_and_resigned(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        eps = endpoints(c)
        async with Client(eps) as a, Client(eps) as b:
            async with a.leadership("chief", b"a", ttl_ms=3000) as lead:
                assert isinstance(lead, HeldLeadership)
                current = await b.leader("chief")
                assert current is not None and current.value == b"a"
                assert current.fencing_token == lead.fencing_token
                await lead.proclaim(b"a2")
                current = await b.leader("chief")
                assert current is not None and current.value == b"a2"
                # A challenger with a deadline does not get in, and leaves no candidacy.
                with pytest.raises(DeadlineExceeded) as err:
                    async with b.leadership("chief", b"b", timeout_s=0.3):
                        raise AssertionError("elected while someone leads")
                assert "the leadership of election 'chief'" in str(err.value)
            assert await b.leader("chief") is None  # resigned on exit, nobody queued behind

            async with a.leadership("chief", b"a", ttl_ms=3000) as lead:
                await b.lease_revoke(lead.lease)
                lost = await asyncio.wait_for(lead.wait_lost(), 10)
                assert lost.code == "NOT_FOUND"
                assert "the leadership of election 'chief' is lost" in str(lost)

    with_cluster(tmp_path, scenario)


# gRPC call deadlines of 1 s and 1.5 s: the waiter must outlast several real rounds.
@pytest.mark.process
@pytest.mark.parametrize("pipeline", [True, False], ids=["pipeline", "unary"])
def test_a_wait_outlasts_a_whole_call_budget_shorter_than_one_round(
    tmp_path: Path, pipeline: bool
) -> None:
    """A client whose `timeout_s` (1 s) is shorter than a blocking round (`rpc_timeout_s`,
    the member answers "still queued" just before it) keeps its place in line across rounds:
    cutting a round short would be a cancellation, which the member takes as giving up."""

    async def scenario(c: Cluster) -> None:
        async with (
            Client(endpoints(c)) as holder,
            Client(endpoints(c), timeout_s=1.0, rpc_timeout_s=1.5, pipeline=pipeline) as waiter,
        ):
            first = await holder.acquire("budget", await holder.lease_grant(30_000))
            campaign_lease = await holder.lease_grant(30_000)
            leader = await holder.campaign("budget-election", campaign_lease, b"first")
            lock_lease = await waiter.lease_grant(30_000)
            election_lease = await waiter.lease_grant(30_000)
            locked = asyncio.create_task(waiter.acquire("budget", lock_lease))
            elected = asyncio.create_task(
                waiter.campaign("budget-election", election_lease, b"second")
            )
            await asyncio.sleep(4)  # several rounds of 1.5 s, each longer than timeout_s
            assert not locked.done() and not elected.done()
            assert (await lock_info(c, "budget")).waiters == 1
            await holder.release(first)
            await holder.resign(leader)
            got = await asyncio.wait_for(locked, 10)
            won = await asyncio.wait_for(elected, 10)
            assert got.fencing_token > first.fencing_token
            assert won.fencing_token > leader.fencing_token

    with_cluster(tmp_path, scenario)


def test_a_lock_without_waiting_is_held_or_busy_at_once_and_queues_nothing(
    tmp_path: Path,
) -> None:
    async def scenario(c: Cluster) -> None:
        async with Client(endpoints(c)) as a, Client(endpoints(c)) as b:
            async with a.lock("now", wait=False) as held:
                with pytest.raises(LockBusy, match="held by someone else"):
                    async with b.lock("now", wait=False):
                        raise AssertionError("granted while held")
                info = await lock_info(c, "now")
                assert [h.lease for h in info.holders] == [held.lease] and info.waiters == 0
            async with b.lock("now", wait=False) as second:  # free again: granted at once
                assert second.fencing_token > held.fencing_token

    with_cluster(tmp_path, scenario)
