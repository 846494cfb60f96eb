"""Several `make bench` runs on one page (`python -m bench report --runs N`), on small
synthetic run documents: nothing is started."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from bench import report, runs_report
from bench.__main__ import main
from bench.figures import targets
from tests.bench.test_bench_report import synthetic


def _run(date: str, concord_write64: float) -> dict[str, Any]:
    doc = copy.deepcopy(synthetic())
    doc["environment"]["date_utc"] = date
    for r in doc["results"]:
        if r["system"] == "concord" and r["figure"] == "write" and r["concurrency"] == 64:
            r["value"] = concord_write64
    return doc


def _three() -> list[dict[str, Any]]:
    # etcd writes 1,500/s at 64 in flight in each: ratios 0.80x, 2.00x, 1.20x.
    return [
        _run("2030-01-02 05:00:00", 1800.0),
        _run("2030-01-02 03:00:00", 1200.0),
        _run("2030-01-02 04:00:00", 3000.0),
    ]


def _line(text: str, *starts: str) -> str:
    return next(ln for ln in text.splitlines() if all(s in ln for s in starts))


def test_each_runs_ratio_and_their_spread_oldest_first() -> None:
    text = runs_report.across_runs(_three())
    assert text.startswith("## Across 3 runs")
    assert text.index("2030-01-02 03:00:00") < text.index("2030-01-02 05:00:00")
    row = _line(text, "| write (put", "| 64 | etcd |")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:] == ["0.80x", "2.00x", "1.20x", "0.80x", "1.20x", "2.00x"]
    pysyncobj = _line(text, "| write (put", "| 64 | PySyncObj |")
    assert "| 2.00x | 5.00x | 3.00x |" in pysyncobj  # 1200, 3000, 1800 over 600
    # A figure a peer lacks has no ratio row for it, not a row of dashes.
    assert not any("compare-and-swap" in ln and "| PySyncObj |" in ln for ln in text.splitlines())
    assert "| write latency p99 | 64 | etcd |" in text


def test_a_target_met_in_some_runs_says_how_many() -> None:
    text = runs_report.across_runs(_three())
    row = _line(text, "| write throughput at 64 in flight >= 1.0x etcd |")
    assert "| 2 of 3 | not met (0.80x) | met (2.00x) | met (1.20x) |" in row
    never = _line(text, "| write throughput at 256 in flight >= 1.0x etcd |")
    assert "| 0 of 3 | not measured | not measured | not measured |" in never
    cpu = _line(text, "| CPU per sequential write")  # no peer: Concord's own figure
    assert "| 3 of 3 | met (1.50 ms) | met (1.50 ms) | met (1.50 ms) |" in cpu
    assert "### Targets (issue 19) across the runs" in text


def test_every_target_is_a_row_across_the_runs() -> None:
    text = runs_report.across_runs(_three())
    rows = [ln for ln in text.split("### Targets")[1].splitlines() if ln.startswith("| ")]
    assert len(rows) - 1 == len(targets())  # the header row
    for t in targets():
        assert any(row.startswith(f"| {t.text} |") for row in rows), t.text


def test_one_run_is_the_page_as_before() -> None:
    doc = synthetic()
    assert runs_report.across_runs([doc]) == ""
    assert report.docs_page(doc, "b", [], across="") == report.docs_page(doc, "b", [])
    assert "## Across" not in report.docs_page(doc, "b", [])


def test_report_takes_the_latest_runs_and_renders_the_newest(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for doc, stamp in zip(_three(), ("20300102T050000Z", "20300102T030000Z", "20300102T040000Z"),
                          strict=True):  # fmt: skip
        (results / stamp).mkdir(parents=True)
        (results / stamp / "results.json").write_text(json.dumps(doc))
    (results / "19990101T000000Z").mkdir()  # a run that wrote nothing is not a run
    (results / "latest").symlink_to("20300102T050000Z")
    assert [p.parent.name for p in runs_report.latest(results, 2)] == [
        "20300102T040000Z",
        "20300102T050000Z",
    ]
    (results / "20300102T060000Z-quick").mkdir()
    (results / "20300102T060000Z-quick" / "results.json").write_text("{}")
    assert [p.parent.name for p in runs_report.latest(results, 3)] == [
        "20300102T060000Z-quick"  # the newest is a quick run: no full run beside it
    ]
    (results / "20300102T070000Z").mkdir()
    (results / "20300102T070000Z" / "results.json").write_text("{}")
    assert [p.parent.name for p in runs_report.latest(results, 2)] == [
        "20300102T050000Z",
        "20300102T070000Z",
    ]
    page = tmp_path / "benchmarks.md"
    paths = [str(results / s / "results.json") for s in
             ("20300102T030000Z", "20300102T040000Z", "20300102T050000Z")]  # fmt: skip
    assert main(["report", "--results", *paths, "--docs", str(page)]) == 0
    text = page.read_text()
    assert "- date (UTC): 2030-01-02 05:00:00" in text  # the newest run's page
    assert "## Across 3 runs" in text
    assert text.index("## Across 3 runs") < text.index("## Plots")
    assert main(["report", "--results", paths[0], "--docs", str(page)]) == 0
    assert "## Across" not in page.read_text()
