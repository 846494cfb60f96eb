"""Watches at scale, Concord beside etcd in one run: N watchers on one prefix while a writer
puts at a steady rate.

    python -m bench.scale [--watchers 100,1000,5000] [--rate 20] [--seconds 15]
                          [--procs 4] [--systems concord,etcd] [--etcd PATH]
                          [--leases 1000,5000 [--lease-ttl-ms 10000]]
                          [--locks 100,1000,10000]

`--leases` adds lease levels (bench/leases.py): N leases kept alive by `--procs` holder
processes, measured for `--seconds` (leader CPU, a renewal probe's p50/p99, spurious
expiries); `--locks` adds lock levels (bench/locks.py): N locks held through the client
library (`Client.lock()`; etcd: its v3lock API under a lease per lock) by `--procs` locker
processes, measured for `--seconds` (leader CPU, a probe put every 50 ms, locks lost).
`--watchers ''` runs only those.

Per system (a fresh 3-member mutual-TLS cluster each, started as `make bench` starts them):

1. baseline: the writer puts `--rate` keys per second under /scale/ for `--seconds` with no
   watcher open: write latency p50/p99 and the leader's CPU;
2. for each N: `--procs` watcher processes open N watch streams on the prefix /scale/
   between them, spread over the three members (followers serve watches in both systems),
   and report once every stream is created; the writer then runs as in 1. Each value is the
   wall-clock time the put was sent, so a watcher measures delivery latency (receipt - send)
   per event and stream; it also counts events per stream and checks revision order
   (duplicates, gaps) and how streams ended.

Watchers: one raw gRPC Watch stream per watcher for both systems (etcd: one create request
per stream, as separate clients would; etcd's clientv3 would multiplex watchers of one client
onto one stream), so both sides pay one stream per watcher and the same client-side cost; a
stream that ends early is counted by status (a Concord slow-consumer end would show as
RESOURCE_EXHAUSTED: `Client.watch` resumes those, this raw reader does not). The client
processes run on the same machine and are often the bottleneck at 5,000 watchers: compare
the systems within one run (ratios), not across machines.

Numbers only, printed as a table and written to .results/bench/scale-<UTC time>.json; nothing
is asserted (STYLE.md lesson 12). `make bench-scale`; not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .leases import holder_main, lease_table, run_lease_level
from .locks import lock_table, locker_main, run_lock_level
from .procs import Supervisor, cpu_seconds
from .protos import ensure_generated
from .systems.base import Cluster
from .tables import markdown_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / ".results" / "bench"
PREFIX = b"/scale/"
PREFIX_END = b"/scale0"


# --- the writer (in the benchmark process) -------------------------------------------------------


async def write_at_rate(session: Any, rate: float, seconds: float, tag: str) -> list[float]:  # noqa: ANN401
    """Put `rate` keys/s for `seconds` on a fixed schedule (a late put does not shift the
    next); returns each put's latency in seconds."""
    latencies: list[float] = []
    interval = 1.0 / rate
    start = time.monotonic()
    count = int(rate * seconds)
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        sent = time.time()
        t0 = time.perf_counter()
        try:
            await session.put(PREFIX + f"{tag}/{i}".encode(), b"%.6f" % sent)
        except Exception as err:
            print(f"write failed: {type(err).__name__}: {err}"[:300], file=sys.stderr)
            return
        latencies.append(time.perf_counter() - t0)

    for i in range(count):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return latencies


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(v: float | None) -> float | None:
    return None if v is None else round(1000 * v, 1)


# --- watcher processes ---------------------------------------------------------------------------


def watcher_main(argv: list[str]) -> int:
    """`python -m bench.scale watcher SYSTEM STREAMS OFFSET TLS_DIR ENDPOINT...`: open the
    streams, print READY, then on stdin "EXPECT n" wait until every stream saw n events (or
    a quiet period) and print one JSON line."""
    system, streams, offset, tls_dir, *endpoints = argv
    return asyncio.run(_watch(system, int(streams), int(offset), Path(tls_dir), endpoints))


async def _watch(
    system: str, streams: int, offset: int, tls_dir: Path, endpoints: list[str]
) -> int:
    from coordinator.runtime.tls import channel_credentials  # noqa: PLC0415

    creds = channel_credentials(
        (tls_dir / "ca.pem").read_bytes(),
        (tls_dir / "client.pem").read_bytes(),
        (tls_dir / "client-key.pem").read_bytes(),
    )
    counts = [0] * streams
    last = [0] * streams
    disorder = [0]
    latencies: list[float] = []
    ended: dict[str, int] = {}
    created = [0]
    all_created = asyncio.Event()
    progress = asyncio.Event()

    def saw(i: int, revision: int, value: bytes) -> None:
        if revision <= last[i]:
            disorder[0] += 1
        last[i] = revision
        counts[i] += 1
        latencies.append(time.time() - float(value))
        progress.set()

    def started() -> None:
        created[0] += 1
        if created[0] == streams:
            all_created.set()

    tasks: list[asyncio.Task[None]] = []
    closers: list[Any] = []
    if system == "concord":
        import grpc  # noqa: PLC0415

        from coordinator.api.v1 import concord_pb2 as pb  # noqa: PLC0415
        from coordinator.api.v1 import concord_pb2_grpc as pb_grpc  # noqa: PLC0415

        channels = [grpc.aio.secure_channel(e, creds) for e in endpoints]
        closers = [ch.close for ch in channels]
        cstubs: list[Any] = [pb_grpc.WatchStub(ch) for ch in channels]  # type: ignore[no-untyped-call]

        async def concord_stream(i: int) -> None:
            stub = cstubs[(i + offset) % len(cstubs)]
            call = stub.Watch(pb.WatchRequest(key=PREFIX, range_end=PREFIX_END))
            try:
                first = True
                async for resp in call:
                    if first:
                        first = False
                        started()
                    for e in resp.events:
                        saw(i, int(e.revision), e.kv.value)
            except grpc.aio.AioRpcError as err:
                ended[err.code().name] = ended.get(err.code().name, 0) + 1
                if first:
                    print(f"watcher: a stream failed to start: {err}", file=sys.stderr)

        tasks = [asyncio.ensure_future(concord_stream(i)) for i in range(streams)]
    else:
        import grpc  # noqa: PLC0415

        from .protos import etcd_kv_pb2 as kv  # noqa: PLC0415
        from .protos import etcd_kv_pb2_grpc as kv_grpc  # noqa: PLC0415

        channels = [grpc.aio.secure_channel(e, creds) for e in endpoints]
        closers = [ch.close for ch in channels]
        stubs: list[Any] = [kv_grpc.WatchStub(ch) for ch in channels]  # type: ignore[no-untyped-call]

        async def etcd_stream(i: int) -> None:
            stub = stubs[(i + offset) % len(stubs)]
            create = kv.WatchRequest(
                create_request=kv.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END)
            )

            async def requests() -> Any:  # noqa: ANN401
                yield create
                await asyncio.Event().wait()  # keep the request side open

            call = stub.Watch(requests())
            try:
                async for resp in call:
                    if resp.created:
                        started()
                    if resp.canceled:
                        ended["canceled:" + resp.cancel_reason] = (
                            ended.get("canceled:" + resp.cancel_reason, 0) + 1
                        )
                        return
                    for e in resp.events:
                        saw(i, int(e.kv.mod_revision), e.kv.value)
            except grpc.aio.AioRpcError as err:
                ended[err.code().name] = ended.get(err.code().name, 0) + 1

        tasks = [asyncio.ensure_future(etcd_stream(i)) for i in range(streams)]

    try:
        await asyncio.wait_for(all_created.wait(), 120)
    except TimeoutError:
        print(f"watcher: {created[0]} of {streams} started; ended: {ended}", file=sys.stderr)
        raise
    await asyncio.sleep(1.0)  # every stream registered on its member (etcd: created already)
    print("READY", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    expect = int(line.split()[1])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and min(counts) < expect:
        progress.clear()
        try:
            await asyncio.wait_for(progress.wait(), 10)
        except TimeoutError:
            break  # nothing for 10 s: what is missing is lost
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for close in closers:
        await close()
    latencies.sort()
    print(
        json.dumps(
            {
                "streams": streams,
                "events": sum(counts),
                "complete_streams": sum(1 for c in counts if c == expect),
                # Events of writes the writer saw fail (timed out) that were applied anyway:
                # not duplicates (those show as revisions out of order).
                "extra": sum(max(0, c - expect) for c in counts),
                "disorder": disorder[0],
                "ended": ended,
                "latencies": latencies[:: max(1, len(latencies) // 20000)],
            }
        ),
        flush=True,
    )
    return 0


# --- one system ----------------------------------------------------------------------------------


def client_tls_dir(system: Cluster, root: Path) -> Path:
    """The CA and a client certificate in files, for the watcher processes."""
    from coordinator.pki import CertifiedKey  # noqa: PLC0415

    owner = getattr(system, "cluster") if system.name == "concord" else system  # noqa: B009
    ca, cert = owner.ca, owner.client_cert
    assert isinstance(cert, CertifiedKey)
    d = root / f"client-tls-{system.name}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.pem").write_bytes(ca.cert_pem)
    (d / "client.pem").write_bytes(cert.cert_pem)
    (d / "client-key.pem").write_bytes(cert.key_pem)
    return d


def endpoints_of(system: Cluster) -> list[str]:
    if system.name == "concord":
        return list(getattr(system, "cluster").endpoints())  # noqa: B009
    return [f"127.0.0.1:{m.client_port}" for m in getattr(system, "members").values()]  # noqa: B009


async def measure_writes(
    system: Cluster, leader: int, rate: float, seconds: float, tag: str
) -> dict[str, Any]:
    pid = system.member(leader).pid
    pids = [system.member(i).pid for i in system.member_ids()]
    session = await system.session(leader)
    try:
        await session.put(b"/warm", b"x")
        cpu0, all0, t0 = cpu_seconds(pid), sum(map(cpu_seconds, pids)), time.monotonic()
        lat = await write_at_rate(session, rate, seconds, tag)
        cpu1, all1, t1 = cpu_seconds(pid), sum(map(cpu_seconds, pids)), time.monotonic()
    finally:
        await session.close()
    return {
        "writes": len(lat),
        "writes_per_s": round(len(lat) / (t1 - t0), 1),
        "write_p50_ms": ms(pct(lat, 0.5)),
        "write_p99_ms": ms(pct(lat, 0.99)),
        "leader_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "members_cpu_pct": round(100 * (all1 - all0) / (t1 - t0), 1),
    }


async def run_level(
    system: Cluster,
    leader: int,
    tls: Path,
    n: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    procs = max(1, min(args.procs, n))
    per = [n // procs + (1 if k < n % procs else 0) for k in range(procs)]
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.scale", "watcher", system.name, str(count), str(k),
            str(tls), *endpoints_of(system),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, limit=1 << 26,
        )
        for k, count in enumerate(per)
    ]  # fmt: skip
    try:
        opened = time.monotonic()
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 180)
            if line.strip() != b"READY":
                raise RuntimeError(f"a watcher process failed to start: {line!r}")
        open_s = time.monotonic() - opened
        writes = await measure_writes(system, leader, args.rate, args.seconds, f"n{n}")
        expect = writes["writes"]
        results = []
        for child in children:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(f"EXPECT {expect}\n".encode())
            await child.stdin.drain()
        for child in children:
            assert child.stdout is not None
            results.append(json.loads(await asyncio.wait_for(child.stdout.readline(), 180)))
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
            await child.wait()
    lat = sorted(x for r in results for x in r["latencies"])
    ended: dict[str, int] = {}
    for r in results:
        for k, v in r["ended"].items():
            ended[k] = ended.get(k, 0) + v
    return {
        "watchers": n,
        "open_s": round(open_s, 1),
        **writes,
        "delivered": sum(r["events"] for r in results),
        "expected": expect * n,
        "complete_streams": sum(r["complete_streams"] for r in results),
        "duplicates_or_disorder": sum(r["disorder"] for r in results),
        "beyond_acknowledged": sum(r["extra"] for r in results),
        "ended": ended,
        "delivery_p50_ms": ms(pct(lat, 0.5)),
        "delivery_p99_ms": ms(pct(lat, 0.99)),
    }


async def run_system(
    name: str, args: argparse.Namespace, work: Path, sup: Supervisor
) -> list[dict[str, Any]]:
    if name == "concord":
        from .systems.concord import ConcordCluster  # noqa: PLC0415

        system: Any = ConcordCluster(work / "concord", sup)
    else:
        from .__main__ import etcd_binary  # noqa: PLC0415
        from .systems.etcd import EtcdCluster  # noqa: PLC0415

        binary, version = etcd_binary(args.etcd)
        system = EtcdCluster(work / "etcd", sup, binary, version)
    await system.start()
    rows: list[dict[str, Any]] = []
    try:
        leader = await system.leader()
        tls = client_tls_dir(system, work)
        for n in args.leases:
            try:
                lrow = await run_lease_level(
                    system, leader, tls, n, args, endpoints=endpoints_of(system)
                )
                lrow = {"system": name, **lrow}
            except Exception as err:
                lrow = {"system": name, "leases": n, "error": f"{err}"[:300]}
            rows.append(lrow)
            print(f"{name}: {n} leases: {lrow}", flush=True)
        for n in args.locks:
            try:
                krow = await run_lock_level(
                    system, leader, tls, n, args, endpoints=endpoints_of(system)
                )
                krow = {"system": name, **krow}
            except Exception as err:
                krow = {"system": name, "locks": n, "error": f"{err}"[:300]}
            rows.append(krow)
            print(f"{name}: {n} locks: {krow}", flush=True)
        if not args.watchers:
            return rows
        base = await measure_writes(system, leader, args.rate, args.seconds, "base")
        rows.append({"system": name, "watchers": 0, **base})
        print(f"{name}: no watchers: {base}", flush=True)
        for n in args.watchers:
            try:
                row = {"system": name, **await run_level(system, leader, tls, n, args)}
            except Exception as err:
                rows.append({"system": name, "watchers": n, "error": f"{err}"[:300]})
                print(f"{name}: {n} watchers: FAILED: {err}", flush=True)
                continue
            row["write_p50_vs_none"] = (
                round(row["write_p50_ms"] / base["write_p50_ms"], 2)
                if row.get("write_p50_ms") and base["write_p50_ms"]
                else None
            )
            rows.append(row)
            print(f"{name}: {n} watchers: {row}", flush=True)
    finally:
        await system.stop()
    return rows


COLUMNS = [
    ("system", "system"),
    ("watchers", "watchers"),
    ("writes_per_s", "writes/s"),
    ("write_p50_ms", "write p50 ms"),
    ("write_p50_vs_none", "vs none"),
    ("leader_cpu_pct", "leader CPU %"),
    ("members_cpu_pct", "3 members CPU %"),
    ("delivered", "delivered"),
    ("expected", "expected (acked)"),
    ("delivery_p50_ms", "deliv p50 ms"),
    ("delivery_p99_ms", "deliv p99 ms"),
    ("duplicates_or_disorder", "dup/disorder"),
    ("beyond_acknowledged", "of unacked writes"),
]


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(COLUMNS, rows)


async def main_async(args: argparse.Namespace) -> int:
    args.loadavg_at_start = os.getloadavg()  # the machine may be shared: say how busy
    ensure_generated()
    sup = Supervisor()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="concord-bench-scale-") as tmp:
            for name in args.systems:
                rows += await run_system(name, args, Path(tmp), sup)
    finally:
        sup.close()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"scale-{stamp}.json"
    meta = {
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "watcher_procs": args.procs,
        "lease_ttl_ms": args.lease_ttl_ms,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "loadavg_at_start": args.loadavg_at_start,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    watch_rows = [r for r in rows if "watchers" in r]
    lease_rows = [r for r in rows if "leases" in r]
    lock_rows = [r for r in rows if "locks" in r]
    if watch_rows:
        print(table(watch_rows))
    if lease_rows:
        print(lease_table(lease_rows))
    if lock_rows:
        print(lock_table(lock_rows))
    print(f"written: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "watcher":
        return watcher_main(argv[1:])
    if argv and argv[0] == "holder":
        return holder_main(argv[1:])
    if argv and argv[0] == "locker":
        return locker_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--watchers", default="100,1000,5000")
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--systems", default="concord,etcd")
    p.add_argument("--etcd", help="an etcd binary (default: scripts/build_etcd.sh's)")
    p.add_argument(
        "--leases",
        default="",
        help="lease levels, e.g. 1000,5000: N leases kept alive by --procs holder processes "
        "(bench/leases.py); pass --watchers '' to run only these",
    )
    p.add_argument(
        "--locks",
        default="",
        help="lock levels, e.g. 1000,10000: N locks held through the client library by --procs "
        "locker processes (bench/locks.py); their leases' TTL is --lease-ttl-ms",
    )
    p.add_argument("--lease-ttl-ms", type=int, default=10_000)
    args = p.parse_args(argv)
    args.watchers = [int(x) for x in args.watchers.split(",") if x]
    args.leases = [int(x) for x in args.leases.split(",") if x]
    args.locks = [int(x) for x in args.locks.split(",") if x]
    args.systems = [s for s in args.systems.split(",") if s]
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
