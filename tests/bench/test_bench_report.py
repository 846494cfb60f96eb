"""The benchmark's report, histogram, profile summary and etcd wire declarations, on small
synthetic inputs: nothing is started and nothing is timed (`make bench` itself is not part of
the suite)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from bench import floor, floor_frames, profile, report
from bench.figures import evaluate, targets
from bench.load import Histogram

ENV = {"date_utc": "2030-01-02 03:04:05", "cpus": 2, "cpu_model": "test CPU", "host": "h"}


def _cell(
    system: str, figure: str, c: int, value: float, *, p50: float, p99: float
) -> dict[str, Any]:
    h = Histogram()
    for _ in range(99):
        h.record(p50 / 1000)
    h.record(p99 / 1000)
    return {
        "system": system,
        "figure": figure,
        "concurrency": c,
        "available": True,
        "unit": "ops/s",
        "value": value,
        "throughput_per_s": value,
        "p50_ms": p50,
        "p99_ms": p99,
        "client_cpu_pct": 50.0,
        "member_cpu_pct": {f"{system}-1": 30.0},
        "histogram": h.to_json(),
    }


def _na(system: str, figure: str, c: int | None, reason: str) -> dict[str, Any]:
    return {
        "system": system,
        "figure": figure,
        "concurrency": c,
        "available": False,
        "reason": reason,
        "unit": "ops/s",
        "value": None,
    }


def synthetic() -> dict[str, Any]:
    results = [
        _cell("concord", "write", 1, 200, p50=4.0, p99=9.0),
        _cell("etcd", "write", 1, 400, p50=2.0, p99=6.0),
        _cell("pysyncobj", "write", 1, 10, p50=100.0, p99=110.0),
        _cell("concord", "write", 64, 3000, p50=20.0, p99=40.0),
        _cell("etcd", "write", 64, 1500, p50=40.0, p99=90.0),
        _cell("pysyncobj", "write", 64, 600, p50=105.0, p99=140.0),
        _cell("concord", "lock_contended", 64, 100, p50=600, p99=800),
        _cell("etcd", "lock_contended", 64, 200, p50=300, p99=340),
        _na("pysyncobj", "cas", 64, "no compare-and-swap"),
        _cell("concord", "cas", 64, 1000, p50=50, p99=90),
        _cell("etcd", "cas", 64, 2000, p50=25, p99=50),
        {**_cell("etcd", "seq_next", 64, 900, p50=70, p99=300), "seq_requests_per_value": 3.5},
        {**_cell("concord", "seq_next", 64, 1800, p50=30, p99=130), "seq_requests_per_value": 1},
        _cell("pysyncobj", "seq_next", 64, 550, p50=110, p99=200),
        _na("pysyncobj", "read", 64, "no linearizable read"),
    ]
    for system, ms in (("concord", 1100.0), ("etcd", 1400.0), ("pysyncobj", 1300.0)):
        results.append(
            {
                "system": system,
                "figure": "failover",
                "concurrency": None,
                "available": True,
                "unit": "ms",
                "value": ms,
                "min": ms - 100,
                "max": ms + 100,
                "trials": [{"trial": 1, "ms": ms}],
            }
        )
        results.append(
            {
                "system": system,
                "figure": "restart",
                "concurrency": None,
                "available": True,
                "unit": "s",
                "value": 2.0,
                "keys": 1000,
                "batch": 128,
                "load_s": 1.0,
                "load_keys_per_s": 1000.0,
                "state_at_restart": "in a snapshot",
            }
        )
        results.append(
            {
                "system": system,
                "figure": "memory",
                "concurrency": None,
                "available": True,
                "unit": "MiB",
                "value": 50.0,
                "keys": 1000,
                "per_member_kib": {f"{system}-1": {"VmRSS": 51200}},
                "empty_cluster_kib": {f"{system}-1": {"VmRSS": 30720}},
            }
        )
    for r in results:
        r["environment"] = ENV
    return {
        "schema": 1,
        "environment": {**ENV, "os": "test OS", "kernel": "6", "python": "3.11"},
        "plan": {
            "quick": True,
            "levels": [1, 64],
            "warmup_s": 0.5,
            "duration_s": 1.5,
            "failover_trials": 1,
            "keys": 1000,
        },
        "systems": {
            s: {"version": "v", "obtained": "here", "settings": {}}
            for s in ("concord", "etcd", "pysyncobj")
        },
        "results": results,
        "profile": {
            "available": True,
            "rate_hz": 100,
            "samples": 3,
            "raw": "p.txt",
            "concurrency": 64,
            "gil_busy": 0.5,
            "seconds": 3,
            "self_by_area": [{"area": "concord state machine", "share": 0.5}],
            "top_self": [{"function": "apply", "file": "coordinator/fsm/kv.py", "share": 0.5}],
            "top_inclusive": [],
        },
    }


def test_table_has_every_system_and_both_ratios() -> None:
    text = report.markdown(synthetic())
    header = text.splitlines()[0]
    for column in ("Concord", "etcd", "PySyncObj", "Concord / etcd", "Concord / PySyncObj"):
        assert column in header
    write64 = next(line for line in text.splitlines() if "write (put" in line and "| 64 |" in line)
    assert "3,000/s" in write64
    assert "2.00x" in write64  # Concord / etcd
    assert "5.00x" in write64  # Concord / PySyncObj
    failover = next(line for line in text.splitlines() if line.startswith("| leader failover"))
    assert "0.79x" in failover  # 1100 / 1400


def test_missing_primitives_are_named_not_invented() -> None:
    text = report.markdown(synthetic())
    cas = next(line for line in text.splitlines() if line.startswith("| compare-and-swap"))
    assert "n/a [" in cas
    assert "PySyncObj: no compare-and-swap" in text
    assert "PySyncObj: no linearizable read" in text


def test_etcds_sequence_is_its_cas_loop_with_its_requests_per_value() -> None:
    text = report.markdown(synthetic())
    seq = next(line for line in text.splitlines() if line.startswith("| sequence next"))
    assert "| 900/s |" in seq
    assert "2.00x" in seq  # Concord / etcd
    assert "| seq_next | 64 | 1.00 | 3.50 | - |" in text  # Concord, etcd, PySyncObj


def test_targets_are_met_or_not_from_the_numbers() -> None:
    doc = synthetic()
    evaluated = report.evaluated_targets(doc)
    by_text = {t["target"]: t for t in evaluated}
    assert len(by_text) == len(evaluated) == len(targets())
    assert by_text["write throughput at 64 in flight >= 1.0x etcd"]["status"] == "met"
    assert by_text["write throughput at 256 in flight >= 1.0x etcd"]["status"] == "not measured"
    assert by_text["write throughput at 16 in flight >= 1.0x etcd"]["status"] == "not measured"
    p50 = by_text["sequential write (1 in flight) p50 <= 1.0x etcd's"]
    assert (p50["status"], p50["ratio"]) == ("not met", 2.0)  # 4 ms against 2 ms
    p99 = by_text["sequential write (1 in flight) p99 <= 1.5x etcd's"]
    assert (p99["status"], p99["ratio"]) == ("met", 1.5)  # 9 ms against 6 ms: at most counts
    seq = by_text["sequence next/s at 64 in flight >= 1.0x etcd's CAS loop"]
    assert (seq["status"], seq["ratio"]) == ("met", 2.0)
    assert by_text["sequence next/s at 64 in flight >= 1.0x PySyncObj"]["status"] == "met"
    assert by_text["compare-and-swap/s at 64 in flight >= 1.0x etcd"]["status"] == "not met"
    lock = by_text["contended lock acquire+release/s at 64 in flight >= 1.0x etcd"]
    assert lock["status"] == "not met"
    uncontended = by_text["100 uncontended locks, acquire+release/s >= 1.0x etcd"]
    assert uncontended["status"] == "not measured"
    failover = by_text["leader failover median <= 0.5x etcd's (default settings)"]
    assert failover["status"] == "not met"
    assert failover["ratio"] == pytest.approx(1100 / 1400, abs=1e-3)
    text = report.markdown(doc)
    assert "**not met**" in text
    assert "### Targets (issue 19)" in text
    for t in evaluated:
        assert f"| {t['target']} |" in text


def test_the_key_count_targets_need_the_issues_million_keys() -> None:
    doc = synthetic()
    restart = "restart of a member holding 1,000,000 keys <= 1.0x etcd's"
    memory = "memory per member holding 1,000,000 keys <= 1.0x etcd's"
    by_text = {t["target"]: t for t in report.evaluated_targets(doc)}
    assert by_text[restart]["status"] == by_text[memory]["status"] == "not measured"  # 1,000
    for r in doc["results"]:
        if r["figure"] in ("restart", "memory"):
            r["keys"] = 1_000_000
        if r["system"] == "concord" and r["figure"] == "memory":
            r["value"] = 60.0
    by_text = {t["target"]: t for t in report.evaluated_targets(doc)}
    assert by_text[restart]["status"] == "met"  # 2.0 s each: equal counts as at most
    assert (by_text[memory]["status"], by_text[memory]["ratio"]) == ("not met", 1.2)


def _cpu_target(doc: dict[str, Any]) -> dict[str, Any]:
    (target,) = [t for t in targets() if t.metric == "member_cpu_ms_per_op"]
    assert target.peer is None and target.threshold == 2.25
    assert "2.25 ms" in target.text and "4-5 ms" in target.text
    return evaluate(target, doc["results"])


def _concord_write1(doc: dict[str, Any]) -> dict[str, Any]:
    where = ("concord", "write", 1)
    return next(r for r in doc["results"] if (r["system"], r["figure"], r["concurrency"]) == where)


def test_cpu_per_sequential_write_is_an_absolute_target() -> None:
    doc = synthetic()
    got = _cpu_target(doc)  # one member at 30 % of a core, 200 writes/s
    assert got["concord"] == pytest.approx(1.5)
    assert (got["status"], got["ratio"], got["peer_value"]) == ("met", None, None)
    cell = _concord_write1(doc)
    cell["member_cpu_pct"] = {"concord-1": 30.0, "concord-2": 20.0, "concord-3": 10.0}
    got = _cpu_target(doc)  # all members together: 60 % at 200/s
    assert (got["concord"], got["status"]) == (pytest.approx(3.0), "not met")
    cell["member_cpu_pct"] = {"concord-1": 25.0, "concord-2": 20.0}
    assert _cpu_target(doc)["status"] == "met"  # 2.25 ms exactly
    line = next(ln for ln in report.targets_table(doc).splitlines() if "CPU per" in ln)
    assert "| 2.25 ms | (none: an absolute target) | - | **met** |" in line
    cell["member_cpu_pct"] = {}
    assert _cpu_target(doc)["status"] == "not measured"  # no member CPU recorded


def test_a_target_without_its_peers_number_is_not_measured() -> None:
    doc = synthetic()
    doc["results"] = [r for r in doc["results"] if r["system"] != "etcd"]  # a run without etcd
    evaluated = report.evaluated_targets(doc)
    assert len(evaluated) == len(targets())
    for t in evaluated:
        if t["peer"] == "etcd":
            assert (t["status"], t["ratio"], t["peer_value"]) == ("not measured", None, None)
    by_text = {t["target"]: t for t in evaluated}
    assert by_text["sequence next/s at 64 in flight >= 1.0x PySyncObj"]["status"] == "met"
    assert _cpu_target(doc)["status"] == "met"  # needs no peer
    doc = synthetic()  # etcd in the run, but without the figure (as runs before its CAS loop)
    doc["results"] = [
        r for r in doc["results"] if (r["system"], r["figure"]) != ("etcd", "seq_next")
    ]
    doc["results"].append(_na("etcd", "seq_next", 64, "no sequence primitive"))
    seq = {t["target"]: t for t in report.evaluated_targets(doc)}[
        "sequence next/s at 64 in flight >= 1.0x etcd's CAS loop"
    ]
    assert (seq["status"], seq["concord"], seq["peer_value"]) == ("not measured", 1800.0, None)


def test_a_target_is_not_met_just_because_it_was_measured() -> None:
    doc = synthetic()
    (target,) = [t for t in targets([64]) if t.figure == "lock_contended"]
    for r in doc["results"]:
        if r["system"] == "concord" and r["figure"] == "lock_contended":
            r["value"] = 200.0
    assert evaluate(target, doc["results"])["status"] == "met"  # equal counts as at least


def test_ratio_lines_cover_every_figure() -> None:
    lines = report.ratio_lines(synthetic())
    figures = {line.split(":")[0].split()[0] for line in lines}
    assert {
        "write",
        "cas",
        "lock_contended",
        "seq_next",
        "failover",
        "restart",
        "memory",
    } <= figures
    assert any("Concord/PySyncObj n/a" in line for line in lines if line.startswith("cas"))


def test_docs_page_has_environment_table_profile_and_plots(tmp_path: Path) -> None:
    doc = synthetic()
    page = report.docs_page(doc, "benchmarks", ["throughput.png"])
    assert "2030-01-02 03:04:05" in page
    assert "test CPU" in page
    assert "| figure | in flight |" in page
    assert "`apply`" in page
    assert "![throughput.png](benchmarks/throughput.png)" in page


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="bench extra only")
def test_plots_are_written(tmp_path: Path) -> None:
    written = report.plots(synthetic(), tmp_path)
    assert {p.name for p in written} == {"throughput.png", "latency_cdf.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)


def test_histogram_quantiles_are_within_one_bucket() -> None:
    h = Histogram()
    for ms in range(1, 101):
        h.record(ms / 1000)
    p50, p99 = h.quantile(0.5), h.quantile(0.99)
    assert p50 is not None and p99 is not None
    assert 0.050 <= p50 <= 0.050 * 1.011
    assert 0.099 <= p99 <= 0.099 * 1.011
    again = Histogram.from_json(h.to_json())
    assert again.total == 100 and again.quantile(0.5) == p50
    assert again.cdf()[-1][1] == 1.0
    assert Histogram().quantile(0.5) is None


def test_profile_summary_ranks_self_and_inclusive_time() -> None:
    raw = "\n".join(
        [
            "main (/x/coordinator/daemon/member.py:1);apply (/x/coordinator/fsm/kv.py:9) 30",
            "main (/x/coordinator/daemon/member.py:1);"
            "send (/v/site-packages/grpc/aio/_call.py:3) 10",
            "run (/usr/lib/python3.11/asyncio/events.py:80) 10",
        ]
    )
    s = profile.summarise(raw)
    assert s["samples"] == 50
    assert s["top_self"][0] == {"function": "apply", "file": "coordinator/fsm/kv.py", "share": 0.6}
    areas = {a["area"]: a["share"] for a in s["self_by_area"]}
    assert areas["concord state machine"] == 0.6
    assert areas["grpc (python layer + cython)"] == 0.2
    assert areas["asyncio"] == 0.2
    assert all(r["function"] != "run" for r in s["top_inclusive"])  # event-loop plumbing


def test_etcd_declarations_match_etcds_wire_format() -> None:
    pytest.importorskip("grpc_tools")
    from bench.protos import ensure_generated

    ensure_generated()
    from bench.protos import etcd_kv_pb2 as kv
    from bench.protos import etcd_lock_pb2 as lock

    # Service and method names make the HTTP/2 paths: /etcdserverpb.KV/Put, /v3lockpb.Lock/Lock.
    assert kv.DESCRIPTOR.services_by_name["KV"].full_name == "etcdserverpb.KV"
    assert kv.DESCRIPTOR.services_by_name["Maintenance"].full_name == "etcdserverpb.Maintenance"
    assert "LeaseGrant" in kv.DESCRIPTOR.services_by_name["Lease"].methods_by_name
    assert lock.DESCRIPTOR.services_by_name["Lock"].full_name == "v3lockpb.Lock"
    # Field numbers, as etcd encodes them (tag = field << 3 | wire type).
    assert kv.PutRequest(key=b"k", value=b"v").SerializeToString() == b"\x0a\x01k\x12\x01v"
    cmp = kv.Compare(key=b"k", target=kv.Compare.VALUE, result=kv.Compare.EQUAL, value=b"v")
    assert cmp.SerializeToString() == b"\x10\x03\x1a\x01k\x3a\x01v"
    op = kv.RequestOp(request_put=kv.PutRequest(key=b"k"))
    assert op.SerializeToString() == b"\x12\x03\x0a\x01k"
    assert lock.LockRequest(name=b"n", lease=5).SerializeToString() == b"\x0a\x01n\x10\x05"
    # etcd's StatusResponse: leader is field 4, header.member_id is field 2 of field 1.
    status = kv.StatusResponse.FromString(b"\x0a\x02\x10\x07\x20\x07\x42\x01x")
    assert (status.header.member_id, status.leader) == (7, 7)
    assert list(status.errors) == ["x"]


def test_the_reference_relay_is_reported_against_both_systems() -> None:
    doc = synthetic()
    assert report.reference_line(doc) == "No reference relay in this run."
    doc["reference"] = {"system": "grpc-relay-floor", "p50_ms": 1.6, "p99_ms": 3.2}
    line = report.reference_line(doc)
    assert "p50 1.60 ms, p99 3.20 ms" in line
    assert "Concord 4.00 ms (2.50x) and etcd 2.00 ms (1.25x)" in line
    assert line in report.markdown(doc)
    assert "framed transport" not in line
    doc["reference"]["frames"] = {"system": "frames-relay-floor", "p50_ms": 1.4, "p99_ms": 2.8}
    assert "framed transport (`bench/floor_frames.py`): p50 1.40 ms, p99 2.80 ms." in (
        report.reference_line(doc)
    )


def test_the_reference_relay_runs_and_cleans_up() -> None:
    """bench.floor for real (three processes, mutual TLS, fsync), briefly: it must work on a
    fresh machine, since `make bench` reports it under the table."""
    result = asyncio.run(floor.measure(writes=30, warmup=5))
    assert result["writes"] == 30
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert _running("bench.floor") == []


def test_the_relays_framed_twin_runs_and_cleans_up() -> None:
    result = asyncio.run(floor_frames.measure(writes=30, warmup=5))
    assert result["writes"] == 30
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert _running("bench.floor_frames") == []


def _running(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if marker in text and "pytest" not in text:
            found.append(text)
    return found
