"""`python -m coordinator.testing.nemesis`: run fault-injection scenarios on real processes.

    python -m coordinator.testing.nemesis list
    python -m coordinator.testing.nemesis run --scenario kill [--seed N]     # one scenario
    python -m coordinator.testing.nemesis run --scenario random --seed N     # one soak schedule
    python -m coordinator.testing.nemesis run --scenario quorum-3            # the quorum table
    python -m coordinator.testing.nemesis bounded                            # what make test runs
    python -m coordinator.testing.nemesis soak --minutes M [--seed S]        # make soak

Everything is written under `.results/nemesis/<UTC timestamp>-<label>/` (or `--results`):
one folder per scenario run and a `summary.json` for the whole invocation. Exit status 0 if
every run passed, 1 if one failed (each failure printed with its scenario, seed and the
command that reproduces it), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import sys
import time
from pathlib import Path

from .quorum import run_quorum, table
from .runner import Outcome, append_run_summary, new_run_dir, run_scenario
from .scenarios import BOUNDED, QUORUM, scenario_for

HANG_GRACE_S = 120.0
"""Past a scenario's own deadline, the process dumps every thread's stack and exits: a last
resort against a hang the event loop cannot interrupt."""


def run_one(name: str, seed: int | None, run_dir: Path) -> Outcome:
    if name in QUORUM:
        n = int(name.split("-")[1])
        deadline_s = 150.0
        coro = run_quorum(n, 1 if seed is None else seed, run_dir, deadline_s)
    else:
        scenario = scenario_for(name, 1 if seed is None else seed)
        seed = scenario.seed if seed is None else seed
        deadline_s = scenario.deadline_s
        coro = run_scenario(scenario, seed, run_dir)
    faulthandler.dump_traceback_later(deadline_s + HANG_GRACE_S, exit=True)
    try:
        outcome = asyncio.run(coro)
    finally:
        faulthandler.cancel_dump_traceback_later()
    append_run_summary(run_dir, outcome)
    return outcome


def line(o: Outcome) -> str:
    verdict = "ok" if o.ok else "FAILED"
    kinds = "+".join(sorted({k for e in o.episodes for k in e}))
    return (
        f"{o.scenario:<20} seed {o.seed:<6} N={o.members} {kinds:<40} "
        f"ops {o.ops_checked:>6}  {verdict:<6} {o.seconds:6.1f} s"
    )


def report(outcomes: list[Outcome], run_dir: Path, *, each: bool = True) -> int:
    """Print every run (`each`) and every failure; the exit status."""
    failed = [o for o in outcomes if not o.ok]
    ops = sum(o.ops_checked for o in outcomes)
    print(
        f"\nnemesis: {len(outcomes)} run(s), {ops} operations checked, {len(failed)} failed; "
        f"results in {run_dir}"
    )
    for o in outcomes if each else []:
        print("  " + line(o))
        table_rows = o.extra.get("quorum_table")
        if isinstance(table_rows, list):
            print(table(table_rows))
    for o in failed:
        print(o.failure_message(), file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m coordinator.testing.nemesis")
    p.add_argument("--results", type=Path, help="parent folder (default .results/nemesis)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the scenarios")
    r = sub.add_parser("run", help="run one scenario")
    r.add_argument("--scenario", required=True)
    r.add_argument("--seed", type=int)
    sub.add_parser("bounded", help="run the bounded set (as make test does)")
    s = sub.add_parser("soak", help="random schedules, seed after seed, for a while")
    s.add_argument("--minutes", type=float, required=True)
    s.add_argument("--seed", type=int, help="first seed (default: from the clock)")
    ns = p.parse_args(argv)

    if ns.command == "list":
        for sc in BOUNDED:
            print(f"{sc.name:<20} N={sc.members} seed {sc.seed:<4} {sc.description}")
        for q in QUORUM:
            print(f"{q:<20} N={q[-1]} the quorum table: members down one at a time")
        print(f"{'random':<20} N=3|5   a random schedule drawn from --seed (make soak)")
        return 0
    if ns.command == "run":
        known = {sc.name for sc in BOUNDED} | set(QUORUM) | {"random"}
        if ns.scenario not in known:
            p.error(f"unknown scenario {ns.scenario!r}; see `list`")
        run_dir = new_run_dir(f"{ns.scenario}", ns.results)
        return report([run_one(ns.scenario, ns.seed, run_dir)], run_dir)
    if ns.command == "bounded":
        run_dir = new_run_dir("bounded", ns.results)
        names = [sc.name for sc in BOUNDED] + list(QUORUM)
        return report([run_one(name, None, run_dir) for name in names], run_dir)
    # soak
    run_dir = new_run_dir("soak", ns.results)
    seed = ns.seed if ns.seed is not None else int(time.time()) % 1_000_000
    budget_s = ns.minutes * 60
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    print(f"soak: {ns.minutes:g} min from seed {seed}; results in {run_dir}", flush=True)
    while time.perf_counter() - started < budget_s or not outcomes:
        o = run_one("random", seed, run_dir)
        outcomes.append(o)
        print("  " + line(o), flush=True)
        seed += 1
    return report(outcomes, run_dir, each=False)


if __name__ == "__main__":
    sys.exit(main())
