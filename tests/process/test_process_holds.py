"""Process tests of held locks and deadlines (issue 13): three real members with mutual TLS.

- A majority paused with SIGSTOP: the holder's renewals cannot commit, so its handle declares
  the lock lost (UNAVAILABLE) once the TTL since the last successful renewal's send has run
  out; once the members resume, the lock is free for someone else (nothing leaked).
- Every member paused: nothing answers at all (connections hang rather than fail), and a
  blocking acquire with a deadline still returns DEADLINE_EXCEEDED, bounded.

Every wait is bounded; members are always resumed (SIGCONT) before the cluster is torn down.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest

from coordinator.client import DeadlineExceeded
from coordinator.testing.process_cluster import ProcessCluster, run

pytestmark = pytest.mark.process


@contextmanager
def paused(cluster: ProcessCluster, ids: Iterable[int]) -> Iterator[None]:
    """SIGSTOP the members `ids` for the block; SIGCONT them whatever happens."""
    pids = [cluster.members[i].pid for i in ids]
    try:
        for pid in pids:
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            if pid is not None:
                os.kill(pid, signal.SIGCONT)


def test_a_lock_is_reported_lost_while_a_majority_is_paused(cluster: ProcessCluster) -> None:
    async def scenario() -> None:
        await cluster.wait_ready()
        leader = await cluster.leader()
        followers = [i for i in cluster.members if i != leader]
        holder = cluster.client(timeout_s=5, rpc_timeout_s=0.5)
        async with holder, holder.lock("paused", ttl_ms=2000, timeout_s=20) as held:
            with paused(cluster, followers):
                err = await asyncio.wait_for(held.wait_lost(), 30)
                assert err.code == "UNAVAILABLE", err
                assert "lock 'paused' is lost: no renewal of lease" in str(err)
                assert held.lost.is_set()
        # Resumed: the lock is free again (revoked on the way out, or expired), never kept.
        async with cluster.client() as other:
            lease = await other.lease_grant(10_000)
            got = await other.acquire("paused", lease, timeout_s=30)
            assert got.fencing_token > held.fencing_token

    run(scenario(), 120)


def test_acquire_deadline_with_every_member_paused(cluster: ProcessCluster) -> None:
    async def scenario() -> None:
        await cluster.wait_ready()
        await cluster.leader()
        async with cluster.client(rpc_timeout_s=1.0) as c:
            lease = await c.lease_grant(5_000)
            with paused(cluster, cluster.members):
                # The bound below only keeps a broken build from hanging the suite.
                async with asyncio.timeout(30):
                    with pytest.raises(DeadlineExceeded) as err:
                        await c.acquire("frozen", lease, timeout_s=1)
                    assert err.value.code == "DEADLINE_EXCEEDED"
                    assert "lock 'frozen' not obtained within the timeout of 1 s" in str(err.value)
                    with pytest.raises(DeadlineExceeded):
                        async with c.lock("frozen", timeout_s=1):
                            raise AssertionError("granted by paused members")

    run(scenario(), 120)
