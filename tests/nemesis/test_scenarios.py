"""The nemesis's schedules: a seed names one schedule, and the soak draws every fault kind.

Pure: no process is started.
"""

from __future__ import annotations

import random

import pytest

from coordinator.testing.nemesis.faults import COMBINABLE, KINDS, make_fault
from coordinator.testing.nemesis.scenarios import BOUNDED, random_scenario, scenario_for


def test_a_seed_names_one_schedule() -> None:
    assert random_scenario(7) == random_scenario(7)
    assert scenario_for("random", 7) == random_scenario(7)
    assert len({random_scenario(s).episodes for s in range(20)}) == 20


def test_the_soak_draws_every_fault_kind_and_combines_only_combinable_ones() -> None:
    seen: set[str] = set()
    for seed in range(200):
        sc = random_scenario(seed)
        assert sc.members in (3, 5)
        assert 3 <= len(sc.episodes) <= 8
        for episode in sc.episodes:
            seen.update(episode)
            if len(episode) > 1:
                assert set(episode) <= COMBINABLE, episode
    assert seen == set(KINDS)


def test_the_bounded_set_names_known_faults_and_unique_seeds() -> None:
    assert len({s.name for s in BOUNDED}) == len(BOUNDED)
    assert len({s.seed for s in BOUNDED}) == len(BOUNDED)
    for s in BOUNDED:
        for episode in s.episodes:
            for kind in episode:
                assert make_fault(kind, random.Random(0)).kind == kind
    with pytest.raises(ValueError, match="unknown fault kind"):
        make_fault("meteor", random.Random(0))
