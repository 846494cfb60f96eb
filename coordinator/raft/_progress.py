"""What the leader knows of each follower's log, and how it feeds it.

A follower is in one of three states:
- PROBE: we do not know where its log matches ours. Send one APP per heartbeat interval and
  wait for the answer (a reject walks `next` back using the follower's hint).
- REPLICATE: the logs match up to `match`; stream APPs optimistically (pipelining), bumping
  `next` on send, with at most `max_inflight` unacknowledged messages in the window.
- SNAPSHOT: the entries it needs are compacted; send the snapshot in chunks, one in flight
  at a time, and go back to PROBE once the follower reports it installed.

Invariants: 0 <= match < next; in REPLICATE, every inflight index is in (match, next).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from .messages import Snapshot


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Inflights:
    """Last index of each APP sent but not yet acknowledged, oldest first (bounded)."""

    capacity: int
    items: deque[int] = field(default_factory=deque)

    def add(self, last_index: int) -> None:
        if self.full():
            raise AssertionError("inflight window overflow")
        self.items.append(last_index)

    def free_to(self, index: int) -> None:
        while self.items and self.items[0] <= index:
            self.items.popleft()

    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def reset(self) -> None:
        self.items.clear()


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    inflights: Inflights
    learner: bool = False
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    """PROBE: an APP is out and we wait for its answer (or the next heartbeat)."""
    recent_active: bool = False
    """Heard from since the last CheckQuorum round."""
    snapshot: Snapshot | None = None
    """SNAPSHOT: the image being sent; `snapshot_offset` bytes of it are acknowledged."""
    snapshot_offset: int = 0
    snapshot_sent: bool = False
    read_ack: int = 0
    """Newest ReadIndex sequence this follower echoed in a heartbeat response (this term)."""
    commit_sent: int = 0
    """Highest commit index sent to this follower in this term (see `Config.lazy_commit`)."""

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT and self.snapshot is not None:
            # The follower installed the snapshot: it holds everything up to its index.
            self.next = max(self.match + 1, self.snapshot.meta.index + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snap: Snapshot) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.snapshot = snap

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.snapshot = None
        self.snapshot_offset = 0
        self.snapshot_sent = False
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """An APP up to `index` was accepted. Returns whether `match` moved."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """An APP probing at `rejected` was refused; the follower's log may match at most at
        `match_hint`. Returns False if the rejection is stale (already superseded)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # out-of-order answer to something already settled
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int, count: int) -> None:
        if self.state is ProgressState.REPLICATE:
            if count > 0:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
