"""Measure a 3-member Concord cluster on loopback: fsync, proposal latency, throughput, failover.

Not a test: it asserts nothing about time, it prints numbers (a table, then one JSON
document). The cluster is started exactly as the process tests start theirs
(`coordinator/testing/process_cluster.py`:
real `concord-coordinator` processes, mutual TLS, ephemeral
ports, a temporary directory) and every process is killed before the script exits, whatever
happens (and by the kernel if the script itself is killed).

    python scripts/measure_member.py [--seconds 5] [--trials 5] [--tick-ms 100]
                                     [--election-ticks 10] [--json out.json]

What is measured:

- fsync: p50/p99 of `concord_wal_fsync_duration_seconds` over every member, and over the
  leader alone (histogram quantiles, interpolated inside buckets as Prometheus does),
  after the load below;
- put latency with one request in flight (one client, sequential, `--seconds`);
- put throughput (and latency) with 16 and with 64 concurrent client tasks, one client
  (one session) each, `--seconds` each;
- failover: SIGKILL the leader, then time until a put succeeds again (a raw gRPC put,
  retried every 10 ms against the member the redirects name, the same session each time so
  the retries count once); the killed member is restarted and the cluster waited for
  between trials.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from coordinator.api.v1 import concord_pb2 as pb  # noqa: E402
from coordinator.api.v1 import concord_pb2_grpc  # noqa: E402
from coordinator.testing.process_cluster import ProcessCluster  # noqa: E402
from coordinator.testing.procs import histogram_buckets, histogram_quantile  # noqa: E402

rpc: Any = concord_pb2_grpc  # the generated stubs are untyped

FSYNC = "concord_wal_fsync_duration_seconds"
RUN_LIMIT_S = 600.0
"""The whole measurement is bounded; past this everything is stopped."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    acknowledged: int
    failed: int
    latencies_s: list[float]

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "throughput_per_s": round(self.acknowledged / self.seconds, 1),
            "latency_p50_ms": ms(percentile(self.latencies_s, 0.50)),
            "latency_p99_ms": ms(percentile(self.latencies_s, 0.99)),
        }


async def put_load(
    cluster: ProcessCluster, leader: int, concurrency: int, seconds: float
) -> LoadResult:
    """`concurrency` tasks, one client each, put unique keys for `seconds`."""
    order = [leader, *(i for i in cluster.members if i != leader)]
    clients = [cluster.client(order, timeout_s=10) for _ in range(concurrency)]
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    value = b"v" * 64
    go = asyncio.Event()
    try:
        # Warm up: every client connects and finds the leader before the clock starts.
        await asyncio.gather(
            *(c.put(f"warm/{concurrency}/{n}".encode(), value) for n, c in enumerate(clients))
        )
        deadline = 0.0

        async def worker(n: int) -> None:
            c = clients[n]
            await go.wait()
            i = 0
            while time.perf_counter() < deadline:
                key = f"bench/{concurrency}/{n}/{i}".encode()
                i += 1
                started = time.perf_counter()
                try:
                    await c.put(key, value)
                except Exception:  # counted, not fatal: this is a measurement
                    counts["failed"] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                counts["ok"] += 1

        tasks = [asyncio.create_task(worker(n)) for n in range(concurrency)]
        started = time.perf_counter()
        deadline = started + seconds
        go.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return LoadResult(concurrency, elapsed, counts["ok"], counts["failed"], latencies)


async def fsync_quantiles(cluster: ProcessCluster, leader: int) -> dict[str, Any]:
    pages = {m.id: await m.metrics() for m in cluster.running()}
    per_member = {i: histogram_buckets(text, FSYNC) for i, text in pages.items()}
    bounds = sorted({b for buckets in per_member.values() for b, _ in buckets})
    combined = [
        (b, sum(dict(buckets).get(b, 0.0) for buckets in per_member.values())) for b in bounds
    ]
    lead = per_member.get(leader, [])
    return {
        "all_members_count": int(combined[-1][1]) if combined else 0,
        "all_members_p50_ms": ms(histogram_quantile(0.50, combined)),
        "all_members_p99_ms": ms(histogram_quantile(0.99, combined)),
        "leader_count": int(lead[-1][1]) if lead else 0,
        "leader_p50_ms": ms(histogram_quantile(0.50, lead)),
        "leader_p99_ms": ms(histogram_quantile(0.99, lead)),
    }


async def put_until_success(cluster: ProcessCluster, first: int, limit_s: float) -> float:
    """Retry one put (one session, one sequence number) every 10 ms, following redirects by
    member id, until it succeeds; returns the time it succeeded (perf_counter)."""
    credentials = cluster.credentials()
    channels = {
        m.id: grpc.aio.secure_channel(m.client_address, credentials)
        for m in cluster.members.values()
    }
    session = pb.Session(client_id=secrets.randbits(63) | 1, seq=1)
    req = pb.PutRequest(session=session, key=b"failover/probe", value=b"x")
    ids = list(cluster.members)
    target = first
    deadline = time.perf_counter() + limit_s
    try:
        while time.perf_counter() < deadline:
            try:
                await rpc.KVStub(channels[target]).Put(req, timeout=0.5)
                return time.perf_counter()
            except grpc.aio.AioRpcError as err:
                hinted = _leader_hint(err)
                if hinted in channels and hinted != target:
                    target = hinted
                    continue
                target = ids[(ids.index(target) + 1) % len(ids)]
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no put succeeded within {limit_s} s of the leader's death")
    finally:
        await asyncio.gather(*(ch.close() for ch in channels.values()))


def _leader_hint(err: grpc.aio.AioRpcError) -> int:
    """The member id a not-the-leader answer names (bare id or a URL we can map), or 0."""
    for key, value in err.trailing_metadata() or ():
        if key == "concord-leader":
            text = str(value)
            if text.isdigit():
                return int(text)
    return 0


async def failover_trials(cluster: ProcessCluster, trials: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for trial in range(1, trials + 1):
        await cluster.wait_ready()
        leader = await cluster.leader()
        others = [i for i in cluster.members if i != leader]
        killed_at = time.perf_counter()
        cluster.kill(leader)
        succeeded_at = await put_until_success(cluster, others[0], 30.0)
        new_leader = await cluster.leader(other_than=leader)
        out.append(
            {
                "trial": trial,
                "killed": leader,
                "new_leader": new_leader,
                "put_ok_after_ms": round((succeeded_at - killed_at) * 1000, 1),
            }
        )
        print(
            f"  failover trial {trial}: killed member {leader}, a put succeeded "
            f"{out[-1]['put_ok_after_ms']:.0f} ms later (new leader {new_leader})",
            flush=True,
        )
        cluster.restart(leader)
    await cluster.wait_ready()
    return out


async def measure(cluster: ProcessCluster, seconds: float, trials: int) -> dict[str, Any]:
    await cluster.wait_ready(timeout_s=60)
    leader = await cluster.leader()
    print(f"  cluster ready: leader is member {leader}", flush=True)
    loads: dict[str, Any] = {}
    for concurrency in (1, 16, 64):
        result = await put_load(cluster, leader, concurrency, seconds)
        loads[str(concurrency)] = result.summary()
        print(f"  put load x{concurrency}: {loads[str(concurrency)]}", flush=True)
        leader = await cluster.leader()
    fsync = await fsync_quantiles(cluster, leader)
    failover = await failover_trials(cluster, trials)
    times = [t["put_ok_after_ms"] for t in failover]
    return {
        "setup": {
            "members": cluster.size,
            "tls": "mutual",
            "tick_ms": cluster.tick_ms,
            "election_ticks": cluster.election_ticks,
            "load_seconds": seconds,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "fsync": fsync,
        "put": loads,
        "failover": {
            "trials": failover,
            "put_ok_after_ms_min": min(times) if times else None,
            "put_ok_after_ms_median": percentile(times, 0.5),
            "put_ok_after_ms_max": max(times) if times else None,
        },
    }


def table(result: dict[str, Any]) -> str:
    def f(value: float | None, unit: str = " ms") -> str:
        return "n/a" if value is None else f"{value:.2f}{unit}"

    s, fs, put, fo = result["setup"], result["fsync"], result["put"], result["failover"]
    rows = [
        ("setup", f"{s['members']} members, mutual TLS, tick {s['tick_ms']} ms x "
                  f"{s['election_ticks']}, {s['cpus']} CPUs, Python {s['python']}"),
        ("fsync p50 / p99 (all members)",
         f"{f(fs['all_members_p50_ms'])} / {f(fs['all_members_p99_ms'])} "
         f"({fs['all_members_count']} fsyncs)"),
        ("fsync p50 / p99 (leader)",
         f"{f(fs['leader_p50_ms'])} / {f(fs['leader_p99_ms'])} ({fs['leader_count']} fsyncs)"),
    ]  # fmt: skip
    for concurrency, r in put.items():
        label = "put, 1 in flight" if concurrency == "1" else f"put, {concurrency} tasks"
        rows.append(
            (
                label,
                f"{r['throughput_per_s']:.0f}/s, p50 {f(r['latency_p50_ms'])}, "
                f"p99 {f(r['latency_p99_ms'])} ({r['acknowledged']} acked, "
                f"{r['failed']} failed)",
            )
        )
    trials = ", ".join(f"{t['put_ok_after_ms']:.0f}" for t in fo["trials"])
    rows.append(
        (
            "failover (kill -9 leader -> put ok)",
            f"median {f(fo['put_ok_after_ms_median'])}, min {f(fo['put_ok_after_ms_min'])}, "
            f"max {f(fo['put_ok_after_ms_max'])} (trials: {trials} ms)",
        )
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/measure_member.py", description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0, help="each load phase (default 5)")
    ap.add_argument("--trials", type=int, default=5, help="failover trials (default 5)")
    ap.add_argument("--tick-ms", type=int, default=100, help="member --tick-ms (default 100)")
    ap.add_argument("--election-ticks", type=int, default=10, help="(default 10)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the data dirs and logs")
    ap.add_argument("--json", type=Path, help="also write the JSON result here")
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="concord-measure-"))
    print(f"starting 3 members with mutual TLS (data and logs in {root})", flush=True)
    cluster = ProcessCluster(
        root, 3, tick_ms=args.tick_ms, election_ticks=args.election_ticks, cluster_id="measure"
    )
    try:
        cluster.start_all()
        result = asyncio.run(
            asyncio.wait_for(measure(cluster, args.seconds, args.trials), RUN_LIMIT_S)
        )
    except Exception as err:
        print(f"measurement failed: {err}", file=sys.stderr)
        print(cluster.log_tails(chars=2000), file=sys.stderr)
        return 1
    finally:
        cluster.close()
        if not args.keep_dir:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(result))
    print()
    doc = json.dumps(result, indent=2)
    print(doc)
    if args.json:
        args.json.write_text(doc + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
