"""Lock acquire+release cycles per second through the sidecar, beside the same through the
client library, in one run.

    python -m bench.sidecar [--seconds 10] [--workers 1,8]

Starts a 3-member coordinator cluster with mutual TLS
(coordinator/testing/process_cluster.py) and a real
`python -m coordinator.sidecar` process in front of it. For each worker count, each worker
takes and releases a lock of its own name (uncontended: this measures the path, not the
queue) for `--seconds`:

- library: `async with client.lock(name)` (lease grant, lock, lease revoke), one client per
  worker;
- sidecar: `POST /v1/locks/{name}` then `DELETE /v1/locks/{name}/holds/{lease}` over HTTP/1.1
  keep-alive from one aiohttp session; the sidecar runs the same library path inside.

Numbers only, printed and written to .results/bench/sidecar-<UTC time>.json; nothing is
asserted (STYLE.md lesson 12). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from coordinator.client import Client
from coordinator.testing.process_cluster import REPO, ProcessCluster

Cycle = Callable[[int], Awaitable[None]]


async def measure(workers: int, seconds: float, cycle: Cycle) -> dict[str, float]:
    """Run `cycle(worker)` in `workers` loops for `seconds`; cycles/s and latency."""
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def loop(worker: int) -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            await cycle(worker)
            latencies.append(time.perf_counter() - started)

    began = time.monotonic()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    elapsed = time.monotonic() - began
    latencies.sort()
    return {
        "cycles": len(latencies),
        "cycles_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def start_sidecar(cluster: ProcessCluster, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    tls = root / "client-tls"
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "ca.pem").write_bytes(cluster.ca.cert_pem)
    (tls / "client.pem").write_bytes(cluster.client_cert.cert_pem)
    (tls / "client-key.pem").write_bytes(cluster.client_cert.key_pem)
    log_path = root / "sidecar.log"
    env = {
        **os.environ,
        "CONCORD_ENDPOINTS": ",".join(cluster.endpoints()),
        "CONCORD_TLS_DIR": str(tls),
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.sidecar", "--listen", "127.0.0.1:0",
             "--log-level", "WARNING"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if line.startswith("concord-sidecar listening on "):
                return proc, int(line.rsplit(":", 1)[1])
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the sidecar did not start: {log_path.read_text()}")


async def run(seconds: float, worker_counts: list[int], root: Path) -> dict[str, Any]:
    cluster = ProcessCluster(root / "cluster")
    cluster.start_all()
    proc: subprocess.Popen[bytes] | None = None
    try:
        await cluster.wait_ready()
        await cluster.leader()
        proc, port = start_sidecar(cluster, root)
        base = f"http://127.0.0.1:{port}"
        results: dict[str, Any] = {}
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(worker_counts))
        ) as http:
            while True:  # ready once the sidecar's session is up
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.1)

            async def via_sidecar(worker: int) -> None:
                name = f"bench-{worker}"
                async with http.post(f"{base}/v1/locks/{name}", json={}) as resp:
                    assert resp.status == 201, await resp.text()
                    lease = (await resp.json())["lease"]
                async with http.delete(f"{base}/v1/locks/{name}/holds/{lease}") as resp:
                    assert resp.status == 200, await resp.text()

            for workers in worker_counts:
                clients = [cluster.client() for _ in range(workers)]

                async def via_library(worker: int, clients: list[Client] = clients) -> None:
                    async with clients[worker].lock(f"bench-{worker}"):
                        pass

                try:
                    await measure(workers, 1.0, via_library)  # warm up both paths
                    await measure(workers, 1.0, via_sidecar)
                    library = await measure(workers, seconds, via_library)
                    sidecar = await measure(workers, seconds, via_sidecar)
                finally:
                    for c in clients:
                        await c.close()
                results[str(workers)] = {"library": library, "sidecar": sidecar}
                print(
                    f"workers={workers:3d}  library {library['cycles_per_s']:7.1f} cycles/s "
                    f"(p50 {library['p50_ms']:.2f} ms)  sidecar {sidecar['cycles_per_s']:7.1f} "
                    f"cycles/s (p50 {sidecar['p50_ms']:.2f} ms)  sidecar/library "
                    f"{sidecar['cycles_per_s'] / library['cycles_per_s']:.2f}x",
                    flush=True,
                )
        return results
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        cluster.close()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sidecar", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", default="1,8", help="comma-separated worker counts")
    args = p.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="concord-bench-sidecar-") as tmp:
        results = asyncio.run(run(args.seconds, counts, Path(tmp)))
    out_dir = REPO / ".results" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"sidecar-{stamp}.json"
    path.write_text(json.dumps({"seconds": args.seconds, "results": results}, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
