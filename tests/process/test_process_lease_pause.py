"""Process test: a lease kept alive by a client survives its leader being SIGSTOPped (issue 20).

The client's one keep-alive stream is on the leader; the stopped leader keeps its sockets open
and answers nothing. The client abandons the stream after `attempt_timeout_s` without an
answer, finds the new leader (the followers elect one within about an election timeout), and
renews there; that leader serves renewals once its first entry applied, giving every lease a
full TTL from then, so the lease is never lost. When the old leader comes back it cannot
acknowledge anything (its renewals need a barrier of a quorum, which now follows another
leader), and the lease still lives.
"""

from __future__ import annotations

import asyncio

import pytest

from coordinator.client import Client
from coordinator.testing.process_cluster import ProcessCluster, poll_until, run

pytestmark = pytest.mark.process

TTL_MS = 3_000


def test_a_lease_survives_a_sigstopped_leader(cluster: ProcessCluster) -> None:
    async def scenario() -> None:
        await cluster.wait_ready()
        leader = await cluster.leader()
        order = [leader, *(i for i in cluster.members if i != leader)]
        async with Client(
            cluster.endpoints(order), credentials=cluster.credentials(), timeout_s=30.0
        ) as client:
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            lease = await client.lease_grant(TTL_MS)
            kept = client.keep_alive(lease, TTL_MS, sent_at=sent_at)

            async def renewed(count: int, timeout_s: float) -> None:
                def alive() -> None:
                    assert not kept.lost.is_set(), kept.reason

                async def enough() -> bool:
                    return kept.renewals >= count

                await poll_until(enough, timeout_s, f"{count} renewals", check=alive)

            await renewed(2, 10)
            cluster.pause(leader)
            try:
                new = await cluster.leader(other_than=leader)
                before = kept.renewals
                # Two TTLs after the stop, renewed on the new leader all along.
                await renewed(before + 6, 30)
                assert not kept.lost.is_set(), kept.reason
            finally:
                cluster.resume(leader)
            before = kept.renewals
            await renewed(before + 3, 20)
            assert not kept.lost.is_set(), kept.reason
            info = await client.lease_time_to_live(lease)
            assert 0 < info.remaining_ms <= TTL_MS
            assert new != leader

    run(scenario(), 120)
