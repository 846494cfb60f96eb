"""Product bugs the nemesis found, each reduced to a minimal reproduction.

Each test states the behaviour the documentation promises and is marked `xfail(strict=True)`
while the bug stands: when a fix lands the test passes, strict xfail turns that into a
failure, and whoever fixed it removes the marker (the test then guards the fix).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from coordinator.client import Client
from coordinator.testing.nemesis.cluster import Cluster

pytestmark = pytest.mark.process


@pytest.mark.xfail(
    strict=True,
    reason="a queued Lock is withdrawn when its call's deadline (rpc_timeout_s) passes, and the "
    "client's retry with the same session is refused ABORTED 'no longer queued'",
)
def test_acquire_blocks_longer_than_one_call_timeout(tmp_path: Path) -> None:
    """`Client.acquire` promises to "block until `name` is held": with the library's default
    per-call timeout (3 s) it must still get a lock another client holds for 5 s. Found by the
    nemesis's stalled lock holders (`LockWorkload.stall_p`); also hits `concordctl lock`. The
    unary path (`Client(pipeline=False)`) fails the same way."""

    async def scenario() -> float:
        async with Cluster(tmp_path, 3) as cluster:
            await cluster.wait_ready()
            await cluster.leader()

            def client() -> Client:
                return Client(
                    cluster.endpoints(),
                    credentials=cluster.credentials(),
                    timeout_s=10.0,
                    rpc_timeout_s=3.0,  # the library's default
                )

            async with client() as holder, client() as waiter:
                held = await holder.acquire("x", await holder.lease_grant(30_000))
                lease = await waiter.lease_grant(30_000)
                started = time.perf_counter()

                async def release_later() -> None:
                    await asyncio.sleep(5.0)
                    await holder.release(held)

                releaser = asyncio.create_task(release_later())
                try:
                    await waiter.acquire("x", lease)  # ABORTED after ~3.2 s today
                finally:
                    await releaser
                return time.perf_counter() - started

    waited_s = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert waited_s >= 4.5
