"""What is measured (the figures), how each is summed up in one number, and the targets of
issue 5, as plain data shared by the runner (`bench.run`) and the report (`bench.report`).

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


@dataclass(frozen=True, slots=True)
class Target:
    """One target of issue 5: Concord's `metric` over the peer's, against `threshold`."""

    text: str
    figure: str
    peer: str
    concurrency: int | None
    metric: str
    """"value" (the headline number) or "p50_ms"."""
    at_least: bool
    """True: ratio >= threshold is met; False: ratio <= threshold is met."""
    threshold: float


def targets(lock_levels: Iterable[int]) -> list[Target]:
    out = [
        Target(f"write throughput at {c} in flight >= 1.0x {peer_title}", "write", peer, c,
               "value", True, 1.0)
        for c in (64, 256)
        for peer, peer_title in (("etcd", "etcd"), ("pysyncobj", "PySyncObj"))
    ]  # fmt: skip
    out.append(
        Target("sequential write (1 in flight) p50 <= etcd's", "write", "etcd", 1, "p50_ms",
               False, 1.0)
    )  # fmt: skip
    out.append(
        Target("leader failover median <= 0.5x etcd's (default settings)", "failover", "etcd",
               None, "value", False, 0.5)
    )  # fmt: skip
    out.extend(
        Target(f"contended lock acquire+release/s at {c} in flight >= etcd's v3lock",
               "lock_contended", "etcd", c, "value", True, 1.0)
        for c in lock_levels
    )  # fmt: skip
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
    value = result.get(metric)
    return None if value is None else float(value)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def evaluate(target: Target, results: list[dict[str, Any]]) -> dict[str, Any]:
    """{"target", "concord", "peer", "ratio", "status"}: status is "met", "not met", or "not
    measured" (a side missing, e.g. a level the quick mode skips)."""
    ours = metric_of(find(results, "concord", target.figure, target.concurrency), target.metric)
    theirs = metric_of(find(results, target.peer, target.figure, target.concurrency), target.metric)
    r = ratio(ours, theirs)
    if r is None:
        status = "not measured"
    elif (r >= target.threshold) if target.at_least else (r <= target.threshold):
        status = "met"
    else:
        status = "not met"
    return {
        "target": target.text,
        "figure": target.figure,
        "concurrency": target.concurrency,
        "metric": target.metric,
        "peer": target.peer,
        "concord": ours,
        "peer_value": theirs,
        "ratio": None if r is None else round(r, 3),
        "threshold": target.threshold,
        "status": status,
    }
