"""Elections (§5.2, §5.4.1) and PreVote (thesis §9.6): campaigning, voting, counting votes.

A campaign starts on a HUP (an election timeout, `campaign()`, or soon after the connection
to the leader is lost) or on the leader's TIMEOUT_NOW in a transfer. Under PreVote a node
first asks whether it could win without disturbing anyone: terms move only once a majority
says yes. Each node grants one vote per term, and only to a candidate whose log is at least
as up to date as its own; that is what makes every elected leader hold every committed entry.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from . import _quorum as quorum
from .messages import NONE, Message, MessageType, Role

if TYPE_CHECKING:
    from ._raft import Raft

MT = MessageType


class CampaignKind(enum.Enum):
    PRE_VOTE = "pre-vote"
    ELECTION = "election"
    TRANSFER = "transfer"


def _hup(self: Raft) -> None:
    if self.role is Role.LEADER or not self.promotable():
        return
    self._campaign(CampaignKind.PRE_VOTE if self.cfg.pre_vote else CampaignKind.ELECTION)


def _campaign(self: Raft, kind: CampaignKind) -> None:
    if kind is CampaignKind.PRE_VOTE:
        self._become_pre_candidate()
        vote_type, term = MT.PRE_VOTE, self.term + 1
    else:
        self._become_candidate()
        vote_type, term = MT.VOTE, self.term
    self.votes[self.id] = True
    if self._poll() is quorum.VoteResult.WON:
        return  # a single-voter cluster wins at once
    last_index, last_term = self.log.last_index(), self.log.last_term()
    for node in sorted(self.conf.voters):
        if node != self.id:
            self._send(
                Message(
                    vote_type,
                    to=node,
                    frm=self.id,
                    term=term,
                    index=last_index,
                    log_term=last_term,
                    force=kind is CampaignKind.TRANSFER,
                )
            )


def _poll(self: Raft) -> quorum.VoteResult:
    result = quorum.vote_result(self.conf.voters, self.votes)
    if result is quorum.VoteResult.WON:
        if self.role is Role.PRE_CANDIDATE:
            self._campaign(CampaignKind.ELECTION)
        else:
            self._become_leader()
    elif result is quorum.VoteResult.LOST:
        self._become_follower(self.term, NONE)
    return result


def _handle_vote_request(self: Raft, m: Message) -> None:
    pre = m.type is MT.PRE_VOTE
    can_vote = self._can_vote(m)
    resp_type = MT.PRE_VOTE_RESP if pre else MT.VOTE_RESP
    if can_vote and self._log_ok_for_vote(m):
        # A granted PreVote answers in the asked-for term so the pre-candidate counts it.
        self._send(Message(resp_type, to=m.frm, frm=self.id, term=m.term))
        if not pre:
            self.election_elapsed = 0
            self.vote = m.frm
    else:
        self._send(Message(resp_type, to=m.frm, frm=self.id, term=self.term, reject=True))


def _can_vote(self: Raft, m: Message) -> bool:
    """One vote per term (§5.2): repeat it to the same candidate, else only if unspent."""
    return (
        self.vote == m.frm
        or (self.vote == NONE and self.lead == NONE)
        or (m.type is MT.PRE_VOTE and m.term > self.term)
    )


def _log_ok_for_vote(self: Raft, m: Message) -> bool:
    """§5.4.1: vote only for a candidate whose log is at least as up-to-date as ours."""
    return self.log.is_up_to_date(m.index, m.log_term)


def peer_unreachable(self: Raft, peer: int) -> None:
    """The caller lost its connection to `peer`: a hint, never proof (the peer may be alive
    and only this link broken). A follower told so about its leader stops counting on it
    and campaigns soon rather than after a whole election timeout of silence: ranked by id
    among the other voters, the first at once (and once more a heartbeat later), the next
    `2 * heartbeat_ticks` later, and so on, so that the followers of a crashed leader do
    not split the vote. Safe whatever the hint's truth, since an election is always safe;
    and a live leader is not deposed, because its other followers are still in lease and
    ignore the PreVote. So without PreVote and CheckQuorum the hint is ignored (a campaign
    would bump terms)."""
    if not (self.cfg.pre_vote and self.cfg.check_quorum):
        return
    if self.role is not Role.FOLLOWER or peer == NONE or peer != self.lead:
        return
    if not self.promotable():
        return
    self.lead = NONE
    ranked = sorted(v for v in self.conf.voters if v != peer)
    rank = ranked.index(self.id)
    self.cfg.logger.info(
        "node %d lost its connection to leader %d; campaigning in %d ticks",
        self.id,
        peer,
        2 * rank * self.cfg.heartbeat_ticks,
    )
    if rank == 0:
        self._hup()
        # Again one heartbeat later if this round is lost: the others may not have heard
        # of the crash yet when our PreVote reaches them, and ignore it (in lease).
        self.election_elapsed = max(0, self.randomized_election_timeout - self.cfg.heartbeat_ticks)
    else:
        self.election_elapsed = max(
            0, self.randomized_election_timeout - 2 * rank * self.cfg.heartbeat_ticks
        )


def campaign(self: Raft) -> None:
    """Start an election now (tests, and a lone bootstrapping member)."""
    self.step(Message(MT.HUP, to=self.id, frm=self.id))
