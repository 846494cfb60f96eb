"""Turn a benchmark JSON document into the markdown table (with Concord / peer ratios for every
figure and the targets, met or not), the PNG plots, and docs/benchmarks.md.

Everything here is a pure function of the JSON (`bench.run` measured, this module only
formats), so `make bench-report` can regenerate the page from the latest run at any time, and
the test suite checks it on a small synthetic document without running anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import scale_report
from .figures import (
    BY_ID,
    FIGURES,
    PEERS,
    SYSTEM_TITLES,
    SYSTEMS,
    TARGET_KEYS,
    Figure,
    evaluate,
    find,
    fmt_ratio,
    metric_of,
    ratio,
    targets,
)
from .load import Histogram

PLOT_FIGURES = ("write", "cas", "lock_contended", "seq_next", "read")
COLORS = {"concord": "#1f77b4", "etcd": "#2ca02c", "pysyncobj": "#d62728"}


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def systems_in(doc: dict[str, Any]) -> list[str]:
    present = {r["system"] for r in doc["results"]} | set(doc.get("systems", {}))
    return [s for s in SYSTEMS if s in present]


def levels_of(doc: dict[str, Any], figure: str) -> list[int]:
    return sorted({int(r["concurrency"]) for r in doc["results"]
                   if r["figure"] == figure and r.get("concurrency") is not None})  # fmt: skip


def evaluated_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of issue 19, each level whether this run measured it or not."""
    return [evaluate(t, doc["results"]) for t in targets()]


# --- formatting ----------------------------------------------------------------------------------


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ops/s", "cycles/s"):
        return f"{_num(value)}/s"
    return f"{_num(value)} {unit}"


class Notes:
    """Numbered footnotes, each text once."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def render(self) -> str:
        return "\n".join(f"[{i}] {t}  " for i, t in enumerate(self.texts, 1))


def _cell(result: dict[str, Any] | None, *, metric: str, unit: str, notes: Notes, name: str) -> str:
    if result is None:
        return "not run"
    if not result.get("available", True):
        reason = result.get("reason") or "not available"
        if result.get("error"):
            return f"failed {notes.ref(f'{SYSTEM_TITLES[name]}: {reason}')}"
        return f"n/a {notes.ref(f'{SYSTEM_TITLES[name]}: {reason}')}"
    return fmt(metric_of(result, metric), unit)


def _row(
    doc: dict[str, Any], notes: Notes, label: str, where: tuple[str, int | None], metric: str
) -> str:
    """One table row: `where` is (figure, concurrency); `metric` "value" or "pNN_ms"."""
    figure, concurrency = where
    unit = BY_ID[figure].unit if metric == "value" else "ms"
    systems = systems_in(doc)
    got = {s: find(doc["results"], s, figure, concurrency) for s in systems}
    cells = [_cell(got[s], metric=metric, unit=unit, notes=notes, name=s) for s in systems]
    ours = metric_of(got.get("concord"), metric)
    ratios = [fmt_ratio(ratio(ours, metric_of(got.get(p), metric))) for p in PEERS if p in systems]
    flight = "-" if concurrency is None else str(concurrency)
    return "| " + " | ".join([label, flight, *cells, *ratios]) + " |"


def _label(fig: Figure, suffix: str = "", doc: dict[str, Any] | None = None) -> str:
    arrow = "higher is better" if fig.higher_is_better else "lower is better"
    title = fig.title
    if doc is not None and fig.id in ("restart", "memory"):
        keys = _keys(doc)
        if keys:
            title = title.replace("N keys", f"{keys:,} keys")
    return f"{title}{suffix} ({fig.unit}, {arrow})"


def _keys(doc: dict[str, Any]) -> int | None:
    for r in doc["results"]:
        if r["figure"] in ("restart", "memory") and r.get("keys"):
            return int(r["keys"])
    return None


def results_table(doc: dict[str, Any], notes: Notes) -> str:
    systems = systems_in(doc)
    head = ["figure", "in flight", *(SYSTEM_TITLES[s] for s in systems)]
    head += [f"Concord / {SYSTEM_TITLES[p]}" for p in PEERS if p in systems]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fig in FIGURES:
        if fig.kind == "load":
            for c in levels_of(doc, fig.id):
                lines.append(_row(doc, notes, _label(fig), (fig.id, c), "value"))
                if fig.id == "write":
                    for q in ("p50", "p99"):
                        label = f"write latency {q} (ms, lower is better)"
                        lines.append(_row(doc, notes, label, ("write", c), f"{q}_ms"))
        elif any(r["figure"] == fig.id for r in doc["results"]):
            label = _label(fig, doc=doc)
            keys = _keys(doc)
            if fig.id in ("restart", "memory") and keys is not None and keys < TARGET_KEYS:
                label += " " + notes.ref(
                    f"{keys:,} keys in this run (`--keys`), not the issue's {TARGET_KEYS:,} "
                    "(the default)"
                )
            lines.append(_row(doc, notes, label, (fig.id, None), "value"))
    return "\n".join(lines)


def latency_table(doc: dict[str, Any]) -> str:
    systems = systems_in(doc)
    head = ["figure", "in flight", *(f"{SYSTEM_TITLES[s]} p50 / p99 ms" for s in systems)]
    head += [f"{SYSTEM_TITLES[s]} client / members CPU %" for s in systems]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fig in FIGURES:
        if fig.kind != "load":
            continue
        for c in levels_of(doc, fig.id):
            lat, cpu = [], []
            for s in systems:
                r = find(doc["results"], s, fig.id, c)
                if r is None or not r.get("available", True):
                    lat.append("-")
                    cpu.append("-")
                    continue
                lat.append(f"{fmt(r.get('p50_ms'), 'ms')} / {fmt(r.get('p99_ms'), 'ms')}")
                members = sum((r.get("member_cpu_pct") or {}).values())
                cpu.append(f"{r.get('client_cpu_pct', 0):.0f} / {members:.0f}")
            lines.append("| " + " | ".join([fig.id, str(c), *lat, *cpu]) + " |")
    return "\n".join(lines)


REQUESTS_PER_OP = {"lock_contended": "lock_requests_per_cycle",
                   "lock_uncontended": "lock_requests_per_cycle",
                   "seq_next": "seq_requests_per_value"}  # fmt: skip
"""The figures whose operation may take a system more than one request, and the result key
counting them."""


def requests_table(doc: dict[str, Any]) -> str:
    """Requests per completed operation of the figures in REQUESTS_PER_OP; "" if no run
    recorded them."""
    systems = systems_in(doc)
    head = ["figure", "in flight", *(SYSTEM_TITLES[s] for s in systems)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for figure, key in REQUESTS_PER_OP.items():
        for c in levels_of(doc, figure):
            got = [(find(doc["results"], s, figure, c) or {}).get(key) for s in systems]
            if any(g is not None for g in got):
                cells = ["-" if g is None else f"{g:.2f}" for g in got]
                lines.append("| " + " | ".join([figure, str(c), *cells]) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def targets_table(doc: dict[str, Any]) -> str:
    lines = ["| target | Concord | peer | ratio | status |", "|---|---|---|---|---|"]
    for t in evaluated_targets(doc):
        unit = t["unit"]
        mark = {"met": "**met**", "not met": "**not met**"}.get(t["status"], t["status"])
        peer = "(none: an absolute target)" if t["peer"] is None else fmt(t["peer_value"], unit)
        lines.append(
            f"| {t['target']} | {fmt(t['concord'], unit)} | {peer} "
            f"| {fmt_ratio(t['ratio'])} | {mark} |"
        )
    return "\n".join(lines)


def reference_line(doc: dict[str, Any]) -> str:
    """The floor under the sequential-write target, measured in the same run."""
    ref = doc.get("reference")
    if not ref:
        return "No reference relay in this run."
    concord = find(doc["results"], "concord", "write", 1)
    etcd = find(doc["results"], "etcd", "write", 1)
    vs = []
    for name, r in (("Concord", concord), ("etcd", etcd)):
        if r is not None and r.get("p50_ms"):
            vs.append(f"{name} {fmt(r['p50_ms'], 'ms')} ({r['p50_ms'] / ref['p50_ms']:.2f}x)")
    return (
        f"Reference for the sequential write: a bare grpc.aio relay shaped like a Raft write "
        f"(mutual TLS, a unary put, the leader's fsync and two followers' fsync and "
        f"acknowledgement over client streams, nothing else; `bench/floor.py`), in the same "
        f"run: p50 {fmt(ref['p50_ms'], 'ms')}, p99 {fmt(ref['p99_ms'], 'ms')}"
        + (f"; against it, {' and '.join(vs)}." if vs else ".")
        + _twin(ref.get("frames"))
    )


def _twin(twin: dict[str, Any] | None) -> str:
    """The relay's twin over the framed peer transport, the design Concord runs."""
    if not twin:
        return ""
    return (
        f" Its twin with the peer hops over Concord's framed transport (`bench/floor_frames.py`):"
        f" p50 {fmt(twin['p50_ms'], 'ms')}, p99 {fmt(twin['p99_ms'], 'ms')}."
    )


def failover_details(doc: dict[str, Any]) -> str:
    lines = []
    for s in systems_in(doc):
        r = find(doc["results"], s, "failover", None)
        if r is None or not r.get("available", True):
            continue
        trials = ", ".join(f"{t['ms']:.0f}" for t in r.get("trials", []))
        lines.append(
            f"- {SYSTEM_TITLES[s]}: median {r['value']:.0f} ms, min {r['min']:.0f}, "
            f"max {r['max']:.0f} (trials, ms: {trials})"
        )
    return "\n".join(lines)


def keys_details(doc: dict[str, Any]) -> str:
    lines = []
    for s in systems_in(doc):
        restart = find(doc["results"], s, "restart", None)
        memory = find(doc["results"], s, "memory", None)
        if restart is None or memory is None or not restart.get("available", True):
            continue
        per = ", ".join(
            f"{v['VmRSS'] / 1024:.0f}" for v in memory.get("per_member_kib", {}).values()
        )
        empty = ", ".join(
            f"{v['VmRSS'] / 1024:.0f}" for v in memory.get("empty_cluster_kib", {}).values()
        )
        fill = restart.get("filler") or {}
        stall = ""
        if fill.get("writes") or fill.get("failed"):
            stall = (
                f"; filler writes {fill.get('writes', 0):,} ok, {fill.get('failed', 0):,} "
                f"failed, longest {fill.get('longest_write_s', 0):.2f} s"
            )
        lines.append(
            f"- {SYSTEM_TITLES[s]}: loaded {restart['keys']:,} keys in batches of "
            f"{restart['batch']} in {restart['load_s']:.1f} s ({restart['load_keys_per_s']:,.0f} "
            f"keys/s, {restart.get('load_retries', 0)} batches retried); at restart: "
            f"{restart['state_at_restart']}{stall}; RSS per member {per} MiB "
            f"(empty cluster: {empty} MiB)"
        )
    return "\n".join(lines)


def profile_section(doc: dict[str, Any]) -> str:
    prof = doc.get("profile")
    if not prof:
        return "No profile in this run."
    if not prof.get("available"):
        return f"No profile in this run: {prof.get('reason', 'unknown')}."
    areas = prof.get("self_by_area", [])
    funcs = prof.get("top_self", [])
    named = ", ".join(f"{a['area']} {100 * a['share']:.0f} %" for a in areas[:4])
    top = ", ".join(f"`{f['function']}` ({100 * f['share']:.0f} %)" for f in funcs[:5])
    busy = prof.get("gil_busy")
    lines = [
        f"py-spy (`{prof.get('tool', 'py-spy')}`) sampled the Concord leader at "
        f"{prof['rate_hz']} Hz during an extra write run at {prof.get('concurrency', 64)} in "
        f"flight ({prof.get('write_throughput_per_s_while_profiled', 0):,.0f} writes/s while "
        f"sampled, a little below the figure: sampling pauses the process). "
        + (f"The GIL was held in {100 * busy:.0f} % of the samples taken. " if busy else "")
        + f"Raw stacks: `{prof['raw']}` beside the results.",
        "",
        f"**Top costs** (share of the GIL-holding samples): {named}; by function, {top}.",
        "",
        "Self time by area:",
        "",
        "| area | share of samples |",
        "|---|---|",
        *(f"| {a['area']} | {100 * a['share']:.1f} % |" for a in prof["self_by_area"][:10]),
        "",
        "Top functions by self time:",
        "",
        "| function | file | self |",
        "|---|---|---|",
        *(
            f"| `{r['function']}` | `{r['file']}` | {100 * r['share']:.1f} % |"
            for r in prof["top_self"][:12]
        ),
        "",
        "Top functions by inclusive time (on the stack):",
        "",
        "| function | file | inclusive |",
        "|---|---|---|",
        *(
            f"| `{r['function']}` | `{r['file']}` | {100 * r['share']:.1f} % |"
            for r in prof["top_inclusive"][:12]
        ),
    ]
    return "\n".join(lines)


def ratio_lines(doc: dict[str, Any]) -> list[str]:
    """One line per figure row: Concord / etcd and Concord / PySyncObj (the console output)."""
    out = []
    systems = systems_in(doc)
    for fig in FIGURES:
        levels: Iterable[int | None] = levels_of(doc, fig.id) if fig.kind == "load" else [None]
        metrics = ["value", "p50_ms", "p99_ms"] if fig.id == "write" else ["value"]
        for c in levels:
            for metric in metrics:
                ours = metric_of(find(doc["results"], "concord", fig.id, c), metric)
                parts = []
                for p in PEERS:
                    if p not in systems:
                        continue
                    theirs = find(doc["results"], p, fig.id, c)
                    if theirs is not None and not theirs.get("available", True):
                        parts.append(f"Concord/{SYSTEM_TITLES[p]} n/a")
                        continue
                    r = ratio(ours, metric_of(theirs, metric))
                    parts.append(f"Concord/{SYSTEM_TITLES[p]} {fmt_ratio(r)}")
                where = "" if c is None else f" x{c}"
                what = "" if metric == "value" else f" {metric}"
                out.append(f"{fig.id}{where}{what}: " + ", ".join(parts))
    return out


def markdown(doc: dict[str, Any]) -> str:
    """The results as markdown: the table with ratios, latencies and CPU, targets, details."""
    notes = Notes()
    table = results_table(doc, notes)
    requests = requests_table(doc)
    retries = (
        [
            "Requests per completed operation, where one may take more than one: a lock "
            "cycle's acquire requests (PySyncObj's try-lock is asked again when refused), a "
            "sequence value's Txn attempts (etcd's compare-and-swap loop: a lost race costs a "
            "request).",
            "",
            requests,
            "",
        ]
        if requests
        else []
    )
    parts = [
        table,
        "",
        notes.render(),
        "",
        "### Targets (issue 19)",
        "",
        targets_table(doc),
        "",
        reference_line(doc),
        "",
        "Where a sequential write's time goes, step by step across the three members: "
        "[latency.md](latency.md).",
        "",
        "### Latency and CPU per cell",
        "",
        "CPU is the share of one core used during the measured window: the load generator "
        "(one Python process) and the three members together. A client near 100 % means the "
        "figure is bounded by the Python load generator, not by the system.",
        "",
        latency_table(doc),
        "",
        *retries,
        "### Failover trials",
        "",
        failover_details(doc) or "No failover trials in this run.",
        "",
        "### Key load, memory and restart",
        "",
        keys_details(doc) or "No key-count figures in this run.",
    ]
    return "\n".join(parts).rstrip() + "\n"


# --- plots ---------------------------------------------------------------------------------------


def plots(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """throughput.png (throughput vs concurrency per figure) and latency_cdf.png (write
    latency CDF per concurrency); [] without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 (an optional, bench-only dependency)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    systems = systems_in(doc)
    written = []

    figs = [f for f in PLOT_FIGURES if levels_of(doc, f)]
    if figs:
        cols = min(3, len(figs))
        rows = (len(figs) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
        for ax, fid in zip(axes.flat, figs, strict=False):
            for s in systems:
                pts = [
                    (c, metric_of(find(doc["results"], s, fid, c), "value"))
                    for c in levels_of(doc, fid)
                ]
                pts = [(c, v) for c, v in pts if v]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=SYSTEM_TITLES[s],
                            color=COLORS[s])  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(BY_ID[fid].title, fontsize=9)
            ax.set_xlabel("requests in flight")
            ax.set_ylabel(BY_ID[fid].unit)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(figs) :]:
            ax.set_visible(False)
        fig.suptitle(f"Throughput vs concurrency ({_when(doc)})", fontsize=10)
        fig.tight_layout()
        path = out_dir / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    levels = levels_of(doc, "write")
    if levels:
        fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 3.6), squeeze=False)
        for ax, c in zip(axes.flat, levels, strict=True):
            for s in systems:
                r = find(doc["results"], s, "write", c)
                if r is None or not r.get("histogram"):
                    continue
                cdf = Histogram.from_json(r["histogram"]).cdf()
                if cdf:
                    xs, ys = zip(*cdf, strict=True)
                    ax.step(xs, ys, where="post", label=SYSTEM_TITLES[s], color=COLORS[s])
            ax.set_xscale("log")
            ax.set_title(f"write latency CDF, {c} in flight", fontsize=9)
            ax.set_xlabel("latency (ms)")
            ax.set_ylabel("fraction of writes")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "latency_cdf.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _when(doc: dict[str, Any]) -> str:
    env = doc.get("environment", {})
    return f"{env.get('date_utc', '?')[:10]}, {env.get('cpus', '?')} CPUs"


# --- docs/benchmarks.md --------------------------------------------------------------------------


def environment_lines(doc: dict[str, Any]) -> str:
    env = doc.get("environment", {})
    plan = doc.get("plan", {})
    keys = [
        ("date (UTC)", env.get("date_utc")),
        ("machine", f"{env.get('cpu_model')}, {env.get('cpus')} CPUs, "
                    f"{env.get('memory_gib')} GiB RAM"),
        ("OS", f"{env.get('os')} (kernel {env.get('kernel')})"),
        ("data directories", f"{env.get('data_filesystem')} filesystem "
                             f"({env.get('data_dir_note', '')})"),
        ("Python", f"{env.get('python')} (grpcio {env.get('grpcio')})"),
        ("Concord source", env.get("concord_source")),
        ("load average at start / end", f"{env.get('loadavg_start')} / {env.get('loadavg_end')}"),
        ("mode", f"{'quick' if plan.get('quick') else 'full'}: levels {plan.get('levels')}, "
                 f"{'one shared client' if plan.get('shared', True) else 'a client per task'}, "
                 f"{plan.get('warmup_s')} s warm-up + {plan.get('duration_s')} s per cell, "
                 f"{plan.get('failover_trials')} failover trials, {plan.get('keys', 0):,} keys"),
        ("wall time", f"{doc.get('elapsed_s', 0):.0f} s"),
    ]  # fmt: skip
    return "\n".join(f"- {k}: {v}" for k, v in keys)


def systems_lines(doc: dict[str, Any]) -> str:
    out = []
    for name, d in doc.get("systems", {}).items():
        # How clients were shared is the run's (see "mode" above), not the system's.
        settings = "; ".join(
            f"{k.replace('_', ' ')}: {v}" for k, v in d.get("settings", {}).items() if k != "client"
        )
        out.append(
            f"- **{SYSTEM_TITLES.get(name, name)}** {d.get('version')}, {d.get('obtained')}. "
            f"{settings}."
        )
    return "\n".join(out)


def docs_page(
    doc: dict[str, Any],
    assets: str,
    plot_names: Iterable[str],
    *,
    across: str = "",
    scale: str | None = None,
) -> str:
    """The whole of docs/benchmarks.md (`assets`: the plots' folder, relative to docs/;
    `across`: the section comparing several runs, `bench.runs_report`, if any; `scale`: the
    `make bench-scale` section, `bench.scale_report`, by default the one saying how to run it)."""
    across = f"{across.rstrip()}\n\n" if across else ""
    scale = scale if scale is not None else scale_report.section([], None)
    plots_md = "\n\n".join(f"![{n}]({assets}/{n})" for n in plot_names)
    return f"""# Benchmarks: Concord, etcd and PySyncObj side by side

Generated by `make bench-report` from the latest `make bench` run; do not edit by hand (the
text lives in `bench/report.py`, the method in `bench/`). Absolute numbers on a shared
machine drift from run to run; the ratios (Concord / peer) are the figures to compare.

## Environment

{environment_lines(doc)}

## Systems

{systems_lines(doc)}

## Results

Each load cell: N asyncio tasks in one Python process, each keeping one request in flight
through the cell's client (see "mode" above), aimed at the leader; a warm-up, then a fixed
window; throughput is completions in the window. Ratios are Concord / peer (above 1 means
Concord's number is bigger, which is better for rates and worse for times and memory).

{markdown(doc)}
{across}## Plots

{plots_md or "No plots (matplotlib was not installed)."}

## Profile of Concord's hot path (write benchmark)

{profile_section(doc)}

{scale}
## Method and design choices

- **Clusters.** 3 members on loopback, data directories on disk (never tmpfs), each system
  started fresh by the benchmark and every process killed at the end (also on Ctrl-C or a
  failure: a parent-death signal plus a supervisor, see `bench/procs.py`). Concord and
  etcd use mutual TLS on both the client and the peer ports; PySyncObj has no TLS.
- **Durability.** Concord fsyncs its WAL before acknowledging (always); etcd fsyncs its
  WAL (its default); PySyncObj cannot fsync (its journal is an mmap that is never synced),
  so its numbers are for a weaker guarantee.
- **Load generator** (`bench/load.py`). The same design for every system: N asyncio tasks
  in one Python process, each keeping one request in flight, sharing one client per cell
  as an application shares one client (a Concord `Client`, which multiplexes its calls; one
  etcd gRPC channel; one channel to a PySyncObj node's gRPC front);
  `BENCH_ARGS=--client-per-task` gives every task its own instead. Each cell: setup, a
  warm-up, then a fixed window; latencies go into a log-bucketed histogram (1 % buckets)
  from which p50 and p99 are read. The CPU the load generator and the members used during
  the window is recorded too: with 2 cores, the Python client shares the machine with the
  members.
- **Concord** is used only through its public client (`coordinator.client.Client`:
  put, cas, lease + acquire/release, sequence next, get; bulk loads are `Client.call` with
  a Txn of puts), so client and server speedups show up without changing the benchmark.
- **etcd** is driven over gRPC through the benchmark's own minimal, wire-compatible
  declaration of etcd's API (`bench/protos/etcd_*.proto`: etcd's package, service and
  method names and field numbers). Locks use etcd's server-side v3lock API. etcd has no
  sequence: the sequence row is the client-side loop an etcd user writes, one Txn per
  attempt that puts the last value seen + 1 if the key still holds it and otherwise reads
  the key, so a task that lost a race tries again at once with the value it learned
  (`bench/systems/etcd.py`); requests per value are shown under the latency table.
- **PySyncObj** runs three processes (`bench/systems/pysyncobj_node.py`), each a SyncObj
  with ReplDict, ReplCounter and the replicated state of ReplLockManager, behind a small
  grpc.aio front in the same process. It has no compare-and-swap, no linearizable read, and
  only a try-lock: a refused task asks again at once, every attempt being a log entry. Its
  default `appendEntriesUseBatch=True` holds each command until the next tick, which is
  why one request in flight takes about 100 ms; `BENCH_ARGS=--pysyncobj-no-batch` runs it
  with the setting PySyncObj recommends for single-request latency instead.
- **Figures a system lacks** are shown as n/a with the reason; nothing is emulated except
  etcd's sequence, built the one way etcd offers (above).
- **Failover.** Kill -9 the leader; five probe sessions on the survivors (connections
  opened beforehand) each send a write every 250 ms, staggered 50 ms apart; the figure is
  the time from the kill to the first acknowledged write (so it is exact to about 50 ms).
  Each system keeps its default election settings. Between trials the killed member is
  restarted and the cluster left to heal completely (every member ready, a leader agreed
  on, and for PySyncObj every node reconnected to the others).
- **Restart with N keys.** N is 1,000,000 by default (`BENCH_ARGS='--keys N'` for
  another count; `BENCH_ARGS='--keys-only'` runs only this figure and memory). A fresh
  cluster is loaded with N keys in batches of 128 writes per request (etcd's and Concord's
  transaction limit); small writes follow until the member
  to restart holds every key in its snapshot (Concord: a snapshot file at or past the last
  load entry; PySyncObj: a dump written after the load; etcd: its bbolt file); the member
  (a follower) is killed with SIGKILL and restarted, timed from spawn until its own
  readiness signal (Concord and etcd: `/readyz`; PySyncObj: `isReady()` with a leader known).
- **Memory.** VmRSS of each member process after the load (etcd's includes the pages of its
  memory-mapped bbolt file; PySyncObj's includes its gRPC front).
- **Noise.** The machine has few cores shared by the load generator, the members and, on a
  shared host, other people's work; the load average above says how busy it was.
"""


def write_outputs(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, table.md and the plots into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / "table.md").write_text(markdown(doc))
    return [out_dir / "results.json", out_dir / "table.md", *plots(doc, out_dir)]


def write_docs(
    doc: dict[str, Any],
    docs_md: Path,
    *,
    across: str = "",
    scale_runs: Sequence[scale_report.Run] = (),
) -> list[Path]:
    """docs/benchmarks.md and its plots (docs/benchmarks/*.png), with the `make bench-scale`
    runs `scale_runs` summed up in it."""
    assets_dir = docs_md.with_suffix("")
    written = plots(doc, assets_dir)
    drawn = scale_report.plot(scale_runs, assets_dir) if scale_runs else None
    scale = scale_report.section(
        scale_runs, None if drawn is None else f"{assets_dir.name}/{drawn.name}"
    )
    page = docs_page(doc, assets_dir.name, [p.name for p in written], across=across, scale=scale)
    docs_md.write_text(page)
    return [docs_md, *written, *([drawn] if drawn else [])]
