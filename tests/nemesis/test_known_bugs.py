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


@pytest.mark.parametrize("how", ["lock", "lock-unary", "campaign"])
def test_acquire_blocks_longer_than_one_call_timeout(tmp_path: Path, how: str) -> None:
    """`Client.acquire` promises to "block until `name` is held": with the library's default
    per-call timeout (3 s) it must still get a lock another client holds for 5 s, and a
    campaign must still win an election another client leads for 5 s. Found by the
    nemesis's stalled lock holders (`LockWorkload.stall_p`): the queued request used to be
    withdrawn when one call's deadline passed, and the retry was refused ABORTED "no longer
    queued" (`concordctl lock` too). Fixed by the member answering "still queued" just before
    the deadline (`concord-queued`) and the client re-issuing the same request."""

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
                    pipeline=how != "lock-unary",
                )

            async with client() as holder, client() as waiter:
                lease = await waiter.lease_grant(30_000)
                if how == "campaign":
                    led = await holder.campaign("e", await holder.lease_grant(30_000), b"h")

                    async def release() -> None:
                        await holder.resign(led)

                    async def wait() -> None:
                        await waiter.campaign("e", lease, b"w")
                else:
                    held = await holder.acquire("x", await holder.lease_grant(30_000))

                    async def release() -> None:
                        await holder.release(held)

                    async def wait() -> None:
                        await waiter.acquire("x", lease)

                started = time.perf_counter()

                async def release_later() -> None:
                    await asyncio.sleep(5.0)
                    await release()

                releaser = asyncio.create_task(release_later())
                try:
                    await wait()
                finally:
                    await releaser
                return time.perf_counter() - started

    waited_s = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert waited_s >= 4.5
