"""Leases at scale, for `bench.scale --leases N,...`: N leases held and kept alive by holder
processes, Concord beside etcd on the same machine.

Per level, `--procs` holder processes grant N leases between them (TTL `--lease-ttl-ms`) and
keep every one alive the way each system's own client does it: ONE keep-alive stream per
process carrying all its leases, each renewed TTL/3 after the send of its last acknowledged
renewal (Concord: `Client.keep_alive`; etcd: the same schedule on etcd's LeaseKeepAlive
stream, as clientv3 multiplexes its leases on one stream). Once every holder is renewing, the
benchmark process measures for `--seconds`:

- the leader's CPU (and all three members', and the holder processes'), as a share of wall
  time and as CPU time per renewal acknowledged meanwhile (the holders count them), which a
  busy machine inflates far less than a share;
- a probe: one more lease renewed every 100 ms with a keep-alive of its own (a fresh stream,
  one request, one answer), whose round trips give p50/p99: what a new client waits;
- the holders' renewals acknowledged per second;
- spurious expiries: leases their holders lost although they kept renewing (the member said
  the lease had ended, or no renewal was acknowledged within the TTL). None should be.

Numbers only; nothing is asserted (STYLE.md lesson 12). The holders run on the same machine
as the members: compare the systems within one run, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import heapq
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .procs import cpu_seconds
from .systems.base import Cluster

REPO = Path(__file__).resolve().parents[1]
PROBE_EVERY_S = 0.1
GRANT_CONCURRENCY = 200


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _credentials(tls_dir: Path) -> Any:  # noqa: ANN401 (grpc credentials)
    from coordinator.runtime.tls import channel_credentials  # noqa: PLC0415

    return channel_credentials(
        (tls_dir / "ca.pem").read_bytes(),
        (tls_dir / "client.pem").read_bytes(),
        (tls_dir / "client-key.pem").read_bytes(),
    )


# --- holder processes ----------------------------------------------------------------------------


def holder_main(argv: list[str]) -> int:
    """`python -m bench.scale holder SYSTEM COUNT TTL_MS TLS_DIR ENDPOINT...`: grant COUNT
    leases, keep them alive, print READY; on "COUNT" from stdin print one JSON line (the
    report so far), on "REPORT" print it and end."""
    system, count, ttl_ms, tls_dir, *endpoints = argv
    return asyncio.run(_hold(system, int(count), int(ttl_ms), Path(tls_dir), endpoints))


async def _hold(system: str, count: int, ttl_ms: int, tls_dir: Path, endpoints: list[str]) -> int:
    creds = _credentials(tls_dir)
    gate = asyncio.Semaphore(GRANT_CONCURRENCY)
    if system == "concord":
        from coordinator.client import Client  # noqa: PLC0415

        client = Client(endpoints, credentials=creds, timeout_s=60.0)
        loop = asyncio.get_running_loop()

        async def grant() -> tuple[int, float]:
            async with gate:
                sent = loop.time()
                return await client.lease_grant(ttl_ms), sent

        granted = await asyncio.gather(*(grant() for _ in range(count)))
        kept = [client.keep_alive(lease, ttl_ms, sent_at=sent) for lease, sent in granted]

        def report() -> dict[str, Any]:
            lost = [k for k in kept if k.lost.is_set()]
            return {
                "leases": len(kept),
                "renewals": sum(k.renewals for k in kept),
                "lost": len(lost),
                "lost_codes": dict(collections.Counter(k.code for k in lost)),
                "streams": client.keepalive_streams_opened,
            }

        closer = client.close
    else:
        keeper = EtcdKeeper(endpoints, creds, ttl_ms)
        await keeper.grant(count, gate)
        keeper.start()
        report = keeper.report
        closer = keeper.close
    print("READY", flush=True)
    while True:  # "COUNT": the report so far, and go on; "REPORT" (or EOF): report, end
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() in ("COUNT", "REPORT"):
            print(json.dumps(report()), flush=True)
        if line.strip() != "COUNT":
            break
    await closer()
    return 0


class EtcdKeeper:
    """etcd leases kept alive on one LeaseKeepAlive stream, on the schedule `Client.keep_alive`
    follows (TTL/3 after the send of the last acknowledged renewal; lost when the TTL ran out
    since that send, or when etcd answers TTL <= 0), re-opened on another member if it ends."""

    def __init__(self, endpoints: list[str], creds: Any, ttl_ms: int) -> None:  # noqa: ANN401
        import grpc  # noqa: PLC0415

        from .protos import etcd_kv_pb2_grpc as kv_grpc  # noqa: PLC0415

        self.channels = [grpc.aio.secure_channel(e, creds) for e in endpoints]
        self.stubs: list[Any] = [kv_grpc.LeaseStub(ch) for ch in self.channels]  # type: ignore[no-untyped-call]
        self.ttl_s = ttl_ms / 1000
        self.next_at: dict[int, float] = {}
        self.sent_at: dict[int, float] = {}
        self.expires_at: dict[int, float] = {}
        self.lost: dict[int, str] = {}
        self.renewals = 0
        self.streams = 0
        self.schedule: list[tuple[float, int]] = []
        self.task: asyncio.Task[None] | None = None

    async def grant(self, count: int, gate: asyncio.Semaphore) -> None:
        from .protos import etcd_kv_pb2 as kv  # noqa: PLC0415

        ttl = max(1, round(self.ttl_s))

        async def one(i: int) -> None:
            async with gate:
                sent = time.monotonic()
                resp = await self.stubs[i % len(self.stubs)].LeaseGrant(
                    kv.LeaseGrantRequest(TTL=ttl), timeout=30
                )
            lease = int(resp.ID)
            self.expires_at[lease] = sent + self.ttl_s
            self.next_at[lease] = sent + self.ttl_s / 3
            heapq.heappush(self.schedule, (self.next_at[lease], lease))

        await asyncio.gather(*(one(i) for i in range(count)))

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def report(self) -> dict[str, Any]:
        return {
            "leases": len(self.expires_at),
            "renewals": self.renewals,
            "lost": len(self.lost),
            "lost_codes": dict(collections.Counter(self.lost.values())),
            "streams": self.streams,
        }

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for ch in self.channels:
            await ch.close()

    async def _run(self) -> None:
        k = 0
        while True:
            await self._stream(self.stubs[k % len(self.stubs)])
            k += 1
            now = time.monotonic()
            for lease in list(self.sent_at):  # unanswered: again on the next stream
                del self.sent_at[lease]
                self.next_at[lease] = now
                heapq.heappush(self.schedule, (now, lease))
            await asyncio.sleep(0.05)

    async def _stream(self, stub: Any) -> None:  # noqa: ANN401
        from .protos import etcd_kv_pb2 as kv  # noqa: PLC0415

        call = stub.LeaseKeepAlive()
        self.streams += 1

        answered_at = time.monotonic()

        async def read() -> None:
            nonlocal answered_at
            async for resp in call:
                answered_at = time.monotonic()
                lease = int(resp.ID)
                sent = self.sent_at.pop(lease, None)
                if sent is None or lease in self.lost:
                    continue
                if resp.TTL <= 0:
                    self.lost[lease] = "NOT_FOUND"
                    continue
                self.renewals += 1
                self.expires_at[lease] = max(self.expires_at[lease], sent + int(resp.TTL))
                self.next_at[lease] = sent + self.ttl_s / 3
                heapq.heappush(self.schedule, (self.next_at[lease], lease))

        reader = asyncio.ensure_future(read())
        checked = 0.0
        try:
            while not reader.done():
                now = time.monotonic()
                if now - checked >= 0.25:  # a scan of every lease: not every pass
                    checked = now
                    for lease, at in list(self.expires_at.items()):
                        if at <= now and lease not in self.lost:
                            self.lost[lease] = "UNAVAILABLE"
                while self.schedule and self.schedule[0][0] <= now:
                    at, lease = heapq.heappop(self.schedule)
                    if lease in self.lost or lease in self.sent_at or self.next_at[lease] != at:
                        continue
                    self.sent_at[lease] = now
                    await call.write(kv.LeaseKeepAliveRequest(ID=lease))
                if self.sent_at and now - max(answered_at, min(self.sent_at.values())) > 2.0:
                    return  # nothing answered for 2 s with renewals in flight: another member
                await asyncio.sleep(0.01)
        except Exception as err:
            print(f"etcd keep-alive stream ended: {err}"[:300], file=sys.stderr)
        finally:
            reader.cancel()
            call.cancel()
            await asyncio.gather(reader, return_exceptions=True)


# --- the probe (in the benchmark process) --------------------------------------------------------


async def probe(
    system: str, endpoints: list[str], tls: Path, ttl_ms: int, seconds: float
) -> list[float]:
    """Renew one lease of its own every PROBE_EVERY_S, each on a fresh keep-alive stream;
    returns the round trips (s)."""
    creds = _credentials(tls)
    out: list[float] = []
    if system == "concord":
        from coordinator.client import Client  # noqa: PLC0415

        async with Client(endpoints, credentials=creds, timeout_s=30.0) as client:
            lease = await client.lease_grant(ttl_ms)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    await client.lease_keepalive_once(lease)
                    out.append(time.perf_counter() - t0)
                except Exception as err:
                    print(f"probe failed: {err}"[:300], file=sys.stderr)
                await asyncio.sleep(max(0.0, PROBE_EVERY_S - (time.perf_counter() - t0)))
        return out
    import grpc  # noqa: PLC0415

    from .protos import etcd_kv_pb2 as kv  # noqa: PLC0415
    from .protos import etcd_kv_pb2_grpc as kv_grpc  # noqa: PLC0415

    channel = grpc.aio.secure_channel(endpoints[0], creds)
    stub: Any = kv_grpc.LeaseStub(channel)  # type: ignore[no-untyped-call]
    try:
        lease = int((await stub.LeaseGrant(kv.LeaseGrantRequest(TTL=ttl_ms // 1000))).ID)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            call = stub.LeaseKeepAlive(timeout=10)
            try:
                await call.write(kv.LeaseKeepAliveRequest(ID=lease))
                await call.read()
                out.append(time.perf_counter() - t0)
            except Exception as err:
                print(f"probe failed: {err}"[:300], file=sys.stderr)
            finally:
                call.cancel()
            await asyncio.sleep(max(0.0, PROBE_EVERY_S - (time.perf_counter() - t0)))
    finally:
        await channel.close()
    return out


# --- one level -----------------------------------------------------------------------------------


async def run_lease_level(
    system: Cluster,
    leader: int,
    tls: Path,
    n: int,
    args: argparse.Namespace,
    *,
    endpoints: list[str],
) -> dict[str, Any]:
    procs = max(1, min(args.procs, n))
    per = [n // procs + (1 if k < n % procs else 0) for k in range(procs)]
    ttl_ms = args.lease_ttl_ms
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.scale", "holder", system.name, str(count), str(ttl_ms),
            str(tls), *endpoints,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, limit=1 << 24,
        )
        for count in per
    ]  # fmt: skip
    pid = system.member(leader).pid
    pids = [system.member(i).pid for i in system.member_ids()]
    try:
        started = time.monotonic()
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 600)
            if line.strip() != b"READY":
                raise RuntimeError(f"a holder process failed to start: {line!r}")
        grant_s = time.monotonic() - started
        await asyncio.sleep(ttl_ms / 1000)  # one TTL of renewals before measuring
        before = await _ask_holders(children, b"COUNT")
        holders = [child.pid for child in children]
        cpu0, all0, t0 = cpu_seconds(pid), sum(map(cpu_seconds, pids)), time.monotonic()
        held0 = sum(map(cpu_seconds, holders))
        trips = await probe(system.name, endpoints, tls, ttl_ms=ttl_ms, seconds=args.seconds)
        cpu1, all1, t1 = cpu_seconds(pid), sum(map(cpu_seconds, pids)), time.monotonic()
        held1 = sum(map(cpu_seconds, holders))
        reports = await _ask_holders(children, b"REPORT")
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
            await child.wait()
    codes: dict[str, int] = {}
    for r in reports:
        for code, k in r["lost_codes"].items():
            codes[code] = codes.get(code, 0) + k
    renewals = sum(r["renewals"] for r in reports)
    measured = max(1, renewals - sum(r["renewals"] for r in before))
    window = time.monotonic() - started
    return {
        "leases": n,
        "lease_ttl_ms": ttl_ms,
        "grant_s": round(grant_s, 1),
        "leader_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "members_cpu_pct": round(100 * (all1 - all0) / (t1 - t0), 1),
        "holders_cpu_pct": round(100 * (held1 - held0) / (t1 - t0), 1),
        # CPU time per renewal acknowledged while measuring: what the load cannot inflate
        # the way it does a percentage of wall time (µs; the probe's renewals included).
        "leader_cpu_us_per_renewal": round(1e6 * (cpu1 - cpu0) / measured, 1),
        "members_cpu_us_per_renewal": round(1e6 * (all1 - all0) / measured, 1),
        "holders_cpu_us_per_renewal": round(1e6 * (held1 - held0) / measured, 1),
        "probe_p50_ms": _pct(trips, 0.5),
        "probe_p99_ms": _pct(trips, 0.99),
        "probes": len(trips),
        "renewals_per_s": round(renewals / window, 1),
        "spurious_expiries": sum(r["lost"] for r in reports),
        "lost_codes": codes,
        "keepalive_streams": sum(r["streams"] for r in reports),
    }


async def _ask_holders(children: list[asyncio.subprocess.Process], what: bytes) -> list[Any]:
    """Every holder's report (`holder_main`): after b"COUNT" they go on, after b"REPORT" not."""
    for child in children:
        assert child.stdin is not None
        child.stdin.write(what + b"\n")
        await child.stdin.drain()
    out = []
    for child in children:
        assert child.stdout is not None
        out.append(json.loads(await asyncio.wait_for(child.stdout.readline(), 120)))
    return out


LEASE_COLUMNS = [
    ("system", "system"),
    ("leases", "leases"),
    ("leader_cpu_pct", "leader CPU %"),
    ("members_cpu_pct", "3 members CPU %"),
    ("leader_cpu_us_per_renewal", "leader CPU µs/renewal"),
    ("holders_cpu_us_per_renewal", "holders CPU µs/renewal"),
    ("probe_p50_ms", "probe p50 ms"),
    ("probe_p99_ms", "probe p99 ms"),
    ("renewals_per_s", "renewals/s"),
    ("spurious_expiries", "spurious expiries"),
    ("keepalive_streams", "streams"),
    ("grant_s", "grant s"),
]


def lease_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(h for _, h in LEASE_COLUMNS) + " |"
    sep = "|" + "|".join(" --- " for _ in LEASE_COLUMNS) + "|"
    body = [
        "| "
        + " | ".join("" if r.get(k) is None else str(r.get(k)) for k, _ in LEASE_COLUMNS)
        + " |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])
