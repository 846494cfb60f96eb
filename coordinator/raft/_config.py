"""What a Raft node is told when it is made: its id, its timing and batching limits, and the
two things it must never take from the world itself, randomness and a logger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class RandomSource(Protocol):
    """The slice of `random.Random` the core uses; inject one seeded per node."""

    def randrange(self, start: int, stop: int, /) -> int: ...


class Logger(Protocol):
    def debug(self, msg: str, /, *args: object) -> None: ...

    def info(self, msg: str, /, *args: object) -> None: ...

    def warning(self, msg: str, /, *args: object) -> None: ...


class NullLogger:
    def debug(self, msg: str, /, *args: object) -> None:
        pass

    def info(self, msg: str, /, *args: object) -> None:
        pass

    def warning(self, msg: str, /, *args: object) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Config:
    id: int
    rng: RandomSource
    election_timeout_ticks: int = 10
    """Followers wait a random [T, 2T) ticks without a leader before campaigning."""
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 1 << 20
    """Upper bound on the entries carried by one APP (batching)."""
    max_inflight_msgs: int = 256
    """Unacknowledged APPs per follower in REPLICATE state (pipelining window)."""
    max_apply_bytes: int | None = 8 << 20
    """Upper bound on the committed entries handed out by one Ready."""
    snapshot_chunk_bytes: int = 1 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    lazy_commit: bool = False
    """A leader whose commit index advances does not send an append to every follower just
    to say so: the next append or heartbeat carries it, or the runtime calls `flush_commit`.
    Under a steady stream of writes the next append is due within a client round trip
    anyway, and each announcement costs every follower a message and an answer. Safety is
    the same either way: when followers learn the commit index is a matter of liveness."""
    logger: Logger = field(default_factory=NullLogger)

    def validate(self) -> None:
        if self.id <= 0:
            raise ValueError("Config.id must be a positive integer")
        if self.heartbeat_ticks <= 0:
            raise ValueError("Config.heartbeat_ticks must be positive")
        if self.election_timeout_ticks <= self.heartbeat_ticks:
            raise ValueError("Config.election_timeout_ticks must exceed heartbeat_ticks")
        if self.max_inflight_msgs <= 0 or self.snapshot_chunk_bytes <= 0:
            raise ValueError("Config.max_inflight_msgs and snapshot_chunk_bytes must be positive")
