"""The Raft protocol proper: one node's state and its reaction to every input.

All inputs funnel through `step()`. It first normalizes the message's term (§5.1: a higher
term turns us into a follower; a lower one is answered or ignored), then handles the
messages every role treats alike (votes), and then hands over to the role's own handler,
which `_become_*` swaps. Ticks become local messages (HUP, BEAT, CHECK_QUORUM) that take the
same path, so there is exactly one way for anything to happen.

Outputs accumulate in `msgs` and `read_states` and in the log's unstable tail; `RawNode`
packages them into a `Ready` for the caller, which persists before it sends (see
`coordinator.runtime.driver.handle_ready`).

The node never reads a clock, a socket, a file or a global random source: time arrives as
`tick()` calls, randomness from `Config.rng`.

This module holds the node's state, the funnel, the ticks and the role changes. What each
part of the protocol does with a message lives in a module of its own (`_elections`,
`_replication`, `_snapshot_transfer`, `_read_index`, `_membership`, `_leadership_transfer`,
`_leader_lease`), written as functions that take the node as `self` and bound into `Raft`
below as its methods. Methods rather than helpers called with the state: there is still one
object with one set of fields, a call from one part to another costs a method call as
before, and a subclass can replace any one of them (the simulator's mutants do).
"""

from __future__ import annotations

from collections.abc import Callable

from . import (
    _elections,
    _leader_lease,
    _leadership_transfer,
    _membership,
    _read_index,
    _replication,
    _snapshot_transfer,
)
from ._config import Config
from ._log import RaftLog
from ._progress import Progress, ProgressState
from ._readonly import ReadOnly
from ._snapshot_transfer import IncomingSnapshot
from .messages import NONE, ConfState, Entry, Message, MessageType, ReadState, Role
from .storage import LogStorage

MT = MessageType


class Raft:
    def __init__(self, config: Config, storage: LogStorage) -> None:
        config.validate()
        self.cfg = config
        self.id = config.id
        self.log = RaftLog(storage)
        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_timeout_ticks
        self.lead_transferee = NONE
        self.read_only = ReadOnly()
        self.incoming_snapshot: IncomingSnapshot | None = None
        self._step_role: Callable[[Message], None] = self._step_follower

        hs, snap_conf = storage.initial_state()
        # Configurations in force: the snapshot's, then one per CONF entry in the log
        # (index, term, conf), newest last. Truncating the log rolls them back.
        self.base_conf = snap_conf
        self.conf_history: list[tuple[int, int, ConfState]] = []
        first, last = storage.first_index(), storage.last_index()
        if last >= first:
            self._record_confs(storage.entries(first, last + 1))
        self.conf = self._newest_conf()
        if hs.commit:
            self.log.commit_to(hs.commit)
        self.term, self.vote = hs.term, hs.vote
        self._sync_progress()
        self._become_follower(self.term, NONE)

    # ------------------------------------------------------------------ the parts

    # Elections and votes.
    _hup = _elections._hup
    _campaign = _elections._campaign
    _poll = _elections._poll
    _handle_vote_request = _elections._handle_vote_request
    _can_vote = _elections._can_vote
    _log_ok_for_vote = _elections._log_ok_for_vote
    campaign = _elections.campaign
    peer_unreachable = _elections.peer_unreachable

    # Log replication and the commit rule.
    propose = _replication.propose
    _append = _replication._append
    _send_append = _replication._send_append
    _bcast_append = _replication._bcast_append
    _bcast_heartbeat = _replication._bcast_heartbeat
    _handle_append_response = _replication._handle_append_response
    _quorum_index = _replication._quorum_index
    _countable = _replication._countable
    _maybe_commit = _replication._maybe_commit
    _lacks_commit = _replication._lacks_commit
    commit_unsent = _replication.commit_unsent
    flush_commit = _replication.flush_commit
    _handle_append = _replication._handle_append

    # Snapshots sent in chunks to a follower that is too far behind.
    _send_snapshot_chunk = _snapshot_transfer._send_snapshot_chunk
    _handle_snapshot_response = _snapshot_transfer._handle_snapshot_response
    _handle_snapshot_chunk = _snapshot_transfer._handle_snapshot_chunk
    _ask_for_chunk = _snapshot_transfer._ask_for_chunk
    restore = _snapshot_transfer.restore

    # ReadIndex.
    read_index = _read_index.read_index
    _handle_read_request = _read_index._handle_read_request
    _release_reads = _read_index._release_reads
    _answer_read = _read_index._answer_read
    _on_first_commit_in_term = _read_index._on_first_commit_in_term

    # Membership: the configuration in force, and changing it.
    _newest_conf = _membership._newest_conf
    _record_confs = _membership._record_confs
    _after_log_change = _membership._after_log_change
    _sync_progress = _membership._sync_progress
    promotable = _membership.promotable
    pending_conf_index = _membership.pending_conf_index
    compact_conf_history = _membership.compact_conf_history
    propose_conf_change = _membership.propose_conf_change
    _step_down_after_removal = _membership._step_down_after_removal

    # Leadership transfer.
    transfer_leader = _leadership_transfer.transfer_leader
    _send_timeout_now = _leadership_transfer._send_timeout_now
    _handle_timeout_now = _leadership_transfer._handle_timeout_now

    # CheckQuorum and the leader lease.
    _in_lease = _leader_lease._in_lease
    _check_quorum = _leader_lease._check_quorum

    # ------------------------------------------------------------------ role changes

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_timeout_ticks + self.cfg.rng.randrange(
            0, self.cfg.election_timeout_ticks
        )
        self.lead_transferee = NONE
        self.votes = {}
        self.read_only = ReadOnly()
        last = self.log.last_index()
        for node, pr in self.prs.items():
            pr.match = last if node == self.id else 0
            pr.next = last + 1
            pr.recent_active = node == self.id
            pr.read_ack = 0
            pr.commit_sent = 0
            pr.become_probe()
            pr.next = last + 1

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self._step_role = self._step_follower

    def _become_pre_candidate(self) -> None:
        # Term and vote stay: a pre-candidate disturbs nobody until it knows it could win.
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        self._step_role = self._step_candidate

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._step_role = self._step_candidate

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._step_role = self._step_leader
        own = self.prs.get(self.id)
        if own is not None:
            own.become_replicate()  # our own log trivially matches
        self.cfg.logger.info("node %d became leader at term %d", self.id, self.term)
        # An empty entry of our own term: committing it commits everything before it
        # (§5.4.2) and tells us the true commit index for ReadIndex.
        self._append([Entry(0, 0)])
        self._bcast_append()

    # ------------------------------------------------------------------ ticks

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, to=self.id, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_timeout_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, to=self.id, frm=self.id))
            if self.role is Role.LEADER and self.lead_transferee != NONE:
                self.cfg.logger.info("leadership transfer to %d timed out", self.lead_transferee)
                self.lead_transferee = NONE
        if self.role is not Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, to=self.id, frm=self.id))

    # ------------------------------------------------------------------ the funnel

    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if (m.type is MT.VOTE or m.type is MT.PRE_VOTE) and not m.force and self._in_lease():
                # We heard from a live leader recently: a node that cannot hear it must not
                # depose it (leader stickiness, thesis §9.6).
                return
            if m.type is MT.PRE_VOTE or (m.type is MT.PRE_VOTE_RESP and not m.reject):
                pass  # a PreVote never changes terms; the winner bumps its own
            elif m.type is MT.APP or m.type is MT.HEARTBEAT or m.type is MT.SNAP:
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and (
                m.type is MT.HEARTBEAT or m.type is MT.APP
            ):
                # A stale leader (e.g. back from a partition) learns our term and steps
                # down; without this it could never hear of the new term under PreVote.
                self._send(Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term))
            elif m.type is MT.PRE_VOTE:
                self._send(
                    Message(MT.PRE_VOTE_RESP, to=m.frm, frm=self.id, term=self.term, reject=True)
                )
            return

        match m.type:
            case MT.HUP:
                self._hup()
            case MT.VOTE | MT.PRE_VOTE:
                self._handle_vote_request(m)
            case _:
                self._step_role(m)

    # ------------------------------------------------------------------ leader

    def _step_leader(self, m: Message) -> None:
        match m.type:
            case MT.BEAT:
                self._bcast_heartbeat()
                return
            case MT.CHECK_QUORUM:
                self._check_quorum()
                return
            case MT.READ_INDEX:
                self._handle_read_request(m.context, m.frm)
                return
            case _:
                pass

        pr = self.prs.get(m.frm)
        if pr is None:
            return  # not (or no longer) a member
        match m.type:
            case MT.APP_RESP:
                pr.recent_active = True
                self._handle_append_response(m, pr)
            case MT.HEARTBEAT_RESP:
                pr.recent_active = True
                pr.probe_sent = False
                if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                    # An APP was probably lost; free one slot so replication can resume
                    # (the follower will reject any gap and we fall back to probing).
                    pr.inflights.items.popleft()
                if pr.state is ProgressState.SNAPSHOT:
                    pr.snapshot_sent = False  # resend the unacknowledged chunk
                    self._send_snapshot_chunk(m.frm, pr)
                elif pr.match < self.log.last_index():
                    self._send_append(m.frm)
                if m.context > pr.read_ack:
                    pr.read_ack = m.context
                    self._release_reads()
            case MT.SNAP_RESP:
                pr.recent_active = True
                self._handle_snapshot_response(m, pr)
            case _:
                pass

    # ------------------------------------------------------------------ candidates

    def _step_candidate(self, m: Message) -> None:
        match m.type:
            case MT.APP | MT.HEARTBEAT | MT.SNAP:
                # Someone won this term (§5.2).
                self._become_follower(m.term, m.frm)
                self._step_follower(m)
            case MT.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE:
                self.votes.setdefault(m.frm, not m.reject)
                self._poll()
            case MT.VOTE_RESP if self.role is Role.CANDIDATE:
                self.votes.setdefault(m.frm, not m.reject)
                self._poll()
            case _:
                pass

    # ------------------------------------------------------------------ followers

    def _step_follower(self, m: Message) -> None:
        match m.type:
            case MT.APP:
                self.election_elapsed = 0
                self.lead = m.frm
                self._handle_append(m)
            case MT.HEARTBEAT:
                self.election_elapsed = 0
                self.lead = m.frm
                self.log.commit_to(m.commit)
                self._send(
                    Message(
                        MT.HEARTBEAT_RESP, to=m.frm, frm=self.id, term=self.term, context=m.context
                    )
                )
            case MT.SNAP:
                self.election_elapsed = 0
                self.lead = m.frm
                self._handle_snapshot_chunk(m)
            case MT.TIMEOUT_NOW:
                self._handle_timeout_now(m)
            case MT.READ_INDEX_RESP:
                if not m.reject:
                    self.read_states.append(ReadState(m.index, m.context))
            case _:
                pass

    def _send(self, m: Message) -> None:
        self.msgs.append(m)
