"""Seeds that once failed, pinned: each line is one reproducible run that must pass.

Add a failing seed here with one line saying what it found, once the cause is fixed.
"""

from __future__ import annotations

import pytest

from coordinator.testing.sim_run import repro_command, run_seed

PINNED = [
    # A candidate of term 6 whose votes were delayed won after term 7 had committed entries
    # it lacked: legal Raft. The leader-completeness checker had demanded every applied entry;
    # it now demands only entries committed in earlier terms.
    (10285, None),
]


@pytest.mark.parametrize(("seed", "voters"), PINNED)
def test_pinned_seed(seed: int, voters: int | None) -> None:
    res = run_seed(seed, voters)
    assert res.ok, f"{res.failure}\nreproduce: {repro_command(seed, voters, None)}"
