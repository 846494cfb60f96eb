"""Locks at scale, for `bench.scale --locks N,...`: N locks held through the client library by
locker processes, Concord beside etcd on the same machine.

Per level, `--procs` locker processes take N distinct locks between them, each as an
application would hold one, and keep holding them:

- Concord: `Client.lock(name)` per lock (a lease of its own, granted, the lock acquired, the
  lease kept alive on the client's one keep-alive stream, loss reported on the handle);
- etcd: what `concurrency.NewMutex(session, name).Lock()` does, through etcd's server-side
  v3lock API (`Lock(name, lease)`, the same lease-plus-ownership-key protocol run by the
  server): a lease per lock granted, the lock taken under it, the lease kept alive on one
  LeaseKeepAlive stream per process on `Client.keep_alive`'s schedule (bench/leases.py's
  `EtcdKeeper`, as clientv3 multiplexes its sessions' leases on one stream).

Once every lock is held (and one TTL of renewals has passed), the benchmark process measures
for `--seconds`: the leader's CPU (the busiest member's, whoever leads: the leader may change
meanwhile) and all three members', a probe put every 50 ms on whoever leads (p50/p99:
what a writer waits while the locks are held), and the locks lost (a holder that kept renewing
was told its lock or lease had ended, or heard no renewal within the TTL), counted apart from
the locks lost while they were being taken (a lease that ended before its lock was granted,
as a burst of acquisitions can cause). None should be.

Numbers only; nothing is asserted (STYLE.md lesson 12). The lockers run on the same machine as
the members: compare the systems within one run, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import time
from pathlib import Path
from typing import Any

from .holders import (
    HolderProcs,
    credentials,
    measure_cpu,
    merged_codes,
    percentile_ms,
    probe_every,
    serve_report,
    spread,
)
from .leases import EtcdKeeper
from .systems.base import Cluster
from .tables import markdown_table

PROBE_EVERY_S = 0.05
ACQUIRE_CONCURRENCY = 200


# --- locker processes ----------------------------------------------------------------------------


def locker_main(argv: list[str]) -> int:
    """`python -m bench.scale locker SYSTEM COUNT OFFSET TTL_MS TLS_DIR ENDPOINT...`: take
    COUNT locks, print READY; on "REPORT" from stdin print one JSON line, then let them go."""
    system, count, offset, ttl_ms, tls_dir, *endpoints = argv
    return asyncio.run(
        _hold_locks(
            system,
            int(count),
            offset=offset,
            ttl_ms=int(ttl_ms),
            tls_dir=Path(tls_dir),
            endpoints=endpoints,
        )
    )


async def _hold_locks(
    system: str, count: int, *, offset: str, ttl_ms: int, tls_dir: Path, endpoints: list[str]
) -> int:
    creds = credentials(tls_dir)
    gate = asyncio.Semaphore(ACQUIRE_CONCURRENCY)
    names = [f"/bench-lock/{offset}-{i}" for i in range(count)]
    if system == "concord":
        from coordinator.client import Client  # noqa: PLC0415

        client = Client(endpoints, credentials=creds, timeout_s=60.0)
        managers = [client.lock(name, ttl_ms=ttl_ms, timeout_s=120) for name in names]

        from coordinator.client import ConcordError  # noqa: PLC0415

        lost_taking: list[str] = []
        """Codes of the locks lost before they were held (their lease ended meanwhile)."""

        async def take(cm: Any) -> Any:  # noqa: ANN401 (an async context manager's handle)
            async with gate:
                try:
                    return await cm.__aenter__()
                except ConcordError as err:
                    lost_taking.append(err.code)
                    return None

        taken = await asyncio.gather(*(take(cm) for cm in managers))
        held = [h for h in taken if h is not None]
        entered = [cm for cm, h in zip(managers, taken, strict=True) if h is not None]

        def report() -> dict[str, Any]:
            lost = [h.error.code for h in held if h.lost.is_set()]
            return {
                "locks": len(held),
                "lost": len(lost),
                "lost_codes": dict(collections.Counter(lost)),
                "lost_acquiring": len(lost_taking),
                "lost_acquiring_codes": dict(collections.Counter(lost_taking)),
                "streams": client.keepalive_streams_opened,
            }

        async def close() -> None:
            async def let_go(cm: Any) -> None:  # noqa: ANN401
                async with gate:
                    await cm.__aexit__(None, None, None)

            await asyncio.gather(*(let_go(cm) for cm in entered), return_exceptions=True)
            await client.close()

    else:
        from .protos import etcd_lock_pb2 as lockpb  # noqa: PLC0415
        from .protos import etcd_lock_pb2_grpc as lock_grpc  # noqa: PLC0415

        keeper = EtcdKeeper(endpoints, creds, ttl_ms)
        await keeper.grant(count, gate)
        keeper.start()  # kept alive from the grant on, as a concurrency.Session does
        stubs: list[Any] = [lock_grpc.LockStub(ch) for ch in keeper.channels]  # type: ignore[no-untyped-call]
        leases = list(keeper.expires_at)

        import grpc  # noqa: PLC0415

        failed: list[str] = []

        async def take_etcd(i: int) -> None:
            async with gate:
                try:
                    await stubs[i % len(stubs)].Lock(
                        lockpb.LockRequest(name=names[i].encode(), lease=leases[i]), timeout=120
                    )
                except grpc.aio.AioRpcError as err:
                    failed.append(err.code().name)

        await asyncio.gather(*(take_etcd(i) for i in range(count)))

        def report() -> dict[str, Any]:
            r = keeper.report()
            return {
                "locks": r["leases"] - len(failed),
                "lost": r["lost"],
                "lost_codes": r["lost_codes"],
                "lost_acquiring": len(failed),
                "lost_acquiring_codes": dict(collections.Counter(failed)),
                "streams": r["streams"],
            }

        async def close() -> None:
            from .protos import etcd_kv_pb2 as kv  # noqa: PLC0415

            async def revoke(i: int) -> None:
                async with gate:
                    await keeper.stubs[i % len(keeper.stubs)].LeaseRevoke(
                        kv.LeaseRevokeRequest(ID=leases[i]), timeout=30
                    )

            await asyncio.gather(*(revoke(i) for i in range(count)), return_exceptions=True)
            await keeper.close()

    return await serve_report(report, close)


# --- the probe (in the benchmark process) --------------------------------------------------------


async def probe_writes(system: Cluster, leader: int, seconds: float) -> list[float]:
    """Put one key every PROBE_EVERY_S for `seconds`, on whoever leads (aimed at `leader`
    first, the connection knows every member and follows a leader change); returns the
    latencies."""
    session = await system.session(leader, ids=system.member_ids())
    keys = itertools.count()
    try:
        return await probe_every(
            PROBE_EVERY_S,
            seconds,
            lambda: session.put(b"/bench-lock-probe/%d" % (next(keys) % 100), b"x"),
            "probe put",
        )
    finally:
        await session.close()


# --- one level -----------------------------------------------------------------------------------


async def run_lock_level(
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
            ["locker", system.name, str(count), f"{n}-{k}", str(ttl_ms), str(tls), *endpoints]
            for k, count in enumerate(spread(n, args.procs))
        ],
        "locker",
    )
    try:
        started = time.monotonic()
        await holders.ready(900)
        acquire_s = time.monotonic() - started
        leaders = [leader, await system.leader()]
        await asyncio.sleep(ttl_ms / 1000)  # one TTL of renewals before measuring
        puts, leader_cpu, members_cpu = await measure_cpu(
            system, probe_writes(system, leaders[-1], args.seconds)
        )
        leaders.append(await system.leader())
        reports = await holders.reports()
        await holders.exited(300)  # they let their locks go: the next level starts clean
    finally:
        await holders.stop()
    return {
        "locks": n,
        "lease_ttl_ms": ttl_ms,
        "acquire_s": round(acquire_s, 1),
        "leader_cpu_pct": leader_cpu,
        "members_cpu_pct": members_cpu,
        "probe_p50_ms": percentile_ms(puts, 0.5),
        "probe_p99_ms": percentile_ms(puts, 0.99),
        "probes": len(puts),
        "locks_held": sum(r["locks"] for r in reports),
        "locks_lost": sum(r["lost"] for r in reports),
        "lost_acquiring": sum(r.get("lost_acquiring", 0) for r in reports),
        "lost_codes": merged_codes(reports),
        "keepalive_streams": sum(r["streams"] for r in reports),
        # The leader before, after taking the locks, after measuring (sampled: a change
        # there and back is missed); "leader CPU" is the busiest member's, whoever led.
        "leaders": leaders,
    }


LOCK_COLUMNS = [
    ("system", "system"),
    ("locks", "locks"),
    ("leader_cpu_pct", "leader CPU %"),
    ("members_cpu_pct", "3 members CPU %"),
    ("probe_p50_ms", "probe put p50 ms"),
    ("probe_p99_ms", "probe put p99 ms"),
    ("probes", "probes"),
    ("locks_lost", "locks lost"),
    ("lost_acquiring", "lost acquiring"),
    ("keepalive_streams", "streams"),
    ("acquire_s", "acquire s"),
]


def lock_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(LOCK_COLUMNS, rows)
