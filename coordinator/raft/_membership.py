"""The configuration in force, and proposing a change to it (see `_confchange` for the rules).

Every node uses the newest configuration in its log, committed or not; so appending a CONF
entry changes it at once, and a new leader truncating that entry away changes it back. The
history of configurations still in the log is kept for exactly that roll-back, and folded
into the snapshot's as the log is compacted. A leader whose own removal commits hands over
to the most up-to-date voter and steps down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._confchange import ConfChange, ConfChangeType, apply_change
from ._progress import Inflights, Progress
from .errors import ConfChangeError, NotLeaderError, ProposalDroppedError
from .messages import NONE, ConfState, Entry, EntryKind, Role

if TYPE_CHECKING:
    from ._raft import Raft


def _newest_conf(self: Raft) -> ConfState:
    return self.conf_history[-1][2] if self.conf_history else self.base_conf


def _record_confs(self: Raft, entries: list[Entry] | tuple[Entry, ...]) -> None:
    newest = self.conf_history[-1][0] if self.conf_history else 0
    for e in entries:
        if e.kind is EntryKind.CONF and e.index > newest:
            self.conf_history.append((e.index, e.term, ConfState.decode(e.data)))


def _after_log_change(self: Raft, appended: list[Entry] | tuple[Entry, ...]) -> None:
    """Keep the configuration equal to the newest CONF entry in the log."""
    hist = self.conf_history
    while hist and self.log.term(hist[-1][0]) != hist[-1][1]:
        hist.pop()  # that entry was truncated away by a new leader
    self._record_confs(appended)
    conf = self._newest_conf()
    if conf != self.conf:
        self.conf = conf
        self._sync_progress()


def _sync_progress(self: Raft) -> None:
    last = self.log.last_index()
    members = self.conf.members
    for node in list(self.prs):
        if node not in members:
            del self.prs[node]
    for node in members:
        pr = self.prs.get(node)
        if pr is None:
            pr = Progress(0, last + 1, Inflights(self.cfg.max_inflight_msgs))
            if node == self.id:
                pr.match = last
            self.prs[node] = pr
        pr.learner = node in self.conf.learners
    if self.lead_transferee != NONE and self.lead_transferee not in self.conf.voters:
        self.lead_transferee = NONE


def promotable(self: Raft) -> bool:
    return self.id in self.conf.voters


def pending_conf_index(self: Raft) -> int:
    return self.conf_history[-1][0] if self.conf_history else 0


def compact_conf_history(self: Raft) -> None:
    """Fold configurations below the log's start into the base (bounded memory)."""
    first = self.log.first_index()
    while len(self.conf_history) > 1 and self.conf_history[1][0] < first:
        self.conf_history.pop(0)
    if self.conf_history and self.conf_history[0][0] < first:
        self.base_conf = self.conf_history.pop(0)[2]


def propose_conf_change(self: Raft, cc: ConfChange) -> tuple[int, int]:
    if self.role is not Role.LEADER:
        raise NotLeaderError(self.lead, "a membership change")
    if self.log.term(self.log.committed) != self.term:
        raise ProposalDroppedError(
            "the new leader has not committed an entry in its term yet; retry shortly"
        )
    if self.pending_conf_index() > self.log.committed:
        raise ProposalDroppedError(
            "another membership change is still uncommitted; retry when it commits"
        )
    new = apply_change(self.conf, cc)
    if cc.type is ConfChangeType.PROMOTE:
        pr = self.prs[cc.node_id]
        if pr.match < self.log.committed:
            raise ConfChangeError(
                f"learner {cc.node_id} has not caught up (match {pr.match}, "
                f"commit {self.log.committed}); promote it once it has"
            )
    if self.lead_transferee != NONE:
        raise ProposalDroppedError("a leadership transfer is in progress; retry shortly")
    index = self.log.last_index() + 1
    self._append([Entry(0, 0, EntryKind.CONF, new.encode())])
    self._bcast_append()
    return index, self.term


def _step_down_after_removal(self: Raft) -> None:
    """Our own removal committed: hand over to the most up-to-date voter at once."""
    self._bcast_append()  # tell followers the commit index first
    best = max(
        (n for n in self.conf.voters if n in self.prs),
        key=lambda n: (self.prs[n].match, -n),
        default=NONE,
    )
    if best != NONE and self.prs[best].match == self.log.last_index():
        self._send_timeout_now(best)
    self.cfg.logger.info("leader %d removed from the configuration; stepping down", self.id)
    self._become_follower(self.term, NONE)
