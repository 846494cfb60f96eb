"""`make bench-scale` runs summed up for docs/benchmarks.md (`bench.scale_report`), on small
synthetic scale documents: nothing is started."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from bench import report, scale_report
from bench.__main__ import main
from bench.scale_report import Run
from tests.bench.test_bench_report import synthetic


def _lease(system: str, n: int, cpu: float, p99: float, *, spurious: int = 0) -> dict[str, Any]:
    return {
        "system": system,
        "leases": n,
        "lease_ttl_ms": 10_000,
        "leader_cpu_pct": cpu,
        "members_cpu_pct": 2 * cpu,
        "probe_p50_ms": p99 / 4,
        "probe_p99_ms": p99,
        "renewals_per_s": n / 3.3,
        "spurious_expiries": spurious,
        "keepalive_streams": 4,
        "member_rss_mib_max": 80.0,
        "member_anon_mib_max": 60.0,
    }


def _lock(system: str, n: int, cpu: float, p99: float, *, lost: int = 0) -> dict[str, Any]:
    return {
        "system": system,
        "locks": n,
        "leader_cpu_pct": cpu,
        "members_cpu_pct": 2 * cpu,
        "probe_p50_ms": 3.0,
        "probe_p99_ms": p99,
        "locks_lost": lost,
        "lost_acquiring": 0,
        "keepalive_streams": 4,
        "acquire_s": 8.0,
    }


def _doc(rows: list[dict[str, Any]], load: float = 2.0) -> dict[str, Any]:
    meta = {"seconds": 30.0, "loadavg": [load, 1, 1], "loadavg_at_start": [load, 1, 1]}
    return {"meta": meta, "rows": rows}


def _runs() -> list[Run]:
    """Three runs. 10,000 leases: Concord's leader CPU 10, 30, 14 against etcd's 10 each
    (<= 1.5x met in 2 of 3); 10,000 locks: the second run's Concord level failed."""
    return [
        Run("scale-20300102T030000Z.json", _doc([
            _lease("concord", 100, 1.0, 20.0), _lease("etcd", 100, 0.5, 10.0),
            _lease("concord", 10_000, 10.0, 40.0), _lease("etcd", 10_000, 10.0, 30.0),
            _lock("concord", 10_000, 20.0, 50.0), _lock("etcd", 10_000, 10.0, 30.0),
        ])),
        Run("scale-20300102T040000Z.json", _doc([
            _lease("concord", 100, 2.0, 30.0), _lease("etcd", 100, 0.5, 10.0),
            _lease("concord", 10_000, 30.0, 50.0, spurious=7), _lease("etcd", 10_000, 10.0, 30.0),
            {"system": "concord", "locks": 10_000, "error": "a locker process died"},
            _lock("etcd", 10_000, 12.0, 40.0),
        ])),
        Run("scale-20300102T050000Z.json", _doc([
            _lease("concord", 100, 4.0, 25.0), _lease("etcd", 100, 0.5, 10.0),
            _lease("concord", 10_000, 14.0, 45.0), _lease("etcd", 10_000, 10.0, 30.0),
            _lock("concord", 10_000, 30.0, 70.0, lost=3), _lock("etcd", 10_000, 14.0, 30.0),
        ])),
    ]  # fmt: skip


def _row(table: str, *parts: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if all(p in ln for p in parts))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_each_figure_is_the_median_and_spread_of_the_runs() -> None:
    table = scale_report.kind_table(_runs(), "leases")
    cpu = _row(table, "| 10,000 |", "leader CPU %")
    assert cpu == ["10,000", "3 / 3", "leader CPU %", "14 (10-30)", "10 (10-10)", "1.40x"]
    p99 = _row(table, "probe renewal p99 ms")  # the first level's, 100 leases
    assert p99[3:] == ["25 (20-30)", "10 (10-10)", "2.50x"]
    # Levels in order, each with its run counts on its first line only.
    assert table.index("| 100 |") < table.index("| 10,000 |")
    assert _row(table, "member RSS MiB (max)")[:2] == ["", ""]


def test_how_cost_grows_from_the_smallest_count_to_the_largest() -> None:
    table = scale_report.growth_table(_runs(), "leases")
    assert table.splitlines()[0] == "| figure | system | 100 | 10,000 | largest / smallest |"
    assert _row(table, "| leader CPU % | Concord |")[2:] == ["2", "14", "7.00x"]
    assert _row(table, "| probe renewal p99 ms | etcd |")[2:] == ["10", "30", "3.00x"]


def test_a_failed_row_is_named_and_not_counted_as_figures() -> None:
    runs = _runs()
    table = scale_report.kind_table(runs, "locks")
    assert _row(table, "| 10,000 |", "leader CPU %")[1:5] == [
        "2 (+1 failed) / 3", "leader CPU %", "25 (20-30)", "12 (10-14)"
    ]  # fmt: skip
    (failure,) = scale_report.failures(runs)
    assert failure == (
        "- Concord, 10,000 locks (`scale-20300102T040000Z.json`): failed: a locker process died"
    )
    only_failed = [Run("x", _doc([{"system": "concord", "locks": 100, "error": "boom"}]))]
    assert _row(scale_report.kind_table(only_failed, "locks"), "| 100 |")[3] == "failed"


def test_targets_are_met_in_k_of_n_runs() -> None:
    table = scale_report.targets_table(_runs())
    cpu = _row(table, "10,000 leases: leader CPU <= 1.5x etcd's")
    assert cpu[1:] == ["2 of 3", "met (1.00x); not met (3.00x); met (1.40x)"]
    assert _row(table, "10,000 leases: no spurious expiry")[1] == "2 of 3"
    # A failed Concord level counts against the target; a lost lock is a loss.
    assert _row(table, "10,000 locks: none lost")[1:] == [
        "1 of 3", "met (0); failed; not met (3)"
    ]  # fmt: skip
    assert _row(table, "5,000 watchers: delivery p99")[1:] == ["not measured", "-"]


def test_watchers_delivery_and_the_baseline() -> None:
    base = {"system": "concord", "watchers": 0, "write_p50_ms": 4.0, "leader_cpu_pct": 5.0}
    row = {"system": "concord", "watchers": 5000, "write_p50_ms": 6.0, "write_p50_vs_none": 1.5,
           "delivered": 99_990, "expected": 100_000, "delivery_p99_ms": 80.0}  # fmt: skip
    etcd = {"system": "etcd", "watchers": 5000, "delivered": 100_000, "expected": 100_000,
            "delivery_p99_ms": 100.0}  # fmt: skip
    runs = [Run("a", _doc([base, row, etcd]))]
    table = scale_report.targets_table(runs)
    assert _row(table, "every event delivered")[1:] == ["0 of 1", "not met (10)"]
    assert _row(table, "delivery p99 <= etcd's")[1:] == ["1 of 1", "met (0.80x)"]
    assert _row(table, "write p50 <= 2x without watchers")[1:] == ["1 of 1", "met (1.50)"]
    assert "| none (baseline) |" in scale_report.kind_table(runs, "watchers")


def test_the_default_is_the_runs_within_three_hours_of_the_newest(tmp_path: Path) -> None:
    for stamp in ("20300101T120000Z", "20300102T010000Z", "20300102T030000Z", "20300102T040000Z"):
        (tmp_path / f"scale-{stamp}.json").write_text(json.dumps(_doc([])))
    (tmp_path / "scale-notes.json").write_text("{}")  # not a run's stamp
    chosen = scale_report.default_selection(tmp_path)
    assert [p.name for p in chosen] == [
        "scale-20300102T010000Z.json",
        "scale-20300102T030000Z.json",
        "scale-20300102T040000Z.json",
    ]
    assert scale_report.default_selection(tmp_path / "none") == []


def test_the_page_says_how_to_produce_them_when_there_are_none() -> None:
    page = report.docs_page(synthetic(), "benchmarks", [])
    assert "## Sessions, locks and watches at scale (`make bench-scale`)" in page
    assert "No `make bench-scale` results" in page
    assert "[scale.md](scale.md)" in page and "[watches.md](watches.md#measured)" in page
    assert page.index("## Sessions, locks") < page.index("## Method and design choices")


def test_report_puts_the_scale_runs_into_the_page(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(synthetic()))
    scale = []
    for run in _runs():
        (tmp_path / run.name).write_text(json.dumps(run.doc))
        scale.append(str(tmp_path / run.name))
    page = tmp_path / "benchmarks.md"
    args = ["report", "--results", str(results), "--scale", *scale, "--docs", str(page)]
    assert main(args) == 0
    text = page.read_text()
    assert "No `make bench-scale` results" not in text
    assert "### Leases" in text and "### Locks held" in text and "### Watchers" not in text
    assert "| 10,000 leases: leader CPU <= 1.5x etcd's | 2 of 3 |" in text
    assert "failed: a locker process died" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert "![cost against count](benchmarks/scale.png)" in text
        assert (tmp_path / "benchmarks" / "scale.png").read_bytes().startswith(b"\x89PNG")
    else:
        assert "No plot (matplotlib was not installed" in text


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="bench extra only")
def test_no_plot_without_lease_or_lock_rows(tmp_path: Path) -> None:
    watchers = [Run("a", _doc([{"system": "concord", "watchers": 100, "delivered": 1}]))]
    assert scale_report.plot(watchers, tmp_path) is None
    assert scale_report.plot(_runs(), tmp_path) == tmp_path / "scale.png"
