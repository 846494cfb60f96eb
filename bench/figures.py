"""What is measured (the figures), how each is summed up in one number, and the targets of
issue 19, as plain data shared by the runner (`bench.run`) and the report (`bench.report`).

Every result is one JSON object: system, figure, concurrency (null for the figures that have
none), `available` (false when the system lacks the primitive, with the reason), the figure's
headline `value` in `unit`, and the details (latency quantiles and histogram, CPU use, trials,
per-member memory). Ratios are always Concord / peer; whether higher is better is the
figure's `higher_is_better`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SYSTEMS = ("concord", "etcd", "pysyncobj")
SYSTEM_TITLES = {"concord": "Concord", "etcd": "etcd", "pysyncobj": "PySyncObj"}
PEERS = ("etcd", "pysyncobj")


@dataclass(frozen=True, slots=True)
class Figure:
    id: str
    title: str
    unit: str
    higher_is_better: bool
    kind: str
    """"load" (a cell per concurrency level), "failover", "restart", "memory"."""


FIGURES: tuple[Figure, ...] = (
    Figure("write", "write (put, unique keys, 64 B values)", "ops/s", True, "load"),
    Figure("cas", "compare-and-swap (one key per task)", "ops/s", True, "load"),
    Figure("lock_contended", "lock acquire+release, 1 contended lock", "cycles/s", True, "load"),
    Figure(
        "lock_uncontended", "lock acquire+release, 100 uncontended locks", "cycles/s", True, "load"
    ),
    Figure("seq_next", "sequence next (one sequence)", "ops/s", True, "load"),
    Figure("read", "linearizable read (one key)", "ops/s", True, "load"),
    Figure(
        "failover", "leader failover: kill -9 leader -> a write succeeds", "ms", False, "failover"
    ),
    Figure("restart", "restart a member holding N keys -> ready", "s", False, "restart"),
    Figure("memory", "resident memory per member holding N keys", "MiB", False, "memory"),
)
BY_ID = {f.id: f for f in FIGURES}
LOAD_FIGURES = tuple(f for f in FIGURES if f.kind == "load")

UNCONTENDED_LOCKS = 100
"""The uncontended-lock figure runs 100 tasks, each cycling its own lock."""


TARGET_LEVELS = (1, 16, 64, 256)
"""The levels issue 19 sets the load targets at (a quick run measures only some of them)."""
TARGET_KEYS = 1_000_000
"""The key count issue 19 sets the restart and memory targets with."""
CPU_MS_PER_WRITE = 2.25
"""Issue 19's CPU target: at most half of the 4-5 ms per sequential write it was, taken at
its lower end."""


@dataclass(frozen=True, slots=True)
class Target:
    """One target of issue 19: Concord's `metric` over the peer's, against `threshold`; or,
    with no peer, Concord's `metric` itself against `threshold` (in the metric's unit)."""

    text: str
    figure: str
    peer: str | None
    concurrency: int | None
    metric: str
    """"value" (the headline number), "p50_ms", "p99_ms", or "member_cpu_ms_per_op"."""
    at_least: bool
    """True: ratio (or value) >= threshold is met; False: <= threshold is met."""
    threshold: float
    keys: int | None = None
    """The key count both sides must have been measured with (the key-count figures)."""


_LOAD_TARGETS = (
    ("write", "write throughput"),
    ("cas", "compare-and-swap/s"),
    ("lock_contended", "contended lock acquire+release/s"),
    ("seq_next", "sequence next/s"),
    ("read", "linearizable read/s"),
)


def targets(levels: Iterable[int] = TARGET_LEVELS) -> list[Target]:
    """Issue 19's targets, the load ones at each of `levels`, all measured side by side in
    one run."""
    levels = tuple(levels)
    out = [
        Target("sequential write (1 in flight) p50 <= 1.0x etcd's", "write", "etcd", 1,
               "p50_ms", False, 1.0),
        Target("sequential write (1 in flight) p99 <= 1.5x etcd's", "write", "etcd", 1,
               "p99_ms", False, 1.5),
    ]  # fmt: skip
    for figure, what in _LOAD_TARGETS:
        # etcd has no sequence: its users' client-side CAS loop stands in (bench.systems.etcd).
        etcd_title = "etcd's CAS loop" if figure == "seq_next" else "etcd"
        for c in levels:
            if figure == "seq_next":
                out.append(
                    Target(f"{what} at {c} in flight >= 1.0x PySyncObj", figure, "pysyncobj",
                           c, "value", True, 1.0)
                )  # fmt: skip
            out.append(
                Target(f"{what} at {c} in flight >= 1.0x {etcd_title}", figure,
                       "etcd", c, "value", True, 1.0)
            )  # fmt: skip
        if figure == "lock_contended":
            out.append(
                Target(f"{UNCONTENDED_LOCKS} uncontended locks, acquire+release/s >= 1.0x etcd",
                       "lock_uncontended", "etcd", UNCONTENDED_LOCKS, "value", True, 1.0)
            )  # fmt: skip
    out += [
        Target(f"CPU per sequential write, all members together, <= {CPU_MS_PER_WRITE} ms "
               "(half of the 4-5 ms it was)", "write", None, 1, "member_cpu_ms_per_op",
               False, CPU_MS_PER_WRITE),
        Target(f"restart of a member holding {TARGET_KEYS:,} keys <= 1.0x etcd's", "restart",
               "etcd", None, "value", False, 1.0, keys=TARGET_KEYS),
        Target(f"memory per member holding {TARGET_KEYS:,} keys <= 1.0x etcd's", "memory",
               "etcd", None, "value", False, 1.0, keys=TARGET_KEYS),
        Target("leader failover median <= 0.5x etcd's (default settings)", "failover", "etcd",
               None, "value", False, 0.5),
    ]  # fmt: skip
    return out


def find(
    results: list[dict[str, Any]], system: str, figure: str, concurrency: int | None
) -> dict[str, Any] | None:
    for r in results:
        if r["system"] == system and r["figure"] == figure and r.get("concurrency") == concurrency:
            return r
    return None


def metric_of(result: dict[str, Any] | None, metric: str) -> float | None:
    if result is None or not result.get("available", True):
        return None
    if metric == "member_cpu_ms_per_op":
        return member_cpu_ms_per_op(result)
    value = result.get(metric)
    return None if value is None else float(value)


def member_cpu_ms_per_op(result: dict[str, Any]) -> float | None:
    """CPU time of every member together per completed operation of a load cell, in ms: the
    members' CPU (% of one core over the window) over the cell's rate, to the microsecond
    (the CPU shares it comes from are rounded to 0.1 %)."""
    cpu: dict[str, float] = result.get("member_cpu_pct") or {}
    rate = result.get("throughput_per_s")
    if not cpu or not rate:
        return None
    return round(sum(cpu.values()) / 100 / float(rate) * 1000, 3)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def evaluate(target: Target, results: list[dict[str, Any]]) -> dict[str, Any]:
    """{"target", "concord", "peer", "ratio", "status", ...}: status is "met", "not met", or
    "not measured" (a side missing, e.g. a level the quick mode skips or a system not run, or
    the key-count figures measured with other than the target's keys). A target with no peer
    compares Concord's own value with the threshold and has no ratio."""
    mine = find(results, "concord", target.figure, target.concurrency)
    ours = metric_of(mine, target.metric)
    theirs: float | None = None
    if target.peer is None:
        r = None
        compared = ours
    else:
        peers = find(results, target.peer, target.figure, target.concurrency)
        theirs = metric_of(peers, target.metric)
        r = ratio(ours, theirs)
        compared = r
        if target.keys is not None and any(
            x is not None and x.get("keys") != target.keys for x in (mine, peers)
        ):
            compared = None
    if compared is None:
        status = "not measured"
    elif (compared >= target.threshold) if target.at_least else (compared <= target.threshold):
        status = "met"
    else:
        status = "not met"
    unit = "ms" if target.metric != "value" else BY_ID[target.figure].unit
    return {
        "target": target.text,
        "figure": target.figure,
        "concurrency": target.concurrency,
        "metric": target.metric,
        "unit": unit,
        "peer": target.peer,
        "concord": ours,
        "peer_value": theirs,
        "ratio": None if r is None else round(r, 3),
        "threshold": target.threshold,
        "status": status,
    }
