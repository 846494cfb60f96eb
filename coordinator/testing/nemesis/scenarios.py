"""Scenarios: which faults, in which order, on how many members; and the random soak schedule.

A scenario is a list of *episodes*: each episode applies one or more faults together, holds
them for a while (drawn from `hold_s`), heals them in reverse order and waits until a leader a
majority agrees on is back (liveness), then the next one starts. The seed draws every choice
(which member, which side of a partition, how long, the clients' operations), so a seed names
a schedule exactly; the timing of real processes still varies from run to run.

`BOUNDED` is the set `make test` runs (each a few seconds to half a minute); `random` draws a
whole schedule from the seed (cluster size, 3-8 episodes of any kind, sometimes two
combinable faults at once), which is what `make soak` runs seed after seed. The quorum
experiments (`quorum-3`, `quorum-5`) are run by `quorum.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .faults import COMBINABLE, KINDS


@dataclass(frozen=True)
class Scenario:
    name: str
    members: int
    episodes: tuple[tuple[str, ...], ...]
    description: str
    seed: int = 1
    """The seed `make test` runs it with."""
    hold_s: tuple[float, float] = (1.0, 2.5)
    deadline_s: float = 150.0
    """Hard bound on the whole scenario (start-up, faults, final checks)."""


BOUNDED: tuple[Scenario, ...] = (
    Scenario(
        "kill",
        3,
        (("kill-leader",), ("kill-follower",)),
        "kill -9 of the leader, then of a follower; each restarted from its data dir",
        seed=11,
    ),
    Scenario(
        "pause",
        3,
        (("pause-leader",), ("pause-follower",)),
        "SIGSTOP the leader past an election timeout, SIGCONT it; then a follower",
        seed=12,
        hold_s=(1.5, 3.0),
    ),
    Scenario(
        "partition-majority",
        5,
        (("partition-majority",), ("partition-majority",)),
        "a minority (with or without the leader) cut off from the majority, both ways",
        seed=13,
    ),
    Scenario(
        "partition-leader",
        3,
        (("partition-leader",),),
        "the leader isolated from every other member",
        seed=14,
        hold_s=(2.0, 3.0),
    ),
    Scenario(
        "partition-one-way",
        3,
        (("partition-one-way",), ("partition-one-way",)),
        "one member's outgoing or incoming links cut (A hears B, B does not hear A)",
        seed=15,
    ),
    Scenario(
        "partition-bridge",
        5,
        (("partition-bridge",),),
        "two halves that only a bridge member connects",
        seed=16,
        hold_s=(2.0, 3.0),
    ),
    Scenario(
        "wal-tail",
        3,
        (("torn-wal",), ("truncated-wal",)),
        "restart after a torn WAL tail (half-written record), then a truncated one (unsynced)",
        seed=17,
        hold_s=(0.5, 1.5),
    ),
    Scenario(
        "remove-readd",
        3,
        (("remove-readd",),),
        "a member removed (leadership moved off it first) and re-added fresh, writes flowing",
        seed=18,
        hold_s=(0.5, 1.5),
    ),
    Scenario(
        "disk-full",
        3,
        (("disk-full",), ("disk-full",)),
        "RLIMIT_FSIZE on a member: its next WAL write fails (EFBIG); restarted with space",
        seed=19,
    ),
)

QUORUM = ("quorum-3", "quorum-5")


def bounded(name: str) -> Scenario:
    for s in BOUNDED:
        if s.name == name:
            return s
    raise KeyError(name)


def random_scenario(seed: int) -> Scenario:
    """A whole schedule drawn from `seed` (what `make soak` runs)."""
    rng = random.Random(f"schedule/{seed}")
    members = rng.choice((3, 3, 5))
    episodes: list[tuple[str, ...]] = []
    for _ in range(rng.randint(3, 8)):
        kind = rng.choice(KINDS)
        if kind in COMBINABLE and rng.random() < 0.25:
            second = rng.choice(sorted(COMBINABLE - {kind}))
            # Two faults at once may take a majority down for a while: liveness returns
            # when they heal, and safety must hold throughout.
            episodes.append((kind, second))
        else:
            episodes.append((kind,))
    return Scenario(
        "random",
        members,
        tuple(episodes),
        "a random schedule (make soak)",
        seed=seed,
        hold_s=(0.5, 3.0),
        deadline_s=60.0 + 45.0 * len(episodes),
    )


def scenario_for(name: str, seed: int) -> Scenario:
    if name == "random":
        return random_scenario(seed)
    return bounded(name)
