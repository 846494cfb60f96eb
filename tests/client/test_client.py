"""The client library against a real 3-member cluster: redirects, retries, locks, sequences."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import Client, ConcordError
from coordinator.testing.ports import free_ports
from tests.server.harness import Cluster, eventually, with_cluster


def endpoints(c: Cluster) -> list[str]:
    return [f"127.0.0.1:{m.served.port}" for m in c.running()]


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipeline", "unary"])
def test_writes_through_a_follower_follow_the_redirect(tmp_path: Path, pipeline: bool) -> None:
    async def scenario(c: Cluster) -> None:
        await c.register_directory()
        follower = await c.follower()
        async with Client([f"127.0.0.1:{follower.served.port}"], pipeline=pipeline) as client:
            rev = await client.put(b"k", b"v1")
            assert rev > 0
            assert await client.cas(b"k", b"v1", b"v2")
            assert not await client.cas(b"k", b"v1", b"v3")
            assert await client.cas(b"new", None, b"x")
            assert not await client.cas(b"new", None, b"y")
            kv = await client.get(b"k")
            assert kv is not None and kv.value == b"v2"
            assert await client.delete(b"k") == 1
            assert await client.get(b"k") is None

    with_cluster(tmp_path, scenario)


def test_lock_context_manager_gives_increasing_fencing_tokens(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        async with Client(endpoints(c)) as a, Client(endpoints(c)) as b:
            order: list[str] = []
            async with a.lock("jobs", ttl_ms=3000) as first:
                assert await a.check_fence("jobs", first.fencing_token)
                waiter = asyncio.create_task(_hold(b, "jobs", order))

                async def queued() -> bool:
                    leader = await c.leader()
                    info = await leader.client.lock.Info(pb.LockInfoRequest(name="jobs"), timeout=5)
                    return bool(info.waiters == 1)

                await eventually(queued)  # b waits behind a (it must not get in)
                order.append("a-done")
            second = await asyncio.wait_for(waiter, 10)
            assert order == ["a-done", "b-in"]
            assert second > first.fencing_token
            assert not await a.check_fence("jobs", first.fencing_token)

    with_cluster(tmp_path, scenario)


async def _hold(client: Client, name: str, order: list[str]) -> int:
    async with client.lock(name, ttl_ms=3000) as held:
        order.append("b-in")
        return held.fencing_token


def test_sequences_never_repeat_and_errors_are_clear(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        async with Client(endpoints(c)) as client:
            await client.sequence_create("orders")
            first = await client.sequence_next("orders", 3)
            second = await client.sequence_next("orders", 2)
            assert first == [1, 2, 3] and second == [4, 5]
            with pytest.raises(ConcordError) as err:
                await client.sequence_next("nope")
            assert err.value.code == "NOT_FOUND"
            with pytest.raises(ConcordError) as err:
                await client.put(b"", b"x")
            assert err.value.code == "INVALID_ARGUMENT"

    with_cluster(tmp_path, scenario)


def test_client_survives_the_leader_stopping(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        await c.register_directory()
        async with Client(endpoints(c), timeout_s=20) as client:
            await client.sequence_create("ids")
            before = await client.sequence_next("ids")
            leader = await c.leader()
            await c.stop(leader.id)
            after = await client.sequence_next("ids")
            assert after[0] > before[0]
            members = await client.members()
            assert len(members.members) == 3

    with_cluster(tmp_path, scenario)


def test_one_client_shared_by_many_tasks(tmp_path: Path) -> None:
    """Concurrent calls on one Client each run under their own session, so none is taken for
    a late duplicate of another; a blocking lock waits while puts go on around it."""

    async def scenario(c: Cluster) -> None:
        async with Client(endpoints(c)) as shared, Client(endpoints(c)) as other:
            await shared.sequence_create("ids")
            async with other.lock("busy", ttl_ms=3000):
                waiting = asyncio.create_task(_hold(shared, "busy", []))
                revisions = await asyncio.gather(
                    *(shared.put(f"k/{i}".encode(), b"v") for i in range(40))
                )
                values = await asyncio.gather(*(shared.sequence_next("ids") for _ in range(20)))
                assert not waiting.done()  # still in line behind `other`, not failed
            token = await asyncio.wait_for(waiting, 10)
            assert token > 0
            assert len(set(revisions)) == 40
            flat = [v for block in values for v in block]
            assert sorted(flat) == list(range(1, 21))
            for i in range(40):
                kv = await shared.get(f"k/{i}".encode())
                assert kv is not None and kv.value == b"v"

    with_cluster(tmp_path, scenario)


def test_calls_failing_together_on_a_dead_member_move_on_once(tmp_path: Path) -> None:
    """Three calls fail at once on a dead first endpoint; with three endpoints, advancing
    once per failed call would bring every retry back to the dead one."""

    async def scenario(c: Cluster) -> None:
        (port,) = free_ports(1)
        dead = f"127.0.0.1:{port}"  # nothing listens there
        leader = await c.leader()
        follower = await c.follower()
        eps = [dead, f"127.0.0.1:{leader.served.port}", f"127.0.0.1:{follower.served.port}"]
        async with Client(eps, timeout_s=5) as client:
            revisions = await asyncio.gather(*(client.put(b"k%d" % i, b"v") for i in range(3)))
            assert len(set(revisions)) == 3

    with_cluster(tmp_path, scenario)
