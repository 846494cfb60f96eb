"""Running the simulator: one seed, many seeds across processes, the summary, and the
command line (`python -m coordinator.testing.sim` runs `main` here)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import asdict, replace

from .mutants import MUTANTS
from .sim import SimResult, Simulator
from .sim_options import MS, SimOptions

# ---------------------------------------------------------------------------------- running


def run_seed(
    seed: int,
    voters: int | None = None,
    mutant: str | None = None,
    lease_reads: bool = False,
) -> SimResult:
    opts = SimOptions.from_seed(seed, voters)
    m = MUTANTS[mutant] if mutant is not None else None
    if lease_reads or (m is not None and m.lease_reads):
        opts = replace(opts, lease_reads=True)
    if m is None:
        return Simulator(opts).run()
    return Simulator(opts, m.node_factory, m.fsm_factory, m.core_class).run()


def repro_command(
    seed: int, voters: int | None, mutant: str | None, lease_reads: bool = False
) -> str:
    cmd = f"python -m coordinator.testing.sim --seed {seed}"
    if voters is not None:
        cmd += f" --voters {voters}"
    if mutant is not None:
        cmd += f" --mutant {mutant}"
    if lease_reads:
        cmd += " --lease-reads"
    return cmd


def _run_one(args: tuple[int, int | None, str | None, bool]) -> SimResult:
    return run_seed(*args)


def percentiles(values: Sequence[int], ps: Sequence[float]) -> list[float]:
    if not values:
        return [float("nan")] * len(ps)
    s = sorted(values)
    return [s[min(len(s) - 1, int(p * len(s)))] / MS for p in ps]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m coordinator.testing.sim",
        description="Deterministic Raft simulation under injected faults, by seed.",
    )
    ap.add_argument("--seed", type=int, help="run one seed, verbosely (reproduces a failure)")
    ap.add_argument("--seeds", type=int, default=200, help="run seeds 1..N (or from --first)")
    ap.add_argument("--first", type=int, default=1, help="first seed of a --seeds run")
    ap.add_argument("--voters", type=int, choices=(3, 5, 7), help="force the cluster size")
    ap.add_argument("--mutant", help="run a deliberately broken variant (see mutants.py)")
    ap.add_argument(
        "--lease-reads",
        action="store_true",
        help="members serve reads on the leader's lease, not a ReadIndex barrier",
    )
    ap.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    ap.add_argument("--json", help="write per-seed results as JSON lines to this file")
    ap.add_argument(
        "--progress-s",
        type=float,
        default=5.0,
        help="print seeds done / total and violations so far this often (0: never)",
    )
    args = ap.parse_args(argv)

    if args.seed is not None:
        res = run_seed(args.seed, args.voters, args.mutant, args.lease_reads)
        print(f"seed {res.seed}: {res.options}")
        print(json.dumps({k: v for k, v in asdict(res).items() if k != "options"}, indent=1))
        if not res.ok:
            print(f"FAILED: {res.failure}")
            return 1
        print("ok")
        return 0

    seeds = [
        (s, args.voters, args.mutant, args.lease_reads)
        for s in range(args.first, args.first + args.seeds)
    ]
    workers = args.workers or multiprocessing.cpu_count()
    last = args.first + args.seeds - 1
    print(f"sim: seeds {args.first}..{last} on {workers} workers", flush=True)
    if args.mutant is not None:
        print(
            f"sim: mutant {args.mutant} is broken on purpose: its violations are expected "
            "catches (the simulator working), not bugs",
            flush=True,
        )
    started = time.perf_counter()
    shown = started
    results: list[SimResult] = []
    out = open(args.json, "w") if args.json else None  # noqa: SIM115
    try:
        with multiprocessing.Pool(workers) as pool:
            for res in pool.imap_unordered(_run_one, seeds, chunksize=4):
                results.append(res)
                if out is not None:
                    out.write(json.dumps(asdict(res)) + "\n")
                if not res.ok:
                    what = "FAIL" if args.mutant is None else "expected catch of the mutant:"
                    print(f"{what} seed {res.seed}: {res.failure}", flush=True)
                    print(f"  options: {res.options}", flush=True)
                    cmd = repro_command(res.seed, args.voters, args.mutant, args.lease_reads)
                    print(f"  reproduce: {cmd}")
                # Thousands of seeds take minutes: say how far along it is, so that a long
                # run is visibly alive and a violation is seen before the summary.
                now = time.perf_counter()
                if args.progress_s > 0 and now - shown >= args.progress_s:
                    shown = now
                    print(progress_line(results, len(seeds), now - started), flush=True)
    finally:
        if out is not None:
            out.close()
    elapsed = time.perf_counter() - started
    print_summary(results, elapsed, workers)
    return 0 if all(r.ok for r in results) else 1


def progress_line(results: Sequence[SimResult], total: int, elapsed_s: float) -> str:
    done = len(results)
    violations = sum(not r.ok for r in results)
    left_s = elapsed_s / done * (total - done) if done else 0.0
    return (
        f"sim progress: {done}/{total} seeds, violations={violations}, "
        f"{elapsed_s:.0f} s, ~{left_s:.0f} s left"
    )


def print_summary(results: list[SimResult], elapsed_s: float, workers: int) -> None:
    steps = sum(r.steps for r in results)
    faults = sum(r.faults for r in results)
    ops = sum(r.ops for r in results)
    histories = sum(r.histories for r in results)
    failed = [r for r in results if not r.ok]
    elections = [e for r in results for e in r.elections_us]
    heal = [r.heal_to_commit_us for r in results if r.heal_to_commit_us is not None]
    by_size: dict[str, int] = {}
    for r in results:
        size = r.options.split(" voters=")[1].split(" ")[0]
        by_size[size] = by_size.get(size, 0) + 1
    ps = (0.5, 0.9, 0.99, 1.0)
    e = percentiles(elections, ps)
    h = percentiles(heal, ps)
    print(
        f"elections: {len(elections)} measured, ms p50/p90/p99/max = "
        f"{e[0]:.0f}/{e[1]:.0f}/{e[2]:.0f}/{e[3]:.0f}"
    )
    print(f"heal-to-commit: ms p50/p90/p99/max = {h[0]:.0f}/{h[1]:.0f}/{h[2]:.0f}/{h[3]:.0f}")
    print(f"cluster sizes: {', '.join(f'{k} members x{v}' for k, v in sorted(by_size.items()))}")
    kinds: dict[str, int] = {}
    for r in results:
        for k, v in r.ops_by_kind.items():
            kinds[k] = kinds.get(k, 0) + v
    print(f"ops {' '.join(f'{k}={v}' for k, v in kinds.items())}")
    print(
        f"sim summary: seeds={len(results)} steps={steps} faults={faults} ops={ops} "
        f"histories={histories} violations={len(failed)} "
        f"wall={elapsed_s:.1f}s workers={workers} "
        f"seeds/s={len(results) / elapsed_s:.1f} steps/s={steps / elapsed_s:.0f}"
    )
