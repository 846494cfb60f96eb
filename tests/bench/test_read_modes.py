"""`bench.read_modes` on synthetic numbers: the order of the rounds, one cell's record, the
summary over rounds and its table. No cluster is started (`make bench-reads` is not part of
the suite)."""

from __future__ import annotations

from typing import Any

from bench.read_modes import cell_row, parse_args, run_order, summarise, table


def _result(system: str, figure: str, level: int, tput: float, **kw: Any) -> dict[str, Any]:
    return {
        "system": system,
        "figure": figure,
        "concurrency": level,
        "available": True,
        "throughput_per_s": tput,
        "value": tput,
        "p50_ms": kw.get("p50", 1.0),
        "p99_ms": kw.get("p99", 2.0),
        "failed": kw.get("failed", 0),
        "member_cpu_pct": {f"{system}-1": 10.0, f"{system}-2": kw.get("cpu", 50.0)},
    }


def _row(
    variant: str, round_no: int, figure: str, level: int, tput: float, *, served: int | None
) -> dict[str, Any]:
    system = "etcd" if variant == "etcd" else "concord"
    reads = 1000 if figure == "read" else None
    counter = None if served is None else (100.0, 100.0 + served)
    return cell_row(
        variant,
        round_no,
        2,
        _result(system, figure, level, tput, cpu=40.0 + round_no),
        stats={"reads": reads} if reads else {},
        lease_reads=counter or (None, None),
        leader_after=2,
    )


def test_rounds_alternate_their_order() -> None:
    variants = ["barrier", "lease", "etcd"]
    assert run_order(variants, 1) == variants
    assert run_order(variants, 2) == ["etcd", "lease", "barrier"]
    assert run_order(variants, 3) == variants


def test_a_cell_names_its_leaders_cpu_and_the_share_served_on_the_lease() -> None:
    row = cell_row(
        "lease",
        1,
        2,
        _result("concord", "read", 64, 5000.0, cpu=80.0),
        stats={"reads": 400},
        lease_reads=(10.0, 310.0),
        leader_after=3,
    )
    assert row["leader_cpu_pct"] == 80.0  # member 2, not member 1's 10 %
    assert row["members_cpu_pct"] == 90.0
    assert row["lease_reads_served"] == 300
    assert row["lease_share"] == 0.75
    assert row["leader_changed"] is True
    assert row["throughput_per_s"] == 5000.0  # the cell's own result is kept whole

    etcd = cell_row(
        "etcd",
        1,
        1,
        _result("etcd", "read", 1, 900.0),
        stats={"reads": 900},
        lease_reads=(None, None),
        leader_after=1,
    )
    assert etcd["lease_share"] is None
    assert etcd["lease_reads_served"] is None
    assert etcd["leader_changed"] is False


def _rounds() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rnd, (b, lease, e) in enumerate([(100, 150, 300), (120, 210, 310), (90, 180, 290)], 1):
        rows.append(_row("barrier", rnd, "read", 16, b, served=0))
        # The second round's leader fell back to barriers for a fifth of its reads.
        rows.append(_row("lease", rnd, "read", 16, lease, served=800 if rnd == 2 else 1000))
        rows.append(_row("etcd", rnd, "read", 16, e, served=None))
        rows.append(_row("lease", rnd, "write", 1, 50 + rnd, served=0))
        rows.append(_row("barrier", rnd, "write", 1, 50.0, served=0))
    rows.append({"variant": "etcd", "round": 4, "error": "TimeoutError: no etcd leader"})
    return rows


def test_the_summary_takes_medians_and_ranges_over_rounds() -> None:
    summary = summarise(_rounds(), ["barrier", "lease", "etcd"])
    keys = [(s["variant"], s["figure"], s["concurrency"]) for s in summary]
    assert keys == [
        ("barrier", "read", 16),
        ("lease", "read", 16),
        ("etcd", "read", 16),
        ("barrier", "write", 1),
        ("lease", "write", 1),
    ]
    barrier, lease, etcd, _bw, lw = summary
    assert (barrier["throughput_median"], barrier["throughput_min"]) == (100, 90)
    assert barrier["throughput_max"] == 120
    assert barrier["rounds"] == 3
    assert barrier["lease_share"] == 0.0
    assert lease["throughput_median"] == 180
    assert lease["vs_barrier"] == 1.8
    assert lease["lease_share"] == round(2800 / 3000, 4)  # pooled over the rounds
    assert lease["lease_share_min"] == 0.8
    assert lease["leader_cpu_pct"] == 42.0  # the median round's
    assert etcd["vs_barrier"] == 3.0
    assert etcd["lease_share"] is None
    assert lw["vs_barrier"] == round(52 / 50, 2)
    assert lw["lease_share"] is None  # no reads to set the counter against


def test_the_table_shows_the_lowest_share_and_what_went_wrong() -> None:
    rows = _rounds()
    rows.append(
        cell_row(
            "lease",
            4,
            1,
            _result("concord", "read", 256, 10.0, failed=7),
            stats={"reads": 10},
            lease_reads=(0.0, 10.0),
            leader_after=3,
        )
    )
    text = table(summarise(rows, ["barrier", "lease"]))
    lines = text.splitlines()
    assert lines[0].startswith("| mode | op | in flight | ops/s (median) | min-max |")
    assert len(lines) == 2 + 6  # heading, rule, one line per variant, figure and level
    lease16 = next(line for line in lines if line.startswith("| lease | read | 16 |"))
    assert "| 180 | 150-210 | 1.8 |" in lease16
    assert "93.3% (min 80.0%)" in lease16
    lease256 = next(line for line in lines if line.startswith("| lease | read | 256 |"))
    assert "100.0%" in lease256
    assert "(min" not in lease256  # one round: no range to show
    assert "7 failed; leader changed in 1 round(s)" in lease256
    assert next(line for line in lines if line.startswith("| etcd | read | 16 |"))


def test_options() -> None:
    args = parse_args(["--levels", "1,64", "--no-etcd", "--rounds", "1"])
    assert args.levels == (1, 64)
    assert args.with_etcd is False
    assert args.rounds == 1
    assert parse_args([]).with_etcd is True
    assert parse_args([]).levels == (1, 16, 64, 256)
