"""Log replication (§5.3) and the commit rule (§5.4.2), from both ends of an APP.

The leader appends proposals to its own log, then sends each follower the entries it lacks,
as far as the follower's `Progress` allows (probing one APP at a time until the follower's
log is known to match, then pipelining up to `max_inflight_msgs`). An entry of the leader's
own term is committed once a majority of voters hold it, and every entry before it with it;
entries of earlier terms are never committed by counting. A follower appends an
APP only if its log holds the entry the APP follows; otherwise it rejects with a hint that
lets the leader skip back a whole term at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _quorum as quorum
from ._progress import Progress, ProgressState
from .errors import NotLeaderError, ProposalDroppedError
from .messages import NONE, Entry, EntryKind, Message, MessageType, Role
from .storage import CompactedError

if TYPE_CHECKING:
    from ._raft import Raft

MT = MessageType


def propose(self: Raft, data: list[bytes]) -> tuple[int, int]:
    """Append entries as leader; returns (first index, term) they were given."""
    if self.role is not Role.LEADER:
        raise NotLeaderError(self.lead, "a proposal")
    if self.lead_transferee != NONE:
        raise ProposalDroppedError(
            f"leadership is being transferred to {self.lead_transferee}; retry shortly"
        )
    if self.id not in self.prs:
        raise ProposalDroppedError("this leader has been removed from the cluster")
    if not all(data):
        raise ValueError("empty proposals are reserved for the leader's no-op entry")
    first = self.log.last_index() + 1
    self._append([Entry(0, 0, EntryKind.NORMAL, d) for d in data])
    self._bcast_append()
    return first, self.term


def _append(self: Raft, entries: list[Entry]) -> None:
    last = self.log.last_index()
    stamped = [Entry(last + 1 + i, self.term, e.kind, e.data) for i, e in enumerate(entries)]
    self.log.append(stamped)
    self._after_log_change(stamped)
    own = self.prs.get(self.id)
    if own is not None:
        own.maybe_update(self.log.last_index())
    self._maybe_commit()


def _send_append(self: Raft, to: int, send_if_empty: bool = True) -> bool:
    pr = self.prs[to]
    if self.role is not Role.LEADER or to == self.id or pr.is_paused():
        return False
    prev_index = pr.next - 1
    prev_term = self.log.term(prev_index)
    entries: list[Entry] = []
    if prev_term == 0 and prev_index != 0:
        compacted = True
    else:
        try:
            entries = self.log.entries_from(pr.next, self.cfg.max_msg_bytes)
            compacted = False
        except CompactedError:
            compacted = True
    if compacted:
        snap = self.log.storage.snapshot()
        if snap.empty:
            return False  # entries not yet in storage; a later Ready will fix this
        pr.become_snapshot(snap)
        self._send_snapshot_chunk(to, pr)
        return False
    if not entries and not send_if_empty:
        return False
    self._send(
        Message(
            MT.APP,
            to=to,
            frm=self.id,
            term=self.term,
            index=prev_index,
            log_term=prev_term,
            entries=tuple(entries),
            commit=self.log.committed,
        )
    )
    pr.sent_entries(entries[-1].index if entries else prev_index, len(entries))
    pr.commit_sent = max(pr.commit_sent, self.log.committed)
    return True


def _bcast_append(self: Raft) -> None:
    for node in self.prs:
        if node != self.id:
            self._send_append(node)


def _bcast_heartbeat(self: Raft, context: int | None = None) -> None:
    ctx = self.read_only.seq if context is None else context
    for node, pr in self.prs.items():
        if node != self.id:
            self._send(
                Message(
                    MT.HEARTBEAT,
                    to=node,
                    frm=self.id,
                    term=self.term,
                    commit=min(pr.match, self.log.committed),
                    context=ctx,
                )
            )
            pr.commit_sent = max(pr.commit_sent, min(pr.match, self.log.committed))


def _handle_append_response(self: Raft, m: Message, pr: Progress) -> None:
    if m.reject:
        probe = m.hint_index
        if m.log_term > 0:
            probe = self.log.find_conflict_by_term(m.hint_index, m.log_term)
        if pr.maybe_decr_to(m.index, probe):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            self._send_append(m.frm)
        return
    was_paused = pr.is_paused()
    if not pr.maybe_update(m.index):
        return
    if pr.state is ProgressState.PROBE:
        pr.become_replicate()
    elif pr.state is ProgressState.SNAPSHOT:
        snap_index = pr.snapshot.meta.index if pr.snapshot is not None else 0
        if pr.match >= snap_index or pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
    else:
        pr.inflights.free_to(m.index)
    committed = self._maybe_commit()
    if self.role is not Role.LEADER:
        return  # our own removal committed and we stepped down
    if committed and not self.cfg.lazy_commit:
        self._bcast_append()
    elif was_paused:
        self._send_append(m.frm)
    while self._send_append(m.frm, send_if_empty=False):
        pass  # keep the pipeline full
    if m.frm == self.lead_transferee and pr.match == self.log.last_index():
        self._send_timeout_now(m.frm)


def _quorum_index(self: Raft) -> int:
    """The largest index a majority of voters hold."""
    match = {node: pr.match for node, pr in self.prs.items()}
    return quorum.committed_index(self.conf.voters, match)


def _countable(self: Raft, index: int) -> bool:
    """§5.4.2: only an entry of the current term is committed by counting replicas."""
    return self.log.term(index) == self.term


def _maybe_commit(self: Raft) -> bool:
    index = self._quorum_index()
    if index <= self.log.committed or not self._countable(index):
        return False
    first_in_term = self.log.term(self.log.committed) != self.term
    self.log.commit_to(index)
    if first_in_term:
        self._on_first_commit_in_term()
    if self.id not in self.conf.voters and self.pending_conf_index() <= index:
        self._step_down_after_removal()
        return False
    return True


def _lacks_commit(self: Raft, node: int, pr: Progress) -> bool:
    """`node` could commit more than it has been told, and may be sent an append."""
    return (
        node != self.id
        and pr.commit_sent < min(self.log.committed, pr.match)
        and not pr.is_paused()
    )


def commit_unsent(self: Raft) -> bool:
    """Leader: some follower could commit more than it has been told (see
    `Config.lazy_commit`)."""
    return self.role is Role.LEADER and any(
        self._lacks_commit(node, pr) for node, pr in self.prs.items()
    )


def flush_commit(self: Raft) -> None:
    """Leader: an append (empty unless entries are due) to every follower that could
    commit more than it has been told."""
    if self.role is Role.LEADER:
        for node, pr in self.prs.items():
            if self._lacks_commit(node, pr):
                self._send_append(node)


def _handle_append(self: Raft, m: Message) -> None:
    if m.index < self.log.committed:
        self._send(
            Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=self.log.committed)
        )
        return
    last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
    if last is not None:
        self._after_log_change(m.entries)
        self._send(Message(MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=last))
        return
    # Fast backtracking: point the leader at the last entry that could possibly match,
    # skipping every entry of a term the leader's log cannot have at that position.
    hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
    self._send(
        Message(
            MT.APP_RESP,
            to=m.frm,
            frm=self.id,
            term=self.term,
            index=m.index,
            reject=True,
            hint_index=hint,
            log_term=self.log.term(hint),
        )
    )
