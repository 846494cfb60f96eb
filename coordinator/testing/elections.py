"""How long a cluster is without a leader after its leader crashes (the Raft paper's Figure 16).

Each trial is one seed of the simulator with no other faults: a stable cluster, then the
leader is killed at a random moment, and we measure virtual time until another member wins
an election. Randomized timeouts of [T, 2T) ticks with 10 ms ticks and T = 15 give the
paper's 150-300 ms; PreVote and CheckQuorum are on, as in production.

    python -m coordinator.testing.elections --trials 1000 [--voters 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace

from coordinator.raft import RawNode

from .sim import Simulator
from .sim_member import SimNode
from .sim_options import MS, SimOptions
from .sim_run import percentiles


class ElectionTrial(Simulator):
    """A fault-free cluster whose leader is killed once it has been stable for a while."""

    def __init__(self, opts: SimOptions, *, hints: bool = False) -> None:
        super().__init__(opts)
        self.hints = hints
        """Survivors' transports report the dead leader's closed connections (as the real
        peer transport does; most within 5 ms), so followers need not wait for a timeout."""
        self.killed_at: int | None = None
        self.downtime_us: int | None = None
        self.victim = 0

    def on_new_leader(self, node: SimNode, raw: RawNode) -> None:
        super().on_new_leader(node, raw)
        if self.killed_at is not None and self.downtime_us is None:
            self.downtime_us = self.now - self.killed_at

    def kill_leader(self) -> None:
        leader = self.leader()
        if leader is None:
            self.at(10 * MS, self.kill_leader)
            return
        self.victim = leader.id
        self.killed_at = self.now
        leader.crash("trial")
        if self.hints:
            self._connections_lost(leader.id)

    def measure(self) -> int | None:
        # Let the first election settle, then kill at a random phase of the heartbeat cycle.
        self.at(1000 * MS + self.rng.randint(0, 100 * MS), self.kill_leader)
        while self._queue and self.downtime_us is None and self.now < 10_000 * MS:
            t, _, fn, args = self._pop()
            self.now = t
            fn(*args)
        return self.downtime_us


def trial_options(seed: int, voters: int, delay_ms: tuple[int, int]) -> SimOptions:
    base = SimOptions.from_seed(seed, voters)
    return replace(
        base,
        heartbeat_ticks=5,
        delay_min_us=delay_ms[0] * MS,
        delay_max_us=delay_ms[1] * MS,
        long_delay_p=0.0,
        drop_p=0.0,
        dup_p=0.0,
        faults=(),
        clients=0,
    )


def run_trials(
    trials: int, voters: int, delay_ms: tuple[int, int], first: int = 1, *, hints: bool = False
) -> list[int]:
    out: list[int] = []
    for seed in range(first, first + trials):
        downtime = ElectionTrial(trial_options(seed, voters, delay_ms), hints=hints).measure()
        if downtime is None:
            raise RuntimeError(f"seed {seed}: no leader within 10 s of killing the old one")
        out.append(downtime)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coordinator.testing.elections")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--voters", type=int, default=5, choices=(3, 5, 7))
    ap.add_argument("--delay-ms", type=int, nargs=2, default=(2, 8), metavar=("MIN", "MAX"))
    ap.add_argument(
        "--hints",
        action="store_true",
        help="survivors hear of the dead leader's closed connections (the real transport does)",
    )
    ap.add_argument("--json", help="write the raw downtimes (ms) here")
    args = ap.parse_args(argv)
    downtimes = run_trials(args.trials, args.voters, tuple(args.delay_ms), hints=args.hints)
    ps = (0.1, 0.5, 0.9, 0.99, 1.0)
    values = percentiles(downtimes, ps)
    print(
        f"leader crash -> new leader, {args.voters} members, timeouts 150-300 ms, "
        f"one-way delay {args.delay_ms[0]}-{args.delay_ms[1]} ms, {args.trials} trials"
        + (", connection-loss hints" if args.hints else "")
    )
    print("| p10 | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    print("| " + " | ".join(f"{v:.0f} ms" for v in values) + " |")
    within = {b: sum(1 for d in downtimes if d <= b * MS) / len(downtimes) for b in (300, 400, 500)}
    print(", ".join(f"{v:.1%} within {b} ms" for b, v in within.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"downtimes_ms": [d / MS for d in downtimes]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
