"""Several `make bench` runs side by side: the Concord / peer ratio of every figure in each
run with its min, median and max, and how many runs met each target of issue 19.

A pure function of the run documents (results.json), like `bench.report`: one run on a shared
2-core machine can be lucky or unlucky, so the page shows the spread of three.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .figures import FIGURES, PEERS, SYSTEM_TITLES, find, fmt_ratio, metric_of, ratio
from .report import evaluated_targets, fmt, levels_of, systems_in


def latest(results_dir: Path, n: int) -> list[Path]:
    """The results.json of the newest `n` runs under `results_dir` in the newest run's mode
    (full, or quick: a quick run's spread says nothing of a full one's), oldest first. Run
    folders are named by their UTC start, with "-quick" for quick runs, so names sort by time;
    `latest` is a link to one of them."""
    runs = sorted(
        d
        for d in results_dir.iterdir()
        if d.is_dir() and not d.is_symlink() and (d / "results.json").is_file()
    )
    if not runs or n <= 0:
        return []
    quick = runs[-1].name.endswith("-quick")
    same = [d / "results.json" for d in runs if d.name.endswith("-quick") == quick]
    return same[-n:]


def _date(doc: dict[str, Any]) -> str:
    return str(doc.get("environment", {}).get("date_utc", ""))


def in_order(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first, by the run's own start time (a stable sort keeps the given order on ties)."""
    return sorted(docs, key=_date)


def newest(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return in_order(docs)[-1]


def _spread(values: list[float | None]) -> list[str]:
    got = [v for v in values if v is not None]
    if not got:
        return ["-", "-", "-"]
    return [fmt_ratio(min(got)), fmt_ratio(statistics.median(got)), fmt_ratio(max(got))]


def _levels(docs: Sequence[dict[str, Any]], figure: str) -> list[int]:
    return sorted({c for doc in docs for c in levels_of(doc, figure)})


def _figure_rows(docs: Sequence[dict[str, Any]]) -> list[list[str]]:
    systems = {s for doc in docs for s in systems_in(doc)}
    rows = []
    for fig in FIGURES:
        present = any(r["figure"] == fig.id for doc in docs for r in doc["results"])
        if not present:
            continue
        levels: list[int | None] = [*_levels(docs, fig.id)] if fig.kind == "load" else [None]
        metrics = ["value", "p50_ms", "p99_ms"] if fig.id == "write" else ["value"]
        for c in levels:
            for metric in metrics:
                label = fig.title if metric == "value" else f"write latency {metric[:3]}"
                for peer in (p for p in PEERS if p in systems):
                    ratios = [
                        ratio(
                            metric_of(find(doc["results"], "concord", fig.id, c), metric),
                            metric_of(find(doc["results"], peer, fig.id, c), metric),
                        )
                        for doc in docs
                    ]
                    if all(r is None for r in ratios):
                        continue
                    rows.append(
                        [label, "-" if c is None else str(c), SYSTEM_TITLES[peer],
                         *(fmt_ratio(r) for r in ratios), *_spread(ratios)]
                    )  # fmt: skip
    return rows


def _target_rows(docs: Sequence[dict[str, Any]]) -> list[list[str]]:
    per_run = [{t["target"]: t for t in evaluated_targets(doc)} for doc in docs]
    texts: list[str] = []
    for evaluated in per_run:
        texts += [t for t in evaluated if t not in texts]
    rows = []
    for text in texts:
        got = [evaluated.get(text) for evaluated in per_run]
        met = sum(1 for t in got if t is not None and t["status"] == "met")
        cells = [
            "not run" if t is None
            else f"{t['status']} ({fmt_ratio(t['ratio'])})" if t["ratio"] is not None
            else f"{t['status']} ({fmt(t['concord'], t['unit'])})"
            if t["peer"] is None and t["concord"] is not None
            else t["status"]
            for t in got
        ]  # fmt: skip
        rows.append([text, f"{met} of {len(docs)}", *cells])
    return rows


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _run_line(i: int, doc: dict[str, Any]) -> str:
    env = doc.get("environment", {})
    plan = doc.get("plan", {})
    return (
        f"{i}. {env.get('date_utc', '?')} UTC, {'quick' if plan.get('quick') else 'full'} mode, "
        f"Concord {env.get('concord_source', '?')}, load average at start / end "
        f"{env.get('loadavg_start', '?')} / {env.get('loadavg_end', '?')}"
    )


def across_runs(docs: Sequence[dict[str, Any]]) -> str:
    """The "Across N runs" section of docs/benchmarks.md; "" for fewer than two runs."""
    if len(docs) < 2:
        return ""
    docs = in_order(docs)
    runs = [f"run {i}" for i in range(1, len(docs) + 1)]
    return "\n".join(
        [
            f"## Across {len(docs)} runs",
            "",
            "The tables above are the newest run's. The same figures in each of the last "
            f"{len(docs)} `make bench` runs, as the Concord / peer ratio (above 1: Concord's "
            "number is bigger, better for rates and worse for times), with their min, median "
            "and max; then how many of the runs met each target.",
            "",
            *(_run_line(i, doc) for i, doc in enumerate(docs, 1)),
            "",
            _table(
                ["figure", "in flight", "Concord / peer", *runs, "min", "median", "max"],
                _figure_rows(docs),
            ),
            "",
            "### Targets (issue 19) across the runs",
            "",
            _table(["target", "met in", *runs], _target_rows(docs)),
            "",
        ]
    )
