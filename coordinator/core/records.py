"""What the member core takes and gives: its configuration, the Protocols of what it owns,
and the records it hands its driver (completions, notices, background work)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from coordinator.fsm import Applied
from coordinator.raft import ConfState, Entry, LogStorage, RaftError, Snapshot, SnapshotData

from .lease_reads import ReadMode
from .ready import Wal


class DurableLog(Wal, LogStorage, Protocol):
    """The member's log: durable writes (`Wal`) and Raft's read side (`LogStorage`) in one.
    The methods below write to disk like `Wal.save`: a driver may run them on another thread,
    provided nothing else touches the log meanwhile (see `DiskWork`)."""

    def create_snapshot(self, index: int, conf: ConfState, data: SnapshotData) -> Snapshot: ...

    def compact(self, index: int) -> int | None: ...

    def rotate_dek(self) -> int: ...

    def retire_keys(self) -> list[int]: ...


class Machine(Protocol):
    """The replicated state machine as the core uses it (`coordinator.fsm.StateMachine`).

    Concurrency contract: `apply` and `restore` only from the core, in log order; the
    function `snapshot_later` returns may run on another thread while `apply` goes on."""

    @property
    def applied_index(self) -> int: ...

    def apply(self, entry: Entry) -> Applied: ...

    def restore(self, data: SnapshotData) -> None: ...

    def snapshot_later(self) -> Callable[[], SnapshotData]: ...

    def leases(self) -> tuple[int, ...]: ...

    @property
    def applied_term(self) -> int: ...

    def lease_ttls(self) -> list[tuple[int, int]]: ...

    def lock_delays_pending(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class CoreConfig:
    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_every_entries: int = 10_000
    """Snapshot after this many applied entries, plus up to half again (drawn per snapshot,
    so that members do not all snapshot at one index)."""
    snapshot_keep_entries: int = 1_000
    """Entries kept below a snapshot so slightly lagging followers need no snapshot."""
    lease_check_s: float = 0.5
    commit_flush_s: float | None = 0.002
    """A leader tells its followers a new commit index with its next append, or after this
    long without one (see `Config.lazy_commit`). None: at once, with an append of its own."""
    read_mode: ReadMode = ReadMode.BARRIER
    """How a leader confirms a read: a ReadIndex barrier, or its lease (`core/lease_reads.py`;
    every member must run with the same mode)."""
    tick_s: float = 0.1
    """The driver's tick length, which lease reads convert ticks to the clock with."""


class ProposalLostError(RaftError):
    """The proposal's fate is not ours to report: another leader overwrote it, or we lost
    leadership before it applied. Retrying with the same session is always safe."""


class StoppedError(RaftError):
    """The member is shutting down."""


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """What a data key rotation did."""

    key_id: int
    """The new data key's id: everything written from the rotation on is sealed under it."""
    snapshot_index: int
    """The snapshot sealed under the new key, up to which the log was compacted."""
    retired: tuple[int, ...]
    """Key ids dropped from the ring (nothing on disk needs them any more)."""


@dataclass(frozen=True, slots=True)
class Completed:
    """The outcome of a request the core gave an id to: exactly one per id, and only once it
    is final (a proposal's once its entry applied or it is known lost; a read's once the
    state machine reached the confirmed read index)."""

    id: int
    value: Applied | int | KeyRotation | None = None
    """`Applied` for a proposal, the read index for a read, `KeyRotation` for a rotation."""
    error: RaftError | None = None


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """Entries just applied, in log order (the state machine reflects them)."""

    applied: tuple[Applied, ...]


@dataclass(frozen=True, slots=True)
class Restored:
    """The state machine was replaced by a snapshot."""


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """The leader this member knows of changed (0: none known)."""

    leader: int


Notice = AppliedBatch | Restored | LeaderChanged


@dataclass(slots=True)
class SnapshotJob:
    """An image to encode off the core's thread (`run` may go on a worker thread while the
    core keeps applying); hand it back with `MemberCore.snapshot_encoded`."""

    index: int
    conf: ConfState
    encode: Callable[[], SnapshotData]
    data: SnapshotData | None = None

    def run(self) -> None:
        self.data = self.encode()


class DiskWork(Protocol):
    """A write of the core's that touches only the durable log: a driver runs `run` where it
    likes (a disk thread), with the log touched by nothing else and the node not stepped
    meanwhile, then hands it back with `MemberCore.disk_done`."""

    def run(self) -> None: ...


@dataclass(slots=True)
class KeySwitch:
    """Seal everything from the next write on under a new data key."""

    storage: DurableLog
    rotation: int
    """The rotation's request id."""
    key_id: int = 0
    last: int = 0
    """The last index sealed under older keys."""

    def run(self) -> None:
        self.key_id = self.storage.rotate_dek()
        self.last = self.storage.last_index()


@dataclass(slots=True)
class SnapshotWrite:
    """Write `image` as the snapshot at `index` (if newer than `current`), compact the log up
    to `compact_to` and retire the data keys nothing needs any more."""

    storage: DurableLog
    current: int
    index: int
    image: tuple[ConfState, SnapshotData] | None
    compact_to: int
    rotations: Sequence[int] = ()
    """Rotations this write completes."""
    retired: list[int] = field(default_factory=list)

    def run(self) -> None:
        if self.index > self.current and self.image is not None:
            self.storage.create_snapshot(self.index, *self.image)
        self.storage.compact(self.compact_to)
        self.retired = self.storage.retire_keys()
