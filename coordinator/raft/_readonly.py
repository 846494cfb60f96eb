"""ReadIndex bookkeeping (Raft thesis §6.4): linearizable reads without writing the log.

The leader stamps each read with its commit index and a sequence number, then sends a
heartbeat carrying the newest sequence. A follower echoes the sequence back; once a quorum
has echoed sequence s, the leader was still leader when every read up to s arrived, so each
of those reads may be served as soon as the state machine has applied its stamped index.

One heartbeat round confirms a whole batch of reads, and a read never waits for a log write.
A new leader cannot stamp reads until it has committed an entry of its own term (before
that it does not know the true commit index), so those reads wait in `awaiting_commit`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PendingRead:
    seq: int
    index: int
    context: int
    requester: int
    """The node that asked: the leader itself, or a follower that forwarded READ_INDEX."""


@dataclass(slots=True)
class ReadOnly:
    seq: int = 0
    """Newest sequence handed out in this term; the leader counts as having acked it."""
    pending: deque[PendingRead] = field(default_factory=deque)
    awaiting_commit: list[tuple[int, int]] = field(default_factory=list)
    """(context, requester) received before this term's first commit."""

    def add(self, index: int, context: int, requester: int) -> int:
        self.seq += 1
        self.pending.append(PendingRead(self.seq, index, context, requester))
        return self.seq

    def release_to(self, seq: int) -> list[PendingRead]:
        """Reads confirmed by a quorum having acked sequence `seq`."""
        out: list[PendingRead] = []
        while self.pending and self.pending[0].seq <= seq:
            out.append(self.pending.popleft())
        return out
