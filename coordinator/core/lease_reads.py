"""Leader-lease reads: a leader sure that no other leader can exist yet answers a read from its
own state, without the ReadIndex round trip. Off by default (`CoreConfig.read_mode`).

Why it is safe. A ReadIndex read (the default) asks a quorum, for every batch of reads, to
confirm that this member still leads. A lease read uses a confirmation the leader already
has: a quorum of voters that answered a heartbeat it sent at time s (its clock). Each of them
refuses to vote in a newer term for `election_ticks` ticks of its own clock after it last
heard from a leader (`refuses_vote`; at least `election_ticks - 1` tick lengths, since its
first tick may come at once), so no newer leader can be elected, by a quorum that must
include one of them, before true time s + (E - 1) * tick / (1 + rho), rho the clock rate
bound (`fsm.lessor.CLOCK_RATE_BOUND`) of the voter's clock. The leader serves a read while
its own clock says less than `lease_ms` = (E - 1) * tick * (1 - rho) / (1 + rho) - tick has
passed since s: with its clock at most rho slow, that much clock time is at most
(E - 1) * tick / (1 + rho) - tick / (1 - rho) of true time, a tick short of the voters'
promise (the tick is slack for the clock reading being taken a moment before the decision).
So when it answers, every write acknowledged before the read arrived was committed by this
leader, and its commit index (known once it has committed an entry of its own term) covers
it. The read then waits for the apply to reach that index, as a ReadIndex read does.

What else must hold, each checked here:

a. Only heartbeats the voter answered count, and from when the leader FIRST sent that
   heartbeat's context (a delayed or duplicated old heartbeat answered now proves nothing
   newer); only answers of the current term, to the current leader.
b. The leader has committed an entry of its own term (else its commit index may be behind a
   write an earlier leader acknowledged): until then reads take the barrier, which waits.
c. A leader that sent TimeoutNow (leadership transfer) never serves lease reads again in
   that term: the transferee campaigns with `force`, which voters grant in spite of (c's
   reason) their refusal, and a duplicated TimeoutNow may arrive long after the transfer
   gave up.
d. Voters refuse from their start too (a restarted member does not remember when it last
   heard from the leader), and count ticks themselves rather than trust Raft's election
   timer, which a transport's hint that the leader is unreachable fast-forwards. Losing
   ticks in a stall only makes a voter refuse longer; the leader measures on its clock, not
   in ticks, because ticks a stall lost would make it believe too little time had passed.
e. Every member of the cluster must run with lease reads on: a voter without them grants
   votes as Raft does (leader stickiness only while it knows a leader), which is not enough.

The cost. Elections after a leader's crash wait for every voter's refusal to run out (the
transport's unreachability hint cannot hurry them), and a restarted member cannot vote for an
election timeout. A lease is renewed only by heartbeats whose context is new, i.e. by a read
barrier, so the leader asks for one of its own every third of a lease (`renewal_due`): one
heartbeat round per third of an election timeout, whatever the read load.

Pure and deterministic: times and messages are passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from coordinator.fsm import CLOCK_RATE_BOUND
from coordinator.raft import Message, MessageType

_CONTEXTS_KEPT = 1024
"""At most this many heartbeat contexts' first sends are remembered per term."""
_FROM_LEADER = frozenset((MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP))
_VOTES = frozenset((MessageType.VOTE, MessageType.PRE_VOTE))


class ReadMode(enum.Enum):
    BARRIER = "barrier"
    """Every batch of reads confirms leadership with a quorum (ReadIndex): the default."""
    LEASE = "lease"
    """A leader that heard from a quorum recently enough serves reads at once (above)."""


def lease_ms(election_ticks: int, tick_s: float) -> float:
    """How long after the first send of a heartbeat a quorum answered, on the leader's clock,
    it may serve reads (module docstring)."""
    rho = CLOCK_RATE_BOUND
    tick_ms = tick_s * 1000
    return (election_ticks - 1) * tick_ms * (1 - rho) / (1 + rho) - tick_ms


class LeaseReads:
    """One member's side of lease reads: as a leader, when a quorum last heard from it; as a
    voter, whether it must refuse a vote."""

    def __init__(self, member_id: int, election_ticks: int, tick_s: float) -> None:
        self._id = member_id
        self._election_ticks = election_ticks
        self._tick_ms = tick_s * 1000
        self.lease_ms = lease_ms(election_ticks, tick_s)
        self._term = 0
        """The term whose heartbeats are recorded below."""
        self._first_sent: dict[int, float] = {}
        """Heartbeat context -> the leader's clock (ms) when it first sent one with it."""
        self._heard: dict[int, float] = {}
        """Voter -> the first send of the newest context it answered (rule a)."""
        self._transferred = False
        """This term, the leader sent TimeoutNow (rule c)."""
        self._now_ms = 0.0
        self._ticks_since_leader = 0
        """Ticks since a leader's message last arrived (or since start: rule d)."""
        self._renewed_ms = float("-inf")
        """When the leader last asked for a barrier of its own to renew the lease."""

    # --- inputs ----------------------------------------------------------------------------

    def clock(self, now_ms: float) -> None:
        """The driver's clock at the start of a turn: what what is sent next is stamped with
        (a send is never earlier than the reading before it)."""
        self._now_ms = max(self._now_ms, now_ms)

    def tick(self) -> None:
        self._ticks_since_leader += 1

    def sent(self, messages: Sequence[Message], term: int) -> None:
        """What this member sends, while it leads in `term`."""
        self._for_term(term)
        for m in messages:
            if m.term != term:
                continue
            if m.type is MessageType.HEARTBEAT:
                if m.context not in self._first_sent and len(self._first_sent) >= _CONTEXTS_KEPT:
                    # Bounded over a long term: forget the oldest contexts (in the order sent).
                    # A late answer to one only earns no credit, which is safe.
                    for old in list(self._first_sent)[: _CONTEXTS_KEPT // 2]:
                        del self._first_sent[old]
                self._first_sent.setdefault(m.context, self._now_ms)
            elif m.type is MessageType.TIMEOUT_NOW:
                self._transferred = True

    def received(self, m: Message, term: int, leading: bool) -> None:
        """A message about to be stepped; `term` is this member's before it."""
        if m.type in _FROM_LEADER and m.term >= term:
            self._ticks_since_leader = 0
        if leading and m.type is MessageType.HEARTBEAT_RESP and m.term == term:
            self._for_term(term)
            sent = self._first_sent.get(m.context)
            if sent is not None and sent > self._heard.get(m.frm, -1.0):
                self._heard[m.frm] = sent

    def refuses_vote(self, m: Message, term: int) -> bool:
        """Rule d: a vote (or PreVote) for a newer term, asked within an election timeout of
        the last message from a leader, is dropped (a forced one, from a transfer, is not)."""
        return (
            m.type in _VOTES
            and not m.force
            and m.term > term
            and self._ticks_since_leader < self._election_ticks
        )

    # --- the decision ---------------------------------------------------------------------------

    def renewal_due(self, now_ms: float, term: int) -> bool:
        """Should the leader of `term` ask for a barrier now, to keep its lease renewed?"""
        self._for_term(term)
        if now_ms - self._renewed_ms < self.lease_ms / 3:
            return False
        self._renewed_ms = now_ms
        return True

    def valid(
        self, now_ms: float, term: int, voters: Iterable[int], own_term_committed: bool
    ) -> bool:
        """May the leader of `term` serve a read now, at `now_ms` on its clock?"""
        self._for_term(term)
        if self._transferred or not own_term_committed:
            return False
        heard = sorted(
            (now_ms if v == self._id else self._heard.get(v, float("-inf")) for v in voters),
            reverse=True,
        )
        if not heard:
            return False
        quorum_heard = heard[len(heard) // 2]
        return now_ms - quorum_heard < self.lease_ms

    def _for_term(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._first_sent.clear()
            self._heard.clear()
            self._transferred = False
            self._renewed_ms = float("-inf")
