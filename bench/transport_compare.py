"""Sequential writes on a 3-member Concord cluster with each peer transport, alternated in
one invocation so that both see the same machine (`python -m bench.transport_compare
[--writes N] [--rounds R]`).

Each round starts a fresh cluster per transport (`--peer-transport grpc|frames`, mutual TLS,
fsync on, the member's default tick), puts 64-byte values one at a time through the library
client on the leader after a warm-up, and prints p50/p99; the last line gives the medians
over the rounds and the frames/grpc ratio (the machine is shared, so ratios are what
compare). Benchmarks print numbers; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from coordinator.client import Client
from coordinator.testing.process_cluster import ProcessCluster

from .floor import print_medians, summary
from .systems.concord import _member_defaults

VALUE = b"v" * 64


async def sequential(kind: str, root: Path, writes: int, warmup: int) -> dict[str, Any]:
    tick_ms, election_ticks = _member_defaults()
    cluster = ProcessCluster(
        root / kind, 3, tick_ms=tick_ms, election_ticks=election_ticks, cluster_id="bench"
    )
    for m in cluster.members.values():
        m.extra_args = ["--peer-transport", kind]
    client: Client | None = None
    try:
        cluster.start_all()
        await cluster.wait_ready(timeout_s=60)
        leader = await cluster.leader(timeout_s=30)
        order = [leader, *(i for i in cluster.members if i != leader)]
        client = Client(cluster.endpoints(order), credentials=cluster.credentials())
        for n in range(warmup):
            await client.put(f"warm/{n}".encode(), VALUE)
        latencies = []
        for n in range(writes):
            started = time.perf_counter()
            await client.put(f"k/{n}".encode(), VALUE)
            latencies.append(time.perf_counter() - started)
    finally:
        if client is not None:
            await client.close()
        cluster.close()
    return {"system": f"concord-{kind}", "figure": "write", "concurrency": 1, **summary(latencies)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.transport_compare")
    p.add_argument("--writes", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"grpc": [], "frames": []}
    with tempfile.TemporaryDirectory(prefix="bench-transports-", dir="/var/tmp") as tmp:
        for r in range(a.rounds):
            for kind, results in runs.items():
                result = asyncio.run(sequential(kind, Path(tmp) / str(r), a.writes, a.warmup))
                results.append(result)
                print(json.dumps(result), flush=True)
    print_medians(runs, a.rounds)


if __name__ == "__main__":
    main()
