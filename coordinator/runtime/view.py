"""`RaftView`: what the server reads of a running member's Raft loop, and nothing else.

The gRPC services need a member's id, the leader it knows, the term, the configuration, how
far it has applied, committed and snapshotted, when it last heard from each member, the
election timeout and the wall clock the leader stamps commands with. They get those from
this one read-only object instead of reaching into `RaftLoop` and its `RawNode`, so the loop
can change inside (and the Raft core move) without the server noticing, and a reader of the
server sees in one place everything it depends on. Writes do not go through here: they go
through the loop's own API (`submit`, `change_membership`, `read_barrier_future`,
`transfer_leader`, `rotate_data_key`), and the state machine's data is read from
`RaftView.fsm` after a read barrier. One exception, named as such: `lessor`, the leader's
in-memory lease renewals, which the lease service renews into after a barrier (renewals are
not log entries; `fsm/lessor.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.fsm import Lessor, Renewal, StateMachine
from coordinator.raft import ConfState, SnapshotMeta, Status

from .loop import RaftLoop


class RaftView:
    """A read-only view of one `RaftLoop`; every read is of the loop's state right now."""

    __slots__ = ("_loop",)

    def __init__(self, loop: RaftLoop) -> None:
        self._loop = loop

    @property
    def member_id(self) -> int:
        return self._loop.cfg.id

    @property
    def fsm(self) -> StateMachine:
        """The replicated state machine (read it after a read barrier for linearizable reads;
        only the loop applies to it)."""
        return self._loop.fsm

    def status(self) -> Status:
        """Everything at once (role, term, commit, applied, log bounds, configuration, and on
        the leader its peers' progress); the properties below are the cheap single reads."""
        return self._loop.status()

    @property
    def leader(self) -> int:
        """The leader this member knows (0: none)."""
        return self._loop.leader

    @property
    def is_leader(self) -> bool:
        return self._loop.is_leader

    @property
    def term(self) -> int:
        return self._loop.term

    def term_at(self, index: int) -> int:
        """The term of the log entry at `index` (0 if compacted away or past the end)."""
        return self._loop.term_at(index)

    @property
    def conf(self) -> ConfState:
        """The configuration in force: the newest one in the log, committed or not."""
        return self._loop.conf

    @property
    def applied_conf(self) -> ConfState:
        """The configuration as of the applied index (what a snapshot taken now records)."""
        return self._loop.applied_conf

    @property
    def applied_index(self) -> int:
        return self._loop.fsm.applied_index

    @property
    def commit_index(self) -> int:
        return self._loop.status().commit

    @property
    def snapshot(self) -> SnapshotMeta:
        """The newest snapshot on disk: its index (the log starts after it), term and
        configuration."""
        return self._loop.storage.snapshot().meta

    @property
    def stopped(self) -> bool:
        return self._loop.stopped

    @property
    def election_timeout_s(self) -> float:
        """The base election timeout (a follower waits between this and twice this)."""
        return self._loop.election_timeout_s

    def last_heard_s(self, member: int) -> float | None:
        """Seconds since a message from `member` last arrived (None: never; 0 for itself)."""
        return self._loop.last_heard_s(member)

    def leaderless_for_s(self) -> float:
        """How long this member has known no leader (0 while it knows one)."""
        return self._loop.leaderless_for_s()

    def wall_ms(self) -> int:
        """The wall clock the leader stamps commands with (`runtime/clock.py`)."""
        return self._loop.clock.wall_ms()

    def monotonic_ms(self) -> int:
        """The member's monotonic clock in milliseconds (the lessor's time base)."""
        return int(self._loop.clock.monotonic_s() * 1000)

    def renew_leases(self, asks: Sequence[tuple[Sequence[int], int]]) -> list[Renewal] | None:
        """Lease renewals (ids that arrived together, their arrival `monotonic_ms`) a read
        barrier requested after all of them arrived has confirmed: the lessor's verdicts, one
        per id in order, or None if this member no longer leads (`MemberCore.renew_leases`,
        which the simulator calls too)."""
        return self._loop.core.renew_leases(asks)

    @property
    def lessor(self) -> Lessor:
        """The leader's lease renewals, kept in memory (the one thing here that is written:
        by the lease service, after a read barrier; see the module doc)."""
        return self._loop.lessor
