"""ReadIndex (thesis §6.4): the leader's side of a linearizable read (`_readonly` keeps the
pending reads).

A read is stamped with the commit index, then confirmed by a heartbeat round that a quorum
answers; a follower forwards its reads to the leader and gets the stamped index back. A new
leader stamps nothing until it has committed an entry of its own term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _quorum as quorum
from ._readonly import PendingRead
from .errors import NotLeaderError
from .messages import NONE, Message, MessageType, ReadState, Role

if TYPE_CHECKING:
    from ._raft import Raft

MT = MessageType


def read_index(self: Raft, context: int) -> None:
    """Ask for a linearizable read point; a ReadState with `context` comes out later."""
    if self.role is Role.LEADER:
        self._handle_read_request(context, self.id)
    elif self.lead != NONE:
        self._send(
            Message(MT.READ_INDEX, to=self.lead, frm=self.id, term=self.term, context=context)
        )
    else:
        raise NotLeaderError(NONE, "a read")


def _handle_read_request(self: Raft, context: int, requester: int) -> None:
    if self.log.term(self.log.committed) != self.term:
        self.read_only.awaiting_commit.append((context, requester))
        return
    index = self.log.committed
    if self.conf.voters == {self.id}:
        self._answer_read(PendingRead(0, index, context, requester))
        return
    seq = self.read_only.add(index, context, requester)
    self._bcast_heartbeat(seq)


def _release_reads(self: Raft) -> None:
    acks = {node: pr.read_ack for node, pr in self.prs.items()}
    acks[self.id] = self.read_only.seq
    confirmed = quorum.committed_index(self.conf.voters, acks)
    for read in self.read_only.release_to(confirmed):
        self._answer_read(read)


def _answer_read(self: Raft, read: PendingRead) -> None:
    if read.requester == self.id:
        self.read_states.append(ReadState(read.index, read.context))
    else:
        self._send(
            Message(
                MT.READ_INDEX_RESP,
                to=read.requester,
                frm=self.id,
                term=self.term,
                index=read.index,
                context=read.context,
            )
        )


def _on_first_commit_in_term(self: Raft) -> None:
    waiting, self.read_only.awaiting_commit = self.read_only.awaiting_commit, []
    for context, requester in waiting:
        self._handle_read_request(context, requester)
