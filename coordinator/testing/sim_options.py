"""The simulator's swarm options: one seed's cluster size, fault mix and workload."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from coordinator.fsm import CLOCK_RATE_BOUND

MS = 1000  # microseconds per millisecond


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SimOptions:
    """Everything a seed decides; printed with the seed so a run can be understood."""

    seed: int
    voters: int
    spares: int
    tick_us: int
    election_ticks: int
    heartbeat_ticks: int
    delay_min_us: int
    delay_max_us: int
    long_delay_p: float
    drop_p: float
    dup_p: float
    fault_phase_us: int
    nemesis_every_us: int
    faults: tuple[str, ...]
    clients: int
    keys: int
    get_p: float
    cas_p: float
    follower_reads_p: float
    snapshot_every: int
    snapshot_keep: int
    chunk_bytes: int
    max_msg_bytes: int
    max_inflight: int
    client_timeout_us: int
    liveness_bound_us: int = 10_000 * MS
    drain_us: int = 1_500 * MS
    lazy_commit: bool = False
    """Leaders announce commits lazily (`Config.lazy_commit`), flushed a random 0-5 ms
    after a turn leaves one unsent, as the asyncio runtime does after 2 ms."""
    seq_clients: int = 0
    lock_clients: int = 0
    elect_clients: int = 0
    lease_ttl_ms: int = 1000
    stall_p: float = 0.0
    """Per keep-alive due, the chance that a lock or election client pauses past its TTL."""
    lease_check_us: int = 500 * MS
    """How often the leader's lessor is asked for expiries (the runtime's `lease_check_s`)."""
    commit_flush_us: int = 2 * MS
    """With `lazy_commit`: how long a commit index waits for an append to carry it."""
    clock_drift: float = 0.0
    """How far each host's clock rate may be from true time (`sim_clock.py`): each member's
    rate is drawn within +-clock_drift, and the "clock" fault redraws it. Never beyond
    `CLOCK_RATE_BOUND`, the bound the lessor's margin assumes."""
    lease_reads: bool = False
    """Members serve reads on the leader's lease (`core/lease_reads.py`), not a ReadIndex
    barrier: off unless asked for (`--lease-reads`), as in the product."""

    @staticmethod
    def from_seed(seed: int, voters: int | None = None) -> SimOptions:
        r = random.Random(seed)
        n = voters if voters is not None else r.choice((3, 3, 5, 5, 7))
        all_faults = (
            "crash",
            "partition",
            "oneway",
            "flap",
            "isolate_leader",
            "torn",
            "slow_disk",
            "membership",
            "transfer",
            "hint",
        )
        # Swarm testing: each seed turns on a random subset of faults, so that rarely-hit
        # combinations are not drowned out by the common ones.
        faults = tuple(f for f in all_faults if r.random() < 0.6) or (r.choice(all_faults),)
        lo = r.choice((200, 500, 1000, 2000))
        opts = SimOptions(
            seed=seed,
            voters=n,
            spares=2,
            tick_us=10 * MS,
            election_ticks=15,  # randomized timeout 150-300 ms, as in the Raft paper
            heartbeat_ticks=r.choice((2, 3, 5)),
            delay_min_us=lo,
            delay_max_us=lo + r.choice((2, 5, 10, 20)) * MS,
            long_delay_p=r.choice((0.0, 0.01, 0.05)),
            drop_p=r.choice((0.0, 0.01, 0.05, 0.15)),
            dup_p=r.choice((0.0, 0.01, 0.05)),
            fault_phase_us=r.randrange(1500, 4000) * MS,
            nemesis_every_us=r.randrange(80, 400) * MS,
            faults=faults,
            clients=r.randrange(1, 4),
            keys=r.randrange(1, 4),
            get_p=r.choice((0.2, 0.4, 0.7)),
            cas_p=r.choice((0.2, 0.4)),
            follower_reads_p=r.choice((0.0, 0.3)),
            snapshot_every=r.choice((15, 40, 150, 1_000_000)),
            snapshot_keep=r.choice((0, 5, 20)),
            chunk_bytes=r.choice((64, 256, 4096)),
            max_msg_bytes=r.choice((200, 4096, 1 << 20)),
            max_inflight=r.choice((1, 4, 64)),
            client_timeout_us=r.choice((60, 150, 400)) * MS,
            lazy_commit=r.random() < 0.5,  # drawn last: earlier draws stay as they were
            seq_clients=r.randrange(0, 2),
            lock_clients=r.randrange(0, 3),
            elect_clients=r.choice((0, 0, 2)),
            lease_ttl_ms=r.choice((1000, 1500)),
            stall_p=r.choice((0.25, 0.4)),
            lease_check_us=r.choice((100, 250, 500)) * MS,
            commit_flush_us=r.randint(0, 5 * MS),
        )
        # Drawn after everything above, so that each seed's other options stay as they were.
        # Half the seeds put clocks at the edge of the bound, where a missing margin shows.
        drift = r.choice((0.0, CLOCK_RATE_BOUND / 4, CLOCK_RATE_BOUND, CLOCK_RATE_BOUND))
        clock_faults = tuple(f for f in ("clock", "pause") if r.random() < 0.5)
        # Half the seeds check for expiries often, so that a lease ended a few percent of its
        # TTL early is ended before its holder's promise runs out, not a check period later.
        check_us = r.choice((10, 20)) * MS if r.random() < 0.5 else opts.lease_check_us
        return replace(
            opts, clock_drift=drift, faults=opts.faults + clock_faults, lease_check_us=check_us
        )

    def describe(self) -> str:
        d = asdict(self)
        return " ".join(f"{k}={v}" for k, v in d.items())
