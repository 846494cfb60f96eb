"""Fault injection on real member processes: the bounded set `make test` runs (DESIGN.md §7.2).

Each scenario starts its own cluster of real `concord-coordinator` processes behind the
nemesis's gates, runs the four workloads (CAS register, sequence, set, locks with fencing)
while the faults happen, heals, and checks every history (`coordinator/testing/nemesis`).
The quorum tests take members down one at a time for N = 3 and N = 5.

Every run writes its histories, member logs and summary under
`.results/nemesis/<timestamp>-pytest/`; a failure prints the scenario, the seed and the one
command that reproduces it. `NEMESIS_SEED=N` runs every scenario with seed N instead of its
own. Each scenario has a hard deadline inside the runner, so none can stall the suite.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.testing.nemesis import BOUNDED, Scenario, new_run_dir, run_scenario
from coordinator.testing.nemesis.quorum import run_quorum, table
from coordinator.testing.nemesis.runner import Outcome, append_run_summary

pytestmark = [pytest.mark.process, pytest.mark.nemesis]

SLACK_S = 60.0
"""On top of a scenario's own deadline: the bound `asyncio.run` is given here too."""


@pytest.fixture(scope="module")
def run_dir() -> Iterator[Path]:
    path = new_run_dir("pytest")
    yield path
    print(f"\nnemesis results: {path}")


def seed_for(default: int) -> int:
    return int(os.environ.get("NEMESIS_SEED", default))


def finish(outcome: Outcome, run_dir: Path) -> None:
    append_run_summary(run_dir, outcome)
    print(
        f"{outcome.scenario} seed {outcome.seed}: {outcome.ops_checked} ops checked, "
        f"{'ok' if outcome.ok else 'FAILED'}, {outcome.seconds:.1f} s"
    )
    assert outcome.ok, outcome.failure_message()


@pytest.mark.parametrize("scenario", BOUNDED, ids=lambda s: s.name)
def test_scenario(scenario: Scenario, run_dir: Path) -> None:
    seed = seed_for(scenario.seed)
    outcome = asyncio.run(
        asyncio.wait_for(run_scenario(scenario, seed, run_dir), scenario.deadline_s + SLACK_S)
    )
    finish(outcome, run_dir)


@pytest.mark.parametrize("members", [3, 5])
def test_quorum(members: int, run_dir: Path) -> None:
    deadline_s = 150.0
    outcome = asyncio.run(
        asyncio.wait_for(
            run_quorum(members, seed_for(1), run_dir, deadline_s), deadline_s + SLACK_S
        )
    )
    rows = outcome.extra.get("quorum_table")
    if isinstance(rows, list):
        print(table(rows))
    finish(outcome, run_dir)
