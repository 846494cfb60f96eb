"""A hold whose renewals cannot succeed is declared lost the moment its TTL has run out,
however long the client would go on retrying one renewal (tests/server/harness.py cluster).

The keeper bounds each renewal by the lease's own expiry. Without that bound a renewal
against a dead cluster runs for the client's whole call budget, and the holder goes on
acting as the holder long after anyone else may have been granted the lock: the other hold
tests use a short call budget, so they could not tell."""

from __future__ import annotations

import asyncio
from pathlib import Path

from coordinator.client import Client
from tests.server.harness import Cluster, with_cluster

TTL_MS = 1500
BUDGET_S = 60.0
"""The client's call budget: far beyond the test's bound, so only the TTL can end a renewal."""


def test_a_hold_is_lost_when_its_ttl_runs_out_not_when_the_client_gives_up(
    tmp_path: Path,
) -> None:
    async def scenario(c: Cluster) -> None:
        endpoints = [f"127.0.0.1:{m.served.port}" for m in c.running()]
        loop = asyncio.get_running_loop()
        async with (
            Client(
                endpoints, timeout_s=BUDGET_S, connect_timeout_s=BUDGET_S, rpc_timeout_s=0.5
            ) as a,
            a.lock("renewals", ttl_ms=TTL_MS) as held,
        ):
            for m in list(c.running()):  # every member: no renewal can succeed
                await c.stop(m.id)
            stopped_at = loop.time()
            assert not held.lost.is_set()

            err = await asyncio.wait_for(held.wait_lost(), 4 * TTL_MS / 1000)

            lost_at = loop.time()
            assert err.code == "UNAVAILABLE" and "no renewal of lease" in err.message
            assert held.error is err and held.lost.is_set()
            assert lost_at >= held.expires_at  # never before the TTL ran out ...
            # ... and told when it did (the bound is slack for a loaded machine; without
            # the keeper's bound the loss comes with the client's budget, a minute on).
            assert lost_at - held.expires_at < 1.0
            assert lost_at - stopped_at < TTL_MS / 1000 + 1.0

    with_cluster(tmp_path, scenario)
