"""SimDisk: a member's durable state under the simulator's crash model.

What a write hands to `save` is durable once `save` returns (that is the `Wal` contract: it
returns after fsync). A crash can strike *during* a save: then only a random prefix of the
records reaches the platter (a torn write), the rest is lost, and the node dies on the spot
without running the rest of `handle_ready`, so it never says anything about the lost part.
Restart rebuilds the node's `MemoryStorage` from exactly what survived.

One relaxation mirrors `DiskWal`: a save that only moves the commit index is not fsynced, so a
crash loses it unless a later synced save carried it to the platter. The simulator takes the
pessimistic view (a crash always loses it), which is the case safety must survive.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from coordinator.raft import ConfState, Entry, HardState, MemoryStorage, Snapshot, SnapshotData


class SimCrash(Exception):
    """The node died in the middle of a write."""


@dataclass
class SimDisk:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)
    """Durable entries after the snapshot, contiguous."""
    unsynced_hard_state: HardState | None = None
    """A commit-only hard state written but not yet fsynced (lost by a crash)."""
    tear_next_write: bool = False
    latency_us: int = 0
    fsyncs: int = 0

    def load(self) -> MemoryStorage:
        self.unsynced_hard_state = None  # the crash that preceded this load lost it
        st = MemoryStorage()
        st.apply_snapshot(self.snapshot)
        st.append(self.entries)
        st.set_hard_state(self.hard_state)
        return st

    def _append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        if not self.entries or entries[0].index <= self.entries[0].index:
            self.entries = list(entries)
            return
        pos = entries[0].index - self.entries[0].index
        if pos > len(self.entries):
            raise AssertionError(f"disk gap: writing {entries[0].index} after {self.entries[-1]}")
        del self.entries[pos:]
        self.entries.extend(entries)

    def compact(self, index: int) -> None:
        """Drop durable entries up to `index` (covered by the durable snapshot)."""
        if index > self.snapshot.meta.index:
            raise AssertionError("compacting past the durable snapshot")
        if self.entries:
            del self.entries[: max(0, index - self.entries[0].index + 1)]


class SimWal:
    """The `Wal` a simulated member writes through: disk first, then its MemoryStorage."""

    def __init__(
        self,
        disk: SimDisk,
        storage: MemoryStorage,
        rng: random.Random,
        on_persist: Callable[[Sequence[Entry]], None],
    ) -> None:
        self.disk = disk
        self.storage = storage
        self.rng = rng
        self.on_persist = on_persist

    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        disk = self.disk
        if (
            not entries
            and hard_state is not None
            and (hard_state.term, hard_state.vote) == (disk.hard_state.term, disk.hard_state.vote)
        ):
            disk.unsynced_hard_state = hard_state
            self.storage.set_hard_state(hard_state)
            return
        disk.fsyncs += 1
        if hard_state is None and disk.unsynced_hard_state is not None:
            hard_state = disk.unsynced_hard_state  # this fsync carries the earlier write too
        disk.unsynced_hard_state = None
        if disk.tear_next_write:
            disk.tear_next_write = False
            keep = self.rng.randrange(len(entries) + 1)
            disk._append(entries[:keep])
            if hard_state is not None and keep == len(entries) and self.rng.random() < 0.5:
                disk.hard_state = hard_state
            raise SimCrash(f"torn write: kept {keep} of {len(entries)} entries")
        self.on_persist(entries)
        disk._append(entries)
        if hard_state is not None:
            disk.hard_state = hard_state
        self.storage.append(entries)
        if hard_state is not None:
            self.storage.set_hard_state(hard_state)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.disk.fsyncs += 1
        self.disk.snapshot = snapshot
        self.disk.entries = []
        self.storage.apply_snapshot(snapshot)


class SimLog(MemoryStorage):
    """The member core's `DurableLog` over a SimDisk: what the node reads, plus the writes the
    core asks for, each reaching the disk under the crash model (`save` through `SimWal`;
    a snapshot the core takes is durable, with its compaction, once `create_snapshot` and
    `compact` return). Data keys are counters: nothing is sealed in the simulator."""

    def __init__(
        self,
        disk: SimDisk,
        rng: random.Random,
        on_persist: Callable[[Sequence[Entry]], None],
    ) -> None:
        super().__init__()
        disk.unsynced_hard_state = None  # the crash that preceded this load lost it
        self.apply_snapshot(disk.snapshot)
        self.append(disk.entries)
        self.set_hard_state(disk.hard_state)
        self.disk = disk
        self._wal = SimWal(disk, self, rng, on_persist)
        self._key_id = 1

    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        self._wal.save(entries, hard_state)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._wal.save_snapshot(snapshot)

    def create_snapshot(self, index: int, conf: ConfState, data: SnapshotData) -> Snapshot:
        snap = super().create_snapshot(index, conf, data)
        self.disk.snapshot = snap
        self.disk.fsyncs += 1
        return snap

    def compact(self, index: int) -> None:
        super().compact(index)
        self.disk.compact(index)

    def rotate_dek(self) -> int:
        self._key_id += 1
        return self._key_id

    def retire_keys(self) -> list[int]:
        return []
