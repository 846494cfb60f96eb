"""MemoryLog: the in-memory twin of the member's `DurableLog` (`storage.DiskWal`).

Everything it is given counts as durable at once (there is no crash to lose it in); data
keys are counters, since nothing is sealed."""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.raft import Entry, HardState, MemoryStorage, Snapshot


class MemoryLog(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.key_id = 1
        self.saves = 0
        """How many `save` and `save_snapshot` calls (tests count the writes)."""

    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        self.saves += 1
        self.append(entries)
        if hard_state is not None:
            self.set_hard_state(hard_state)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.saves += 1
        self.apply_snapshot(snapshot)

    def compact(self, index: int) -> None:
        super().compact(index)

    def rotate_dek(self) -> int:
        self.key_id += 1
        return self.key_id

    def retire_keys(self) -> list[int]:
        return []
