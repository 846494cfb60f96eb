"""The `make bench-scale` runs (.results/bench/scale-<UTC stamp>.json) summed up across runs:
per kind (watchers, leases, locks held), count and system, each figure's median and min-max,
the Concord / etcd ratio of the medians, the targets of issue 20 met in k of N runs, and a plot
of cost against count.

A pure function of the documents, like `bench.report`: `bench.scale` measures, this module
only formats. A run here is one document; the three kinds may come from separate invocations
(the default selection takes every document written within 3 hours of the newest).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .figures import fmt_ratio, ratio

KINDS = ("watchers", "leases", "locks")
SYSTEMS = ("concord", "etcd")
TITLES = {"concord": "Concord", "etcd": "etcd"}
WINDOW = dt.timedelta(hours=3)
STAMP = re.compile(r"^scale-(\d{8}T\d{6}Z)\.json$")
PLOT_NAME = "scale.png"
COLORS = {"concord": "#1f77b4", "etcd": "#2ca02c"}

METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "watchers": (
        ("writes_per_s", "writes/s"),
        ("write_p50_ms", "write p50 ms"),
        ("write_p50_vs_none", "write p50 / without watchers"),
        ("leader_cpu_pct", "leader CPU %"),
        ("members_cpu_pct", "3 members CPU %"),
        ("delivered", "events delivered"),
        ("expected", "events expected (acknowledged writes x watchers)"),
        ("delivery_p50_ms", "delivery p50 ms"),
        ("delivery_p99_ms", "delivery p99 ms"),
        ("duplicates_or_disorder", "duplicates or disorder"),
    ),
    "leases": (
        ("leader_cpu_pct", "leader CPU %"),
        ("members_cpu_pct", "3 members CPU %"),
        ("leader_cpu_us_per_renewal", "leader CPU µs/renewal"),
        ("holders_cpu_us_per_renewal", "holders CPU µs/renewal"),
        ("probe_p50_ms", "probe renewal p50 ms"),
        ("probe_p99_ms", "probe renewal p99 ms"),
        ("renewals_per_s", "renewals/s"),
        ("spurious_expiries", "spurious expiries"),
        ("keepalive_streams", "keep-alive streams"),
        ("member_rss_mib_max", "member RSS MiB (max)"),
        ("member_anon_mib_max", "member anonymous MiB (max)"),
        ("grant_s", "grant s"),
    ),
    "locks": (
        ("leader_cpu_pct", "leader CPU %"),
        ("members_cpu_pct", "3 members CPU %"),
        ("probe_p50_ms", "probe put p50 ms"),
        ("probe_p99_ms", "probe put p99 ms"),
        ("locks_lost", "locks lost (held)"),
        ("lost_acquiring", "lost acquiring"),
        ("keepalive_streams", "keep-alive streams"),
        ("acquire_s", "acquire s"),
    ),
}

DERIVED: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "delivery_gap": lambda r: (
        None
        if r.get("delivered") is None or r.get("expected") is None
        else abs(float(r["expected"]) - float(r["delivered"]))
    ),
    "lost": lambda r: (
        None
        if r.get("locks_lost") is None
        else float(r["locks_lost"]) + float(r.get("lost_acquiring") or 0)
    ),
}
"""Figures a target needs that a row does not carry as such."""


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    """The document's file name (its UTC stamp)."""
    doc: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ScaleTarget:
    """A target of issue 20 on Concord's row at `level`: its `metric` at most `limit` times
    etcd's (`vs_etcd`), or at most `limit` itself."""

    text: str
    kind: str
    level: int
    metric: str
    limit: float
    vs_etcd: bool


TARGETS = (
    ScaleTarget("10,000 leases: no spurious expiry", "leases", 10_000, "spurious_expiries", 0,
                False),
    ScaleTarget("10,000 leases: leader CPU <= 1.5x etcd's", "leases", 10_000, "leader_cpu_pct",
                1.5, True),
    ScaleTarget("10,000 leases: probe renewal p99 <= 2x etcd's", "leases", 10_000,
                "probe_p99_ms", 2.0, True),
    ScaleTarget("10,000 leases: member RSS <= 1.5x etcd's", "leases", 10_000,
                "member_rss_mib_max", 1.5, True),
    ScaleTarget("10,000 leases: member anonymous memory <= 1.5x etcd's", "leases", 10_000,
                "member_anon_mib_max", 1.5, True),
    ScaleTarget("5,000 watchers: every event delivered to every watcher", "watchers", 5_000,
                "delivery_gap", 0, False),
    ScaleTarget("5,000 watchers: delivery p99 <= etcd's", "watchers", 5_000, "delivery_p99_ms",
                1.0, True),
    ScaleTarget("5,000 watchers: write p50 <= 2x without watchers", "watchers", 5_000,
                "write_p50_vs_none", 2.0, False),
    ScaleTarget("10,000 locks: none lost (held or while taken)", "locks", 10_000, "lost", 0,
                False),
    ScaleTarget("10,000 locks: probe put p99 <= 2x etcd's", "locks", 10_000, "probe_p99_ms",
                2.0, True),
)  # fmt: skip


# --- which documents -----------------------------------------------------------------------------


def stamp_of(path: Path) -> dt.datetime | None:
    m = STAMP.match(path.name)
    if m is None:
        return None
    return dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)


def default_selection(results_dir: Path, window: dt.timedelta = WINDOW) -> list[Path]:
    """Every scale-*.json in `results_dir` stamped within `window` of the newest, oldest first:
    the runs of one session, not last week's from older code."""
    if not results_dir.is_dir():
        return []
    found = sorted((s, p) for p in results_dir.glob("scale-*.json") if (s := stamp_of(p)))
    if not found:
        return []
    newest = found[-1][0]
    return [p for s, p in found if newest - s <= window]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    return sorted((Run(p.name, json.loads(p.read_text())) for p in paths), key=lambda r: r.name)


# --- grouping ------------------------------------------------------------------------------------


def kind_of(row: dict[str, Any]) -> str | None:
    return next((k for k in KINDS if k in row), None)


def rows_of(run: Run, kind: str, level: int, system: str) -> list[dict[str, Any]]:
    return [
        r
        for r in run.doc.get("rows", [])
        if kind_of(r) == kind and int(r[kind]) == level and r.get("system") == system
    ]


def levels(runs: Sequence[Run], kind: str) -> list[int]:
    return sorted({int(r[kind]) for run in runs for r in run.doc.get("rows", [])
                   if kind_of(r) == kind})  # fmt: skip


def value_of(row: dict[str, Any], metric: str) -> float | None:
    if "error" in row:
        return None
    if metric in DERIVED:
        return DERIVED[metric](row)
    v = row.get(metric)
    return None if v is None else float(v)


@dataclass(frozen=True, slots=True)
class Spread:
    values: tuple[float, ...]
    failed: tuple[str, ...]
    """The errors of the runs whose row carries one instead of figures."""

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def spread(runs: Sequence[Run], kind: str, level: int, system: str, metric: str) -> Spread:
    values, failed = [], []
    for run in runs:
        for row in rows_of(run, kind, level, system):
            if "error" in row:
                failed.append(str(row["error"]))
                continue
            v = value_of(row, metric)
            if v is not None:
                values.append(v)
    return Spread(tuple(values), tuple(failed))


def runs_at(runs: Sequence[Run], kind: str, level: int, system: str) -> tuple[int, int]:
    """(runs with figures, runs that failed) at one count for one system."""
    ok = failed = 0
    for run in runs:
        got = rows_of(run, kind, level, system)
        if any("error" not in r for r in got):
            ok += 1
        elif got:
            failed += 1
    return ok, failed


# --- formatting ----------------------------------------------------------------------------------


def num(v: float) -> str:
    if float(v).is_integer():
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(s: Spread) -> str:
    if not s.values:
        return "failed" if s.failed else "-"
    med = s.median
    assert med is not None
    if len(s.values) == 1:
        return num(med)
    return f"{num(med)} ({num(min(s.values))}-{num(max(s.values))})"


def _level_text(kind: str, level: int) -> str:
    return "none (baseline)" if kind == "watchers" and level == 0 else f"{level:,}"


def kind_table(runs: Sequence[Run], kind: str) -> str:
    head = [kind, "runs (Concord / etcd)", "figure", "Concord", "etcd", "Concord / etcd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in levels(runs, kind):
        counts = []
        for system in SYSTEMS:
            ok, failed = runs_at(runs, kind, level, system)
            counts.append(f"{ok}" + (f" (+{failed} failed)" if failed else ""))
        first = True
        for metric, title in METRICS[kind]:
            got = {s: spread(runs, kind, level, s, metric) for s in SYSTEMS}
            if not any(g.values for g in got.values()) and not first:
                continue  # a figure no run has here (the baseline has no deliveries)
            r = ratio(got["concord"].median, got["etcd"].median)
            lead = [_level_text(kind, level), " / ".join(counts)] if first else ["", ""]
            lines.append(
                "| " + " | ".join([*lead, title, cell(got["concord"]), cell(got["etcd"]),
                                   fmt_ratio(r)]) + " |"
            )  # fmt: skip
            first = False
    return "\n".join(lines)


GROWTH = {
    "watchers": (("leader_cpu_pct", "leader CPU %"), ("delivery_p99_ms", "delivery p99 ms"),
                 ("write_p50_ms", "write p50 ms")),
    "leases": (("leader_cpu_pct", "leader CPU %"), ("probe_p99_ms", "probe renewal p99 ms"),
               ("member_rss_mib_max", "member RSS MiB (max)")),
    "locks": (("leader_cpu_pct", "leader CPU %"), ("probe_p99_ms", "probe put p99 ms")),
}  # fmt: skip
"""The costs whose growth with the count the page shows in one line each."""


def growth_table(runs: Sequence[Run], kind: str) -> str:
    """How each cost grows with the count: the medians side by side, and the largest count's
    over the smallest's (the watchers' baseline, no watchers, is left out)."""
    counts = [n for n in levels(runs, kind) if n > 0]
    head = ["figure", "system", *(f"{n:,}" for n in counts), "largest / smallest"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, title in GROWTH[kind]:
        for system in SYSTEMS:
            meds = [spread(runs, kind, n, system, metric).median for n in counts]
            if all(m is None for m in meds):
                continue
            shown = ["-" if m is None else num(m) for m in meds]
            grew = ratio(meds[-1], meds[0]) if len(meds) > 1 else None
            lines.append("| " + " | ".join([title, TITLES[system], *shown, fmt_ratio(grew)]) + " |")
    return "\n".join(lines)


def failures(runs: Sequence[Run]) -> list[str]:
    out = []
    for run in runs:
        for row in run.doc.get("rows", []):
            kind = kind_of(row)
            if kind is not None and "error" in row:
                out.append(
                    f"- {TITLES.get(row.get('system', ''), row.get('system'))}, "
                    f"{int(row[kind]):,} {kind} (`{run.name}`): failed: {row['error']}"
                )
    return out


# --- targets -------------------------------------------------------------------------------------


def evaluate(target: ScaleTarget, run: Run) -> dict[str, Any]:
    """{"status": "met" | "not met" | "failed" | "not measured", "shown": the figure}. A run
    whose Concord row failed counts against the target; one without the level (or, for a
    target against etcd, without etcd's figure) did not measure it."""
    ours_rows = rows_of(run, target.kind, target.level, "concord")
    if not ours_rows:
        return {"status": "not measured", "shown": ""}
    if all("error" in r for r in ours_rows):
        return {"status": "failed", "shown": ""}
    ours = value_of(next(r for r in ours_rows if "error" not in r), target.metric)
    if ours is None:
        return {"status": "not measured", "shown": ""}
    if not target.vs_etcd:
        status = "met" if ours <= target.limit else "not met"
        return {"status": status, "shown": num(ours)}
    theirs = [value_of(r, target.metric) for r in rows_of(run, target.kind, target.level, "etcd")]
    r = ratio(ours, next((v for v in theirs if v is not None), None))
    if r is None:
        return {"status": "not measured", "shown": ""}
    return {"status": "met" if r <= target.limit else "not met", "shown": fmt_ratio(r)}


def targets_table(runs: Sequence[Run]) -> str:
    lines = ["| target | met in | each run |", "|---|---|---|"]
    for t in TARGETS:
        got = [(run, evaluate(t, run)) for run in runs]
        measured = [(run, e) for run, e in got if e["status"] != "not measured"]
        met = sum(1 for _, e in measured if e["status"] == "met")
        each = "; ".join(
            f"{e['status']}" + (f" ({e['shown']})" if e["shown"] else "") for _, e in measured
        )
        lines.append(
            f"| {t.text} | {f'{met} of {len(measured)}' if measured else 'not measured'} "
            f"| {each or '-'} |"
        )
    return "\n".join(lines)


# --- the plot ------------------------------------------------------------------------------------

PLOTTED = (
    ("leases", "leader_cpu_pct", "leases: leader CPU %"),
    ("leases", "probe_p99_ms", "leases: probe renewal p99 (ms)"),
    ("locks", "leader_cpu_pct", "locks held: leader CPU %"),
    ("locks", "probe_p99_ms", "locks held: probe put p99 (ms)"),
)


def plot(runs: Sequence[Run], out_dir: Path) -> Path | None:
    """scale.png: cost against count (log x), Concord beside etcd, the median of the runs with
    their min-max as error bars; None without matplotlib or without lease or lock rows."""
    if not any(levels(runs, kind) for kind in ("leases", "locks")):
        return None
    try:
        import matplotlib  # noqa: PLC0415 (an optional, bench-only dependency)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.6), squeeze=False)
    for ax, (kind, metric, title) in zip(axes.flat, PLOTTED, strict=True):
        for system in SYSTEMS:
            pts = [(n, spread(runs, kind, n, system, metric)) for n in levels(runs, kind)]
            pts = [(n, s) for n, s in pts if s.values]
            if not pts:
                continue
            xs = [n for n, _ in pts]
            meds = [float(s.median or 0) for _, s in pts]
            low = [m - min(s.values) for m, (_, s) in zip(meds, pts, strict=True)]
            high = [max(s.values) - m for m, (_, s) in zip(meds, pts, strict=True)]
            ax.errorbar(xs, meds, yerr=[low, high], marker="o", capsize=3,
                        label=TITLES[system], color=COLORS[system])  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlim(70, 14_000)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(kind)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    measured = max(
        sum(1 for run in runs if any(kind_of(row) == kind for row in run.doc["rows"]))
        for kind in ("leases", "locks")
    )
    fig.suptitle(f"Cost against count, median and min-max of {measured} run(s)", fontsize=10)
    fig.tight_layout()
    path = out_dir / PLOT_NAME
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the section of docs/benchmarks.md -----------------------------------------------------------

HEADING = "## Sessions, locks and watches at scale (`make bench-scale`)"
COMMAND = (
    'make bench-scale BENCH_ARGS="--watchers 100,1000,5000 --leases 100,1000,10000 '
    '--locks 100,1000,10000"'
)
METHOD = {
    "watchers": (
        "### Watchers\n\nN watchers on one prefix (watch streams spread over the three "
        "members from the client processes) while one writer puts keys at a steady rate "
        "(20/s by default; `bench/scale.py`): events delivered of expected (acknowledged "
        "writes times watchers), delivery latency, write p50 with and without watchers (the "
        "baseline row), the leader's and all members' CPU. What the figures say about the "
        "design: [watches.md](watches.md)."
    ),
    "leases": (
        "### Leases\n\nN leases kept alive by the client processes, each on one "
        "keep-alive stream renewing every lease TTL/3 (Concord: `Client.keep_alive`; etcd: the "
        "same schedule on its LeaseKeepAlive stream; `bench/leases.py`). Over the window: the "
        "leader's CPU (also per renewal acknowledged, which a busy machine inflates less), a "
        "probe lease renewed every 100 ms on a fresh stream, spurious expiries (leases lost "
        "although their holders kept renewing), and each member's memory (the largest)."
    ),
    "locks": (
        "### Locks held\n\nN distinct locks held by the client processes through each system's "
        "client (Concord: `Client.lock()`, a lease per lock on the process's one keep-alive "
        "stream; etcd: its v3lock API under a lease per lock; `bench/locks.py`). Once every "
        "lock is held and one TTL has passed: the leader's CPU (the busiest member's), a "
        "probe put every 50 ms, and locks lost although their holders kept renewing (held, or "
        "while being taken)."
    ),
}


def _run_line(run: Run) -> str:
    meta = run.doc.get("meta", {})
    start = meta.get("loadavg_at_start") or ["?"]
    end = meta.get("loadavg") or ["?"]
    kinds = ", ".join(
        f"{k} {'/'.join(f'{n:,}' for n in levels([run], k))}" for k in KINDS if levels([run], k)
    )
    first = start[0] if isinstance(start[0], str) else f"{start[0]:.1f}"
    last = end[0] if isinstance(end[0], str) else f"{end[0]:.1f}"
    ttl = meta.get("lease_ttl_ms")
    return (
        f"- `{run.name}`: {kinds or 'no rows'}; {meta.get('seconds', '?')} s windows, "
        f"{meta.get('watcher_procs', '?')} client processes"
        + ("" if ttl is None else f", lease TTL {ttl / 1000:g} s")
        + f"; 1-minute load average {first} at the start, {last} at the end"
    )


def section(runs: Sequence[Run], plot_path: str | None) -> str:
    """The section of docs/benchmarks.md; `plot_path`: the plot, relative to docs/, if drawn."""
    earlier = (
        "Earlier measurements, dated, and the changes they led to: [scale.md](scale.md); "
        "watches: [watches.md](watches.md#measured)."
    )
    if not runs:
        return "\n".join(
            [
                HEADING,
                "",
                "No `make bench-scale` results were found in `.results/bench`. To produce them, "
                "run three times",
                "",
                f"    {COMMAND}",
                "",
                "then `make bench-report` (it takes every `scale-*.json` written within 3 hours "
                "of the newest; `python -m bench report --scale FILE...` names them instead). "
                + earlier,
                "",
            ]
        )
    parts = [
        HEADING,
        "",
        f"Separate runs, not part of `make bench`: Concord beside etcd, each on a fresh "
        f"3-member mutual-TLS cluster, in each of {len(runs)} `make bench-scale` runs:",
        "",
        *(_run_line(run) for run in runs),
        "",
        "Each cell is the median over the runs that measured it, with their min-max; the ratio "
        "is Concord's median over etcd's; \"runs\" counts the runs with figures at that count. "
        + earlier,
        "",
    ]
    for kind in KINDS:
        if not levels(runs, kind):
            continue
        parts += [METHOD[kind], "", kind_table(runs, kind), ""]
        parts += ["How the cost grows with the count (medians):", "", growth_table(runs, kind), ""]
    failed = failures(runs)
    if failed:
        parts += ["Failed levels:", "", *failed, ""]
    parts += ["### Targets (issue 20)", "", targets_table(runs), ""]
    if plot_path is not None:
        parts += [f"![cost against count]({plot_path})", ""]
    else:
        parts += ["No plot (matplotlib was not installed, or no lease or lock rows).", ""]
    return "\n".join(parts)
