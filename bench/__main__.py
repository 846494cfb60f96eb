"""`python -m bench`: run the benchmarks, or regenerate the report from a run.

    python -m bench run [--quick] [--systems concord,etcd,pysyncobj] [--keys N] [...]
    python -m bench report [--runs N | --results RESULTS_JSON...] [--scale SCALE_JSON...]
                           [--docs docs/benchmarks.md]
    python -m bench floor [--writes N]

`make bench` is `run` (BENCH_QUICK=1 adds --quick), `make bench-report` is `report`. A run
writes results.json, table.md and the plots into .results/bench/<UTC time>/ (ignored by git;
.results/bench/latest points at the newest) and prints the table with the ratios and targets.
`report` renders the newest of the last three runs with the spread of all three, and sums up
the `make bench-scale` documents (.results/bench/scale-<UTC time>.json) of the same session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .figures import SYSTEMS
from .procs import Supervisor, filesystem_of
from .protos import ensure_generated
from .run import Plan

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / ".results" / "bench"
DOCS = REPO / "docs" / "benchmarks.md"
RUN_LIMIT_S = 40 * 60.0
"""A hard bound on one run; past it everything is stopped."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def environment(work: Path) -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    mem_kib = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
         if line.startswith("MemTotal:")),
        0,
    )  # fmt: skip
    os_name = next(
        (line.split("=", 1)[1].strip('"') for line in _read("/etc/os-release").splitlines()
         if line.startswith("PRETTY_NAME=")),
        platform.system(),
    )  # fmt: skip
    try:
        from importlib.metadata import version  # noqa: PLC0415

        grpcio = version("grpcio")
    except Exception:
        grpcio = "unknown"
    from .systems.concord import source_version  # noqa: PLC0415

    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpcio,
        "data_filesystem": filesystem_of(work),
        "data_dir_note": "a fresh temporary directory per cluster, deleted afterwards",
        "loadavg_start": _loadavg(),
        "concord_source": source_version(),
    }


def _loadavg() -> str:
    return " ".join(_read("/proc/loadavg").split()[:3])


def etcd_binary(given: str | None) -> tuple[Path, str]:
    """The etcd binary (built by scripts/build_etcd.sh unless given) and its version line."""
    if given:
        path = Path(given)
    else:
        out = subprocess.run(
            ["bash", str(REPO / "scripts" / "build_etcd.sh")],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        path = Path(out.strip().splitlines()[-1])
    text = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True)
    first = text.stdout.splitlines()[0] if text.stdout else "unknown"
    go = next((ln for ln in text.stdout.splitlines() if ln.startswith("Go Version")), "")
    return path, f"{first.replace('etcd Version: ', 'v')} ({go.strip()})"


def _makers(
    systems: list[str],
    work: Path,
    sup: Supervisor,
    etcd: tuple[Path, str] | None,
    plan: Plan,
) -> dict[str, Callable[[str], Any]]:
    from .systems.concord import ConcordCluster  # noqa: PLC0415
    from .systems.etcd import EtcdCluster  # noqa: PLC0415
    from .systems.pysyncobj import PySyncObjCluster  # noqa: PLC0415

    makers: dict[str, Callable[[str], Any]] = {}
    for name in systems:
        if name == "concord":
            makers[name] = lambda tag: ConcordCluster(work / f"concord-{tag}", sup)
        elif name == "etcd" and etcd is not None:
            binary, version = etcd
            makers[name] = lambda tag, b=binary, v=version: EtcdCluster(  # type: ignore[misc]
                work / f"etcd-{tag}", sup, b, v
            )
        elif name == "pysyncobj":
            makers[name] = lambda tag: PySyncObjCluster(
                work / f"pysyncobj-{tag}", sup, batch=plan.pysyncobj_batch
            )
    return makers


async def _run_all(
    makers: dict[str, Callable[[str], Any]],
    plan: Plan,
    out_dir: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    from .run import run_system  # noqa: PLC0415

    results: list[dict[str, Any]] = []
    described: dict[str, Any] = {}
    prof: dict[str, Any] | None = None
    for name, make in makers.items():
        started = time.perf_counter()
        try:
            got, desc, p = await run_system(make, plan, log, out_dir)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as err:
            log(f"{name}: FAILED: {type(err).__name__}: {err}")
            results.append(
                {"system": name, "figure": "run", "available": False, "error": True,
                 "reason": f"{type(err).__name__}: {err}"[:500], "concurrency": None}
            )  # fmt: skip
            described[name] = {"version": "?", "obtained": "?", "error": str(err)[:500]}
            continue
        results.extend(got)
        described[name] = desc
        if p is not None:
            prof = p
        log(f"{name}: done in {time.perf_counter() - started:.0f} s")
    return results, described, prof


def cmd_run(args: argparse.Namespace) -> int:
    from . import report  # noqa: PLC0415

    wall = time.perf_counter()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        print(f"unknown system(s): {', '.join(unknown)} (choose from {', '.join(SYSTEMS)})")
        return 2
    if "pysyncobj" in systems and importlib.util.find_spec("pysyncobj") is None:
        print("pysyncobj is not installed: run `make bench` (it installs the bench extra)")
        return 2
    quick = args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    plan = (Plan.quick_plan() if quick else Plan.full()).with_overrides(
        keys=args.keys,
        duration_s=args.seconds,
        failover_trials=args.trials,
        levels=tuple(int(c) for c in args.levels.split(",")) if args.levels else None,
        shared=False if args.client_per_task else None,
        pysyncobj_batch=False if args.pysyncobj_no_batch else None,
        keys_only=True if args.keys_only else None,
    )
    ensure_generated()
    etcd = etcd_binary(args.etcd) if "etcd" in systems else None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if quick else "")
    out_dir = Path(args.out) if args.out else RESULTS / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="concord-bench-", dir=args.work_dir))
    env = environment(work)
    if env["data_filesystem"] in ("tmpfs", "ramfs"):
        log(f"warning: {work} is on {env['data_filesystem']}: data would not be on disk")
    log(f"results -> {out_dir}; data -> {work} ({env['data_filesystem']}); plan {plan}")

    sup = Supervisor()
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        results, described, prof = asyncio.run(
            asyncio.wait_for(
                _run_all(_makers(systems, work, sup, etcd, plan), plan, out_dir), RUN_LIMIT_S
            )
        )
        reference = None if plan.keys_only else _floor(plan)
    except KeyboardInterrupt:
        log("interrupted: stopping every process")
        return 130
    finally:
        sup.close()
        signal.signal(signal.SIGTERM, previous)
        leftover = sup.running()
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)
        log("every process started by the benchmark is stopped" if not leftover
            else f"processes still running: {leftover}")  # fmt: skip

    env["loadavg_end"] = _loadavg()
    # Each result names the run it belongs to; the full description is `environment` above.
    run_env = {k: env[k] for k in ("date_utc", "host", "cpus", "cpu_model")}
    doc: dict[str, Any] = {
        "schema": 1,
        "environment": env,
        "plan": {**plan.__dict__, "levels": list(plan.levels)},
        "systems": described,
        "results": [{**r, "environment": run_env} for r in results],
        "targets": report.evaluated_targets({"results": results}),
        "profile": prof,
        "reference": reference,
        "elapsed_s": round(time.perf_counter() - wall, 1),
    }
    written = report.write_outputs(doc, out_dir)
    latest = RESULTS / "latest"
    if out_dir.parent == RESULTS:
        with contextlib.suppress(OSError):
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(out_dir.name)
    print()
    print(report.markdown(doc))
    print("Ratios (Concord / peer) for every figure:")
    for line in report.ratio_lines(doc):
        print(f"  {line}")
    print()
    print("Targets:")
    for t in doc["targets"]:
        got = (
            f"ratio {report.fmt_ratio(t['ratio'])}"
            if t["peer"] is not None
            else f"Concord {report.fmt(t['concord'], t['unit'])}"
        )
        print(f"  [{t['status']}] {t['target']} ({got})")
    print()
    shown = [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in written]
    log(f"wrote {', '.join(shown)}")
    log(f"total {doc['elapsed_s']:.0f} s")
    return 0 if not any(r.get("error") for r in results) else 1


def _floor(plan: Plan) -> dict[str, Any] | None:
    """The bare grpc.aio relay's sequential write (`bench.floor`), measured after the
    systems in the same invocation, with its twin over the framed peer transport
    (`bench.floor_frames`, under "frames"); None if the relay could not run."""
    from . import floor  # noqa: PLC0415

    log("reference: a bare grpc.aio relay (TLS, fsync, no Raft), sequential writes")
    try:
        result = asyncio.run(floor.measure(writes=500 if plan.quick else 2000))
    except Exception as err:
        log(f"reference: failed: {type(err).__name__}: {err}")
        return None
    log(f"reference: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    from . import floor_frames  # noqa: PLC0415

    log("reference: its twin over the framed peer transport")
    try:
        twin = asyncio.run(floor_frames.measure(writes=500 if plan.quick else 2000))
    except Exception as err:
        log(f"reference: the twin failed: {type(err).__name__}: {err}")
        return result
    log(f"reference twin: p50 {twin['p50_ms']} ms, p99 {twin['p99_ms']} ms")
    return {**result, "frames": twin}


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_report(args: argparse.Namespace) -> int:
    from . import report, runs_report, scale_report  # noqa: PLC0415

    if args.results:
        paths = [Path(p) for p in args.results]
    else:
        paths = runs_report.latest(RESULTS, args.runs) if RESULTS.is_dir() else []
    missing = [p for p in paths if not p.exists()]
    if not paths or missing:
        print(f"no results at {missing[0] if missing else RESULTS}: run `make bench` first")
        return 1
    docs = [report.load(p) for p in paths]
    scale = [Path(p) for p in args.scale] if args.scale else scale_report.default_selection(RESULTS)
    written = report.write_docs(
        runs_report.newest(docs),
        Path(args.docs),
        across=runs_report.across_runs(docs),
        scale_runs=scale_report.load_runs(scale),
    )
    print(f"from {len(docs)} run(s): " + ", ".join(str(p) for p in paths))
    print(f"and {len(scale)} make bench-scale run(s): " + ", ".join(str(p) for p in scale))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["floor"]:
        from . import floor  # noqa: PLC0415

        floor.main(words[1:])
        return 0
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmarks")
    r.add_argument("--quick", action="store_true", help="a ~2-minute smoke run (or BENCH_QUICK=1)")
    r.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated (default all)")
    r.add_argument("--keys", type=int, help="keys for the restart/memory figures")
    r.add_argument("--seconds", type=float, help="measured window per cell")
    r.add_argument("--trials", type=int, help="failover trials")
    r.add_argument("--levels", help="concurrency levels, comma-separated")
    r.add_argument(
        "--client-per-task",
        action="store_true",
        help="one client connection per task (default: one per cell, shared by its tasks)",
    )
    r.add_argument(
        "--pysyncobj-no-batch",
        action="store_true",
        help="run PySyncObj with appendEntriesUseBatch=False (its default is True)",
    )
    r.add_argument("--etcd", help="an etcd binary to use instead of building the pinned one")
    r.add_argument("--out", help="results folder (default .results/bench/<UTC time>)")
    r.add_argument("--work-dir", help="where the clusters' data directories go (on disk)")
    r.add_argument("--keep-data", action="store_true", help="keep the data directories")
    r.add_argument(
        "--keys-only",
        action="store_true",
        help="only the key-load figures (memory and restart with --keys keys)",
    )
    r.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="write docs/benchmarks.md from a run")
    rep.add_argument(
        "--results",
        nargs="+",
        help="results.json of the runs to show (default: the latest --runs); the page is the "
        "newest's, with the spread of all of them",
    )
    rep.add_argument(
        "--runs",
        type=int,
        default=3,
        help="how many of the latest runs under .results/bench to compare (default 3; 1: the "
        "latest alone)",
    )
    rep.add_argument(
        "--scale",
        nargs="+",
        help="make bench-scale documents to sum up (default: every .results/bench/scale-*.json "
        "written within 3 hours of the newest)",
    )
    rep.add_argument("--docs", default=str(DOCS), help="the page to write")
    rep.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
