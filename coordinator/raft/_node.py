"""RawNode: the core's whole public surface, and the Ready batch it hands to its caller.

The caller's loop is always the same (see `coordinator.runtime.driver.handle_ready`):

    node.tick() / node.step(msg) / node.propose(...) / node.read_index(ctx)
    if node.has_ready():
        rd = node.ready()
        persist rd.snapshot, rd.entries and rd.hard_state (fsync)
        send rd.messages
        apply rd.committed_entries, serve rd.read_states
        node.advance(rd)

Everything in one Ready is produced together, so one fsync covers a whole batch of
proposals (group commit) and one APP can carry many of them (batching). The node is not
thread-safe: one owner drives it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._confchange import ConfChange
from ._config import Config
from ._progress import ProgressState
from ._raft import Raft
from .messages import (
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)
from .storage import LogStorage

_SEND_EARLY = frozenset({MessageType.APP, MessageType.HEARTBEAT})


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None
    """Leader or role changed (None: unchanged)."""
    hard_state: HardState | None
    """Must be persisted before `messages` are sent (None: unchanged)."""
    entries: tuple[Entry, ...]
    """Must be persisted before `messages` are sent; they may overwrite stored ones."""
    snapshot: Snapshot | None
    """Received from the leader: persist it, then restore the state machine from it."""
    committed_entries: tuple[Entry, ...]
    """Apply in order, after persisting the above."""
    messages: tuple[Message, ...]
    """All of them, in order: `early_messages` may be sent before persisting, the rest
    (`late_messages`) only after."""
    read_states: tuple[ReadState, ...]
    leader_may_send_early: bool = False
    """Set on a leader's Ready that does not change its term or vote (see `early_messages`)."""

    @property
    def early_messages(self) -> tuple[Message, ...]:
        """What may be sent before persisting (and should be, to overlap the leader's fsync
        with its followers'): a leader's appends and heartbeats, when the Ready does not
        change its term or vote (thesis §10.2.1). Safe because the leader counts its own log
        towards a commit only through acknowledgements stepped after `advance`, i.e. after
        its own write; if it crashes first, those entries were never committed, and as the
        only leader of its term it never sends different entries for the same (index, term)."""
        if not self.leader_may_send_early:
            return ()
        return tuple(m for m in self.messages if m.type in _SEND_EARLY)

    @property
    def late_messages(self) -> tuple[Message, ...]:
        """What must wait until the Ready's hard state, entries and snapshot are durable."""
        if not self.leader_may_send_early:
            return self.messages
        return tuple(m for m in self.messages if m.type not in _SEND_EARLY)

    @property
    def must_sync(self) -> bool:
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: int
    next: int
    state: ProgressState
    learner: bool
    recent_active: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    term: int
    vote: int
    leader: int
    role: Role
    commit: int
    applied: int
    last_index: int
    first_index: int
    conf: ConfState
    lead_transferee: int
    peers: dict[int, PeerStatus]
    """Only filled in on the leader (others do not know their peers' progress)."""


class RawNode:
    def __init__(self, config: Config, storage: LogStorage) -> None:
        self._raft = Raft(config, storage)
        r = self._raft
        self._prev_hard = HardState(r.term, r.vote, r.log.committed)
        self._prev_soft = SoftState(r.lead, r.role)

    # --- inputs ------------------------------------------------------------------------------

    def tick(self) -> None:
        self._raft.tick()

    def step(self, msg: Message) -> None:
        """Feed a message from a peer. Local-only message types are refused."""
        if msg.term == 0:
            raise ValueError(f"{msg.type.value} is a local message and cannot be stepped in")
        self._raft.step(msg)

    def campaign(self) -> None:
        self._raft.campaign()

    def report_unreachable(self, peer: int) -> None:
        """The transport lost its connection to `peer` (a hint: see `Raft.peer_unreachable`)."""
        self._raft.peer_unreachable(peer)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append one entry as leader. Returns its (index, term): the proposal succeeded iff
        the entry applied at that index has that term. Raises NotLeaderError otherwise."""
        return self._raft.propose([data])

    def propose_batch(self, data: list[bytes]) -> tuple[int, int]:
        """Append several entries at once; returns (first index, term)."""
        return self._raft.propose(data)

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        return self._raft.propose_conf_change(cc)

    def read_index(self, context: int) -> None:
        self._raft.read_index(context)

    def transfer_leader(self, target: int) -> None:
        self._raft.transfer_leader(target)

    def flush_commit(self) -> None:
        """Leader with `Config.lazy_commit`: send the commit index now (an append each) to
        the followers that lack it, rather than with the next append or heartbeat."""
        self._raft.flush_commit()

    @property
    def commit_unsent(self) -> bool:
        """A leader knows a commit index some follower could use and was not sent (with
        `Config.lazy_commit`; see `flush_commit`)."""
        return self._raft.commit_unsent()

    # --- outputs -----------------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self._raft
        log = r.log
        return bool(
            r.msgs
            or r.read_states
            or log.unstable
            or log.pending_snapshot is not None
            or (log.committed > log.applied and log.committed >= log.first_index())
            or HardState(r.term, r.vote, log.committed) != self._prev_hard
            or SoftState(r.lead, r.role) != self._prev_soft
        )

    def ready(self) -> Ready:
        r = self._raft
        log = r.log
        hard = HardState(r.term, r.vote, log.committed)
        soft = SoftState(r.lead, r.role)
        prev = self._prev_hard
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != prev else None,
            entries=tuple(log.unstable),
            snapshot=log.pending_snapshot,
            committed_entries=tuple(log.next_committed(r.cfg.max_apply_bytes)),
            messages=tuple(r.msgs),
            read_states=tuple(r.read_states),
            leader_may_send_early=r.role is Role.LEADER
            and (hard.term, hard.vote) == (prev.term, prev.vote),
        )
        r.msgs = []
        r.read_states = []
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied everything in `rd`."""
        r = self._raft
        log = r.log
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.snapshot is not None:
            log.snapshot_persisted(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
        r.compact_conf_history()

    # --- introspection -----------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._raft.id

    @property
    def role(self) -> Role:
        return self._raft.role

    @property
    def leader(self) -> int:
        return self._raft.lead

    @property
    def term(self) -> int:
        return self._raft.term

    @property
    def conf(self) -> ConfState:
        """The configuration in force: the newest one in the log, committed or not."""
        return self._raft.conf

    def term_at(self, index: int) -> int:
        """The term of our log entry at `index` (0 if compacted away or past the end)."""
        return self._raft.log.term(index)

    def first_index(self) -> int:
        return self._raft.log.first_index()

    def status(self) -> Status:
        r = self._raft
        peers: dict[int, PeerStatus] = {}
        if r.role is Role.LEADER:
            peers = {
                n: PeerStatus(pr.match, pr.next, pr.state, pr.learner, pr.recent_active)
                for n, pr in sorted(r.prs.items())
            }
        return Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            leader=r.lead,
            role=r.role,
            commit=r.log.committed,
            applied=r.log.applied,
            last_index=r.log.last_index(),
            first_index=r.log.first_index(),
            conf=r.conf,
            lead_transferee=r.lead_transferee,
            peers=peers,
        )
