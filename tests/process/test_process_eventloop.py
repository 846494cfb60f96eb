"""`--event-loop` on real member processes: a cluster on the default loop (uvloop) rolled onto
the standard library's one member at a time (so for a while its members run different loops)
keeps every write. Skipped where uvloop is not installed (a dependency: reinstall)."""

from __future__ import annotations

import importlib.util

import pytest

from coordinator.testing.process_cluster import ProcessCluster, run

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None,
    reason="uvloop is not installed (a dependency: reinstall)",
)


def _runs_uvloop(pid: int) -> bool:
    """Whether the process has uvloop's compiled loop mapped (it is imported only on demand)."""
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        return any("uvloop" in line and ".so" in line for line in maps)


def test_a_cluster_rolled_off_uvloop_keeps_every_write(cluster: ProcessCluster) -> None:
    async def scenario() -> None:
        await cluster.wait_ready()
        written: list[bytes] = []
        async with cluster.client() as c:
            for n in range(5):
                written.append(b"before/%d" % n)
                await c.put(written[-1], written[-1])
        for member_id, m in cluster.members.items():
            assert m.pid is not None and _runs_uvloop(m.pid)  # the default
            assert cluster.terminate(member_id) == 0, m.current_log()
            m.extra_args = ["--event-loop", "asyncio"]
            cluster.restart(member_id)
            await cluster.wait_ready(timeout_s=60)
            async with cluster.client() as c:
                written.append(b"after/%d" % member_id)
                await c.put(written[-1], written[-1])
        for m in cluster.members.values():
            assert m.pid is not None and not _runs_uvloop(m.pid)
        async with cluster.client() as c:
            for key in written:
                kv = await c.get(key)
                assert kv is not None and bytes(kv.value) == key

    run(scenario(), 180)
