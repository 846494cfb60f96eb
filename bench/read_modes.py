"""Leader-lease reads beside ReadIndex barriers (issue 19): `python -m bench.read_modes`
(`make bench-reads`).

Each round starts, one after the other, a fresh 3-member Concord cluster with
`--read-mode barrier` and one with `--read-mode lease` (otherwise exactly as `make bench`
starts Concord: mutual TLS, fsync on, the member defaults; `bench.systems.concord`), and with
`--with-etcd` (the default) a fresh etcd cluster as the reference. The order alternates from
round to round (reversed every other round), so neither mode always runs on a machine that
has just warmed up, or just filled its page cache. On each cluster:

- the linearizable read cell `make bench` measures for its "read" figure (`bench.run.
  figure_cell`: one key, one shared client, N tasks each with one read in flight, warm-up,
  then the window), at each level of `--levels`;
- the sequential write (1 in flight) as a control: lease reads change nothing on the write
  path, so a difference there is the machine's noise, not the mode's.

Per cell: throughput, p50/p99, the CPU of the leader and of every member over the window
(`bench.load.run_cell`), and, for Concord, the leader's `concord_lease_reads_served_total`
before and after the cell, set against the reads the clients completed in the cell (warm-up
included): the share of reads the leader served on its lease. Near 100 % in lease mode, 0 with
barriers; a lease-mode cell well below 100 % fell back to barriers (the lease ran out between
reads, or the leader changed: that is flagged too). The counter counts every read the
leader served on its lease, not only the cell's, so a share can come out a little above
100 % (a smoke run: 100.1 %).

Numbers only; nothing is asserted. The load generator shares the machine with the members:
compare the modes within one run, on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from coordinator.testing.procs import metric

from .__main__ import RESULTS, environment, etcd_binary, log
from .procs import Supervisor
from .protos import ensure_generated
from .run import figure_cell
from .systems.base import Cluster
from .tables import markdown_table

MODES = ("barrier", "lease")
"""The Concord variants: the value of `--read-mode` on every member."""
ETCD = "etcd"
"""The reference variant: etcd's linearizable (default) Range."""
DEFAULT_LEVELS = (1, 16, 64, 256)
CONTROL = ("write", 1)
"""The control cell: sequential writes."""
LEASE_METRIC = "concord_lease_reads_served_total"


def run_order(variants: Sequence[str], round_no: int) -> list[str]:
    """The variants in the order round `round_no` (from 1) runs them: as given in odd rounds,
    reversed in even ones."""
    return list(variants) if round_no % 2 else list(reversed(variants))


def cell_row(
    variant: str,
    round_no: int,
    leader: int,
    result: dict[str, Any],
    *,
    stats: dict[str, int],
    lease_reads: tuple[float | None, float | None],
    leader_after: int,
) -> dict[str, Any]:
    """One cell's record: `result` as `bench.run.figure_cell` returns it, with the leader's
    CPU, the members' total and the lease reads the leader served (`lease_reads`: its
    counter before and after the cell, None where it has none)."""
    cpu: dict[str, float] = result.get("member_cpu_pct", {})
    leader_cpu = cpu.get(f"{result['system']}-{leader}")
    before, after = lease_reads
    served = None if before is None or after is None else int(after - before)
    reads = stats.get("reads")
    share = None
    if served is not None and reads:
        share = round(served / reads, 4)
    return {
        "variant": variant,
        "round": round_no,
        "leader": leader,
        "leader_changed": leader_after != leader,
        "leader_cpu_pct": leader_cpu,
        "members_cpu_pct": round(sum(cpu.values()), 1) if cpu else None,
        "reads_completed": reads,
        "lease_reads_served": served,
        "lease_share": share,
        **result,
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarise(rows: list[dict[str, Any]], variants: Sequence[str]) -> list[dict[str, Any]]:
    """Per variant, figure and level, over the rounds: throughput median, min and max; the
    medians of p50, p99 and the leader's CPU; the lease reads served over the reads completed,
    pooled and the lowest round's; the leader changes seen; and for lease mode, its median
    throughput over barrier mode's at the same cell. Error rows (no figure) are left out."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("figure") is None or r.get("throughput_per_s") is None:
            continue
        groups.setdefault((r["variant"], r["figure"], int(r["concurrency"])), []).append(r)

    def order(key: tuple[str, str, int]) -> tuple[int, int, int]:
        variant, figure, level = key
        rank = variants.index(variant) if variant in variants else len(variants)
        return (figure != "read", rank, level)

    out: list[dict[str, Any]] = []
    for key in sorted(groups, key=order):
        variant, figure, level = key
        got = groups[key]
        tput = [float(r["throughput_per_s"]) for r in got]
        shares = [float(r["lease_share"]) for r in got if r.get("lease_share") is not None]
        counted = [
            (int(r["lease_reads_served"]), int(r["reads_completed"]))
            for r in got
            if r.get("lease_reads_served") is not None and r.get("reads_completed")
        ]
        served = sum(c[0] for c in counted)
        reads = sum(c[1] for c in counted)
        out.append(
            {
                "variant": variant,
                "figure": figure,
                "concurrency": level,
                "rounds": len(got),
                "throughput_median": _median(tput),
                "throughput_min": min(tput),
                "throughput_max": max(tput),
                "p50_ms": _median([r["p50_ms"] for r in got if r.get("p50_ms") is not None]),
                "p99_ms": _median([r["p99_ms"] for r in got if r.get("p99_ms") is not None]),
                "leader_cpu_pct": _median(
                    [r["leader_cpu_pct"] for r in got if r.get("leader_cpu_pct") is not None]
                ),
                "failed": sum(int(r.get("failed", 0)) for r in got),
                "leader_changes": sum(1 for r in got if r.get("leader_changed")),
                "lease_share": round(served / reads, 4) if reads else None,
                "lease_share_min": min(shares) if shares else None,
            }
        )
    barrier = {
        (s["figure"], s["concurrency"]): s["throughput_median"]
        for s in out
        if s["variant"] == "barrier"
    }
    for s in out:
        base = barrier.get((s["figure"], s["concurrency"]))
        if s["variant"] != "barrier" and base:
            s["vs_barrier"] = round(s["throughput_median"] / base, 2)
    return out


def _pct(share: float | None) -> str | None:
    return None if share is None else f"{100 * share:.1f}%"


def table(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table, one row per variant, figure and level."""
    rows: list[dict[str, Any]] = []
    for s in summary:
        share = _pct(s.get("lease_share"))
        low = _pct(s.get("lease_share_min"))
        if share is not None and low is not None and low != share and s["rounds"] > 1:
            share = f"{share} (min {low})"
        notes = []
        if s.get("failed"):
            notes.append(f"{s['failed']} failed")
        if s.get("leader_changes"):
            notes.append(f"leader changed in {s['leader_changes']} round(s)")
        rows.append(
            {
                "mode": s["variant"],
                "op": s["figure"],
                "level": s["concurrency"],
                "median": f"{s['throughput_median']:,.0f}",
                "range": f"{s['throughput_min']:,.0f}-{s['throughput_max']:,.0f}",
                "vs": s.get("vs_barrier"),
                "p50": s.get("p50_ms"),
                "p99": s.get("p99_ms"),
                "cpu": s.get("leader_cpu_pct"),
                "share": share,
                "notes": "; ".join(notes) or None,
            }
        )
    return markdown_table(
        [
            ("mode", "mode"),
            ("op", "op"),
            ("level", "in flight"),
            ("median", "ops/s (median)"),
            ("range", "min-max"),
            ("vs", "vs barrier"),
            ("p50", "p50 ms"),
            ("p99", "p99 ms"),
            ("cpu", "leader CPU %"),
            ("share", "served on the lease"),
            ("notes", "notes"),
        ],
        rows,
    )


# --- running ------------------------------------------------------------------------------------


async def _lease_reads(cluster: Cluster, member_id: int) -> float | None:
    """The member's lease reads served so far (None: not a Concord member)."""
    metrics_text = getattr(cluster, "metrics_text", None)
    if metrics_text is None:
        return None
    return metric(await metrics_text(member_id), LEASE_METRIC)


async def measure_cluster(
    cluster: Cluster, variant: str, round_no: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every cell on one started cluster."""
    rows: list[dict[str, Any]] = []
    await cluster.prepare("read", await cluster.leader())
    for figure, level in [*(("read", c) for c in args.levels), CONTROL]:
        leader = await cluster.leader()
        before = await _lease_reads(cluster, leader)
        result, stats = await figure_cell(
            cluster,
            figure,
            level,
            leader=leader,
            warmup_s=args.warmup,
            duration_s=args.seconds,
        )
        after = await _lease_reads(cluster, leader)
        row = cell_row(
            variant,
            round_no,
            leader,
            result,
            stats=stats,
            lease_reads=(before, after),
            leader_after=await cluster.leader(),
        )
        rows.append(row)
        share = _pct(row["lease_share"])
        log(
            f"  {variant} {figure} x{level}: {row['throughput_per_s']:,.0f}/s "
            f"p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms, {row['failed']} failed, "
            f"leader CPU {row['leader_cpu_pct']}%"
            + (f", served on the lease {share}" if share is not None else "")
            + (", LEADER CHANGED" if row["leader_changed"] else "")
        )
    return rows


def _maker(
    work: Path, sup: Supervisor, etcd: tuple[Path, str] | None
) -> Callable[[str, int], Cluster]:
    from .systems.concord import ConcordCluster  # noqa: PLC0415
    from .systems.etcd import EtcdCluster  # noqa: PLC0415

    def make(variant: str, round_no: int) -> Cluster:
        root = work / f"{variant}-{round_no}"
        if variant == ETCD:
            if etcd is None:
                raise ValueError("no etcd binary")
            return EtcdCluster(root, sup, *etcd)
        return ConcordCluster(root, sup, member_args=["--read-mode", variant])

    return make


async def measure(
    args: argparse.Namespace, make: Callable[[str, int], Cluster], variants: Sequence[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every round; a cluster that fails is recorded and the run goes on."""
    rows: list[dict[str, Any]] = []
    described: dict[str, Any] = {}
    for round_no in range(1, args.rounds + 1):
        for variant in run_order(variants, round_no):
            cluster = make(variant, round_no)
            described.setdefault(variant, cluster.describe())
            log(f"round {round_no}/{args.rounds}: {variant}: starting 3 members")
            try:
                await cluster.start()
                rows += await measure_cluster(cluster, variant, round_no, args)
            except Exception as err:
                reason = f"{type(err).__name__}: {err}"[:400]
                log(f"  {variant}: FAILED: {reason}")
                rows.append({"variant": variant, "round": round_no, "error": reason})
            finally:
                with contextlib.suppress(Exception):
                    await cluster.stop()
    return rows, described


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    ensure_generated()
    variants = [*MODES, ETCD] if args.with_etcd else list(MODES)
    etcd = etcd_binary(args.etcd) if args.with_etcd else None
    work = Path(tempfile.mkdtemp(prefix="concord-bench-reads-"))
    env = environment(work)
    if env["data_filesystem"] in ("tmpfs", "ramfs"):
        log(f"warning: {work} is on {env['data_filesystem']}: data would not be on disk")
    log(
        f"read modes: {', '.join(variants)}; levels {args.levels}, {args.rounds} round(s), "
        f"{args.warmup} s warm-up + {args.seconds} s per cell; data -> {work}"
    )
    started = time.perf_counter()
    sup = Supervisor()
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        rows, described = asyncio.run(measure(args, _maker(work, sup, etcd), variants))
    except KeyboardInterrupt:
        log("interrupted: stopping every process")
        return 130
    finally:
        sup.close()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(work, ignore_errors=True)
    env["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = summarise(rows, variants)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"read-modes-{stamp}.json"
    doc = {
        "schema": 1,
        "environment": env,
        "settings": {
            "variants": variants,
            "levels": list(args.levels),
            "control": {"figure": CONTROL[0], "concurrency": CONTROL[1]},
            "warmup_s": args.warmup,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "client": "one shared client per cell (as make bench)",
        },
        "systems": described,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "summary": summary,
        "rows": rows,
    }
    out.write_text(json.dumps(doc, indent=2))
    print(table(summary))
    errors = [r for r in rows if "error" in r]
    for r in errors:
        print(f"round {r['round']}, {r['variant']}: FAILED: {r['error']}")
    log(f"wrote {out} ({doc['elapsed_s']:.0f} s)")
    return 1 if errors else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.read_modes",
        description="Linearizable reads with --read-mode barrier and lease (issue 19).",
    )
    p.add_argument(
        "--levels",
        default=",".join(map(str, DEFAULT_LEVELS)),
        help="reads in flight, comma-separated (default: %(default)s)",
    )
    p.add_argument(
        "--seconds", type=float, default=5.0, help="measured window per cell (default: %(default)s)"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="warm-up per cell, not counted (default: %(default)s)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="fresh clusters per mode (default: %(default)s)"
    )
    p.add_argument(
        "--with-etcd",
        dest="with_etcd",
        action="store_true",
        default=True,
        help="also etcd's linearizable read, as the reference (the default)",
    )
    p.add_argument("--no-etcd", dest="with_etcd", action="store_false", help="Concord only")
    p.add_argument("--etcd", help="an etcd binary (default: scripts/build_etcd.sh's)")
    args = p.parse_args(argv)
    args.levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
    if not args.levels or min(args.levels) < 1 or args.rounds < 1:
        p.error("--levels needs positive integers and --rounds at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
