"""Leadership transfer (thesis §3.10): hand leadership to a chosen voter without an outage.

The leader stops taking proposals, brings the target's log up to date, then tells it to
campaign at once (TIMEOUT_NOW, whose votes are forced past other nodes' leader lease). If
the target has not taken over within one election timeout, the leader gives up and carries
on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._elections import CampaignKind
from .errors import ConfChangeError, NotLeaderError
from .messages import Message, MessageType, Role

if TYPE_CHECKING:
    from ._raft import Raft

MT = MessageType


def transfer_leader(self: Raft, target: int) -> None:
    if self.role is not Role.LEADER:
        raise NotLeaderError(self.lead, "a leadership transfer")
    if target == self.id:
        return
    if target not in self.conf.voters:
        raise ConfChangeError(f"node {target} is not a voter and cannot lead")
    if self.lead_transferee == target:
        return
    self.lead_transferee = target
    self.election_elapsed = 0  # give up after one election timeout
    if self.prs[target].match == self.log.last_index():
        self._send_timeout_now(target)
    else:
        self._send_append(target)  # TIMEOUT_NOW follows once it has caught up


def _send_timeout_now(self: Raft, to: int) -> None:
    """Tell `to`, whose log holds all of ours, to campaign now rather than at its timeout."""
    self._send(Message(MT.TIMEOUT_NOW, to=to, frm=self.id, term=self.term))


def _handle_timeout_now(self: Raft, m: Message) -> None:
    if self.promotable():
        self.cfg.logger.info("node %d campaigning at %d's request", self.id, m.frm)
        self._campaign(CampaignKind.TRANSFER)
