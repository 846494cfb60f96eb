"""The operator under load: many Lease objects whose holders keep changing.

    python -m bench.operator_churn [--leases 1000] [--workers 32] [--seconds 60]

Starts the project's own control plane (coordinator/testing/controlplane.py), a 3-member coordinator
cluster with mutual TLS (coordinator/testing/process_cluster.py) and `python -m
concord_operator` as a process, creates the Lease objects, waits until every one is Ready,
then lets `--workers`
clients take and release random locks among them for `--seconds`. It reports:

- the operator's RSS and CPU (from /proc) while it mirrors the churn;
- the API server's writes per second to the Lease objects (every MODIFIED event of a watch on
  the namespace: status patches and kopf's own writes alike);
- status lag: for every grant, the time from the acquire returning to the first Lease status
  whose fencingToken reaches the grant's token, p50 / p99 (a grant coalesced into a later
  write counts until that write);
- how long it took for every object to become Ready at the start.

Numbers only, printed and written to .results/bench/operator-<UTC time>.json; nothing is
asserted (STYLE.md lesson 12). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes.watch

from coordinator.testing.controlplane import ControlPlaneError, locate_binaries, start_control_plane
from coordinator.testing.process_cluster import ProcessCluster
from coordinator.testing.procs import histogram_buckets, histogram_quantile, metric
from tests.kube.operator_harness import GROUP, VERSION, OperatorProcess, client_tls_dir

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
STEP = "concord_operator_reconcile_step_seconds"


def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds used so far, RSS MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks
    rss_mib = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return cpu_s, rss_mib


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Watcher:
    """Every Lease write in the namespace: (time, name, fencingToken), from one watch."""

    def __init__(self, custom: kubernetes.client.CustomObjectsApi) -> None:
        self.custom = custom
        self.events: list[tuple[float, str, int]] = []
        self.token_seen: dict[str, list[tuple[float, int]]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:
            if not self.stop.is_set():  # the API server going away at the end is expected
                raise

    def _follow(self) -> None:
        while not self.stop.is_set():
            w = kubernetes.watch.Watch()
            for event in w.stream(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                NAMESPACE,
                "leases",
                timeout_seconds=30,
            ):
                if self.stop.is_set():
                    w.stop()
                    break
                if event["type"] != "MODIFIED":
                    continue
                obj = event["object"]
                name = obj["metadata"]["name"]
                token = int((obj.get("status") or {}).get("fencingToken") or 0)
                now = time.monotonic()
                self.events.append((now, name, token))
                self.token_seen.setdefault(name, []).append((now, token))

    def lag_s(self, name: str, token: int, since: float) -> float | None:
        for at, seen in self.token_seen.get(name, []):
            if at >= since and seen >= token:
                return at - since
        return None


async def churn(
    cluster: ProcessCluster, names: list[str], workers: int, seconds: float
) -> list[tuple[str, int, float]]:
    """Random acquire / hold / release cycles; returns (name, token, acquired at)."""
    grants: list[tuple[str, int, float]] = []
    deadline = time.monotonic() + seconds

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        async with cluster.client() as client:
            lease = await client.lease_grant(15_000)
            renewed = time.monotonic()
            while time.monotonic() < deadline:
                name = rng.choice(names)
                held = await client.acquire(f"k8s/{NAMESPACE}/{name}", lease)
                grants.append((name, held.fencing_token, time.monotonic()))
                await asyncio.sleep(rng.uniform(0.05, 0.3))
                await client.release(held)
                if time.monotonic() - renewed > 5.0:
                    await client.lease_keepalive_once(lease)
                    renewed = time.monotonic()
            await client.lease_revoke(lease)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return grants


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_churn")
    parser.add_argument("--leases", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    bin_dir, why = locate_binaries()
    if bin_dir is None:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory(prefix="concord-opbench-") as tmp:
        root = Path(tmp)
        plane = start_control_plane(bin_dir, root / "kube")
        cluster = ProcessCluster(root / "coord", 3)
        op: OperatorProcess | None = None
        try:
            cluster.start_all()
            asyncio.run(cluster.wait_ready())
            plane.kubectl("create", "namespace", NAMESPACE)
            config = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(
                config_file=str(plane.kubeconfig), client_configuration=config
            )
            custom = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))
            names = [f"l{i:05d}" for i in range(args.leases)]
            items = [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "Lease",
                    "metadata": {"name": n, "namespace": NAMESPACE},
                    "spec": {"ttlSeconds": 15},
                }
                for n in names
            ]
            for i in range(0, len(items), 200):
                doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items[i : i + 200]})
                plane.kubectl("apply", "-f", "-", input=doc)
            op = OperatorProcess(
                root,
                "bench",
                cluster.endpoints(),
                client_tls_dir(cluster),
                plane.kubeconfig,
                NAMESPACE,
                "--log-level",
                "WARNING",
            ).start()
            assert op.popen is not None
            started = time.monotonic()
            while True:
                listed = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "leases")
                ready = sum(
                    any(
                        c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (o.get("status") or {}).get("conditions", [])
                    )
                    for o in listed["items"]
                )
                if ready == len(names):
                    break
                if time.monotonic() - started > 900:
                    raise SystemExit(f"only {ready} of {len(names)} Ready after 900 s")
                time.sleep(1.0)
            all_ready_s = time.monotonic() - started
            print(f"{len(names)} Leases Ready {all_ready_s:.1f} s after the operator started")

            watcher = Watcher(custom)
            watcher.thread.start()
            time.sleep(2.0)  # the watch is established; quiet baseline
            cpu0, _ = _proc_stats(op.popen.pid)
            t0 = time.monotonic()
            rss_samples: list[float] = []

            def sample_rss() -> None:
                while time.monotonic() - t0 < args.seconds and op is not None:
                    assert op.popen is not None
                    rss_samples.append(_proc_stats(op.popen.pid)[1])
                    time.sleep(1.0)

            sampler = threading.Thread(target=sample_rss, daemon=True)
            sampler.start()
            grants = asyncio.run(churn(cluster, names, args.workers, args.seconds))
            churn_s = time.monotonic() - t0
            time.sleep(3.0)  # the last coalesced writes land
            cpu1, rss_end = _proc_stats(op.popen.pid)
            _, page = asyncio.run(op.get("/metrics"))
            lag = histogram_buckets(page, "concord_operator_watch_lag_seconds")
            rec_sum = metric(page, 'concord_operator_reconcile_seconds_sum{kind="leases"}') or 0
            rec_n = metric(page, 'concord_operator_reconcile_seconds_count{kind="leases"}') or 1
            load = os.getloadavg()[0]
            watcher.stop.set()
            writes = [e for e in watcher.events if t0 <= e[0] <= t0 + churn_s]
            lags = [watcher.lag_s(n, tok, at) for n, tok, at in grants]
            seen = [x for x in lags if x is not None]
            result: dict[str, Any] = {
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "leases": len(names),
                "workers": args.workers,
                "churn_s": round(churn_s, 1),
                "grants": len(grants),
                "grants_per_s": round(len(grants) / churn_s, 1),
                "all_ready_s": round(all_ready_s, 1),
                "operator_cpu_pct": round(100 * (cpu1 - cpu0) / churn_s, 1),
                "operator_rss_mib_max": round(max([*rss_samples, rss_end]), 1),
                "apiserver_lease_writes_per_s": round(len(writes) / churn_s, 1),
                "status_lag_p50_ms": round(1000 * _pct(seen, 0.5), 1),
                "status_lag_p99_ms": round(1000 * _pct(seen, 0.99), 1),
                "status_lag_mean_ms": round(1000 * statistics.fmean(seen), 1) if seen else None,
                "grants_never_mirrored": len(lags) - len(seen),
                "operator_reconcile_mean_ms": round(1000 * rec_sum / rec_n, 1),
                "operator_watch_lag_p50_ms": round(1000 * (histogram_quantile(0.5, lag) or 0), 1),
                "operator_watch_lag_p99_ms": round(1000 * (histogram_quantile(0.99, lag) or 0), 1),
                "load_average_1m": round(load, 1),
                "operator_step_mean_ms": {
                    step: round(
                        1000
                        * (metric(page, f'{STEP}_sum{{step="{step}"}}') or 0)
                        / (metric(page, f'{STEP}_count{{step="{step}"}}') or 1),
                        1,
                    )
                    for step in ("observe", "act", "write")
                },
                "cpus": os.cpu_count(),
            }
            print(json.dumps(result, indent=2))
            out = REPO / ".results" / "bench"
            out.mkdir(parents=True, exist_ok=True)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            (out / f"operator-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
        except ControlPlaneError as err:
            raise SystemExit(str(err)) from None
        finally:
            if op is not None:
                op.stop()
            cluster.close()
            plane.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
