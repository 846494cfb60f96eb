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
import sys
import time
from pathlib import Path
from typing import Any

from .holders import (
    HolderProcs,
    credentials,
    measure_cpu_use,
    merged_codes,
    percentile_ms,
    probe_every,
    serve_report,
    spread,
)
from .procs import memory_kib
from .systems.base import Cluster
from .tables import markdown_table

PROBE_EVERY_S = 0.1
GRANT_CONCURRENCY = 200


# --- holder processes ----------------------------------------------------------------------------


def holder_main(argv: list[str]) -> int:
    """`python -m bench.scale holder SYSTEM COUNT TTL_MS TLS_DIR ENDPOINT...`: grant COUNT
    leases, keep them alive, print READY; on "COUNT" from stdin print one JSON line (the
    report so far), on "REPORT" print it and end."""
    system, count, ttl_ms, tls_dir, *endpoints = argv
    return asyncio.run(_hold(system, int(count), int(ttl_ms), Path(tls_dir), endpoints))


async def _hold(system: str, count: int, ttl_ms: int, tls_dir: Path, endpoints: list[str]) -> int:
    creds = credentials(tls_dir)
    gate = asyncio.Semaphore(GRANT_CONCURRENCY)
    if system == "concord":
        from coordinator.client import Client, KeptLease  # noqa: PLC0415

        client = Client(endpoints, credentials=creds, timeout_s=60.0)
        loop = asyncio.get_running_loop()

        # Each lease is kept alive from its grant on, as a holder would: granting them all
        # first loses the early ones whenever granting takes longer than a TTL (under load).
        async def grant() -> KeptLease:
            async with gate:
                sent = loop.time()
                lease = await client.lease_grant(ttl_ms)
            return client.keep_alive(lease, ttl_ms, sent_at=sent)

        kept = await asyncio.gather(*(grant() for _ in range(count)))

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
        keeper.start()  # renewing each lease from its grant on, as above
        await keeper.grant(count, gate)
        report = keeper.report
        closer = keeper.close
    return await serve_report(report, closer)


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
    creds = credentials(tls)
    if system == "concord":
        from coordinator.client import Client  # noqa: PLC0415

        async with Client(endpoints, credentials=creds, timeout_s=30.0) as client:
            lease = await client.lease_grant(ttl_ms)
            return await probe_every(
                PROBE_EVERY_S, seconds, lambda: client.lease_keepalive_once(lease), "probe"
            )
    import grpc  # noqa: PLC0415

    from .protos import etcd_kv_pb2 as kv  # noqa: PLC0415
    from .protos import etcd_kv_pb2_grpc as kv_grpc  # noqa: PLC0415

    channel = grpc.aio.secure_channel(endpoints[0], creds)
    stub: Any = kv_grpc.LeaseStub(channel)  # type: ignore[no-untyped-call]
    try:
        lease = int((await stub.LeaseGrant(kv.LeaseGrantRequest(TTL=ttl_ms // 1000))).ID)

        async def renew() -> None:
            call = stub.LeaseKeepAlive(timeout=10)
            try:
                await call.write(kv.LeaseKeepAliveRequest(ID=lease))
                await call.read()
            finally:
                call.cancel()

        return await probe_every(PROBE_EVERY_S, seconds, renew, "probe")
    finally:
        await channel.close()


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
    ttl_ms = args.lease_ttl_ms
    holders = await HolderProcs.start(
        [
            ["holder", system.name, str(count), str(ttl_ms), str(tls), *endpoints]
            for count in spread(n, args.procs)
        ],
        "holder",
    )
    try:
        started = time.monotonic()
        await holders.ready(600)
        grant_s = time.monotonic() - started
        await asyncio.sleep(ttl_ms / 1000)  # one TTL of renewals before measuring
        before = await holders.reports(b"COUNT")
        trips, cpu = await measure_cpu_use(
            system,
            leader,
            holders.pids,
            probe(system.name, endpoints, tls, ttl_ms=ttl_ms, seconds=args.seconds),
        )
        reports = await holders.reports()
        # Memory with every session still held: the largest member's (the leader holds the
        # lessor's state like the others; etcd's RSS counts its mmap'd bolt pages, RssAnon not).
        memory = [memory_kib(system.member(i).pid) for i in system.member_ids()]
    finally:
        await holders.stop()
    renewals = sum(r["renewals"] for r in reports)
    measured = max(1, renewals - sum(r["renewals"] for r in before))
    window = time.monotonic() - started
    return {
        "leases": n,
        "lease_ttl_ms": ttl_ms,
        "grant_s": round(grant_s, 1),
        "leader_cpu_pct": cpu.pct(cpu.leader_s),
        "members_cpu_pct": cpu.pct(cpu.members_s),
        "holders_cpu_pct": cpu.pct(cpu.holders_s),
        # CPU time per renewal acknowledged while measuring: what the load cannot inflate
        # the way it does a percentage of wall time (µs; the probe's renewals included).
        "leader_cpu_us_per_renewal": round(1e6 * cpu.leader_s / measured, 1),
        "members_cpu_us_per_renewal": round(1e6 * cpu.members_s / measured, 1),
        "holders_cpu_us_per_renewal": round(1e6 * cpu.holders_s / measured, 1),
        "probe_p50_ms": percentile_ms(trips, 0.5),
        "probe_p99_ms": percentile_ms(trips, 0.99),
        "probes": len(trips),
        "renewals_per_s": round(renewals / window, 1),
        "spurious_expiries": sum(r["lost"] for r in reports),
        "lost_codes": merged_codes(reports),
        "keepalive_streams": sum(r["streams"] for r in reports),
        "member_rss_mib_max": round(max(m["VmRSS"] for m in memory) / 1024, 1),
        "member_anon_mib_max": round(max(m.get("RssAnon", 0) for m in memory) / 1024, 1),
    }


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
    ("member_rss_mib_max", "member RSS MiB"),
    ("member_anon_mib_max", "member anon MiB"),
    ("grant_s", "grant s"),
]


def lease_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(LEASE_COLUMNS, rows)
