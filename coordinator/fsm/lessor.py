"""The leader's lessor: lease renewals decided in the leader's memory, expiry through the log.

Why. A renewal written to the log costs an entry fsynced on every member; with thousands of
leases renewed every TTL/3 that is most of the leader's CPU, and the queue it builds delays
renewals past their TTL. A renewal changes nothing that any member but the leader needs to
know: only the leader decides expiry. So the leader keeps each lease's deadline here, in
memory, renews without a log entry, and writes to the log only what every member must apply
alike: the expiry (`ExpireLeaseIds`, naming the leases). The replicated lease table keeps the
leases, their TTLs and owners; its deadlines are no longer kept current by renewals.

Time. Pure and deterministic: every time is passed in (milliseconds of the leader's monotonic
clock); nothing here reads a clock. The member core (`coordinator.core.member`) calls `step`
every turn, `expiry` every lease check, and feeds it every applied batch (`on_applied`) and
restore; the client-facing server calls `renew` and `remaining`. All of them run where the
core runs (the runtime's event loop), between applies.

The rules, and why each one:

a. Serving starts only once this leader has applied an entry of its own term (`step` sees
   fsm.applied_term == its term). Raft commits a new leader's no-op only after every entry of
   earlier terms, so by then every expiry an earlier leader decided has applied here, and the
   lessor starts from the right set of leases. Each lease then gets a full TTL from that
   moment (DESIGN §5): the new leader cannot know for how long clients were cut off while there
   was no leader, and must not count that against them. The replicated table does the same
   (`LeaseTable.refresh`), so both agree that a leader change never shortens a lease.

b. A renewal is acknowledged only after a read barrier (ReadIndex: a quorum confirmed this
   member still led) that was requested AFTER the renewal arrived; renewals waiting together
   share one barrier (the server batches them, `renew` takes the batch). Why that suffices: a
   later leader's quorum overlaps the barrier's, so one member acknowledged our heartbeat
   before voting for the later leader; that leader therefore starts serving after the renewal
   arrived, and (rule a) gives the lease a full TTL from then, later than the
   arrival + TTL the renewal promised. A deposed leader's barrier fails (or its lessor has
   stopped serving, `NOT_SERVING`), so it never acknowledges a renewal the next leader does not
   honour. The renewal counts from its arrival, which is after the client sent it: the client,
   which counts from its send time, always believes in a shorter life than the leader grants.

c. Expiry stays a committed decision. `expiry` names the leases whose deadline passed and
   marks them expiring; the runtime proposes `ExpireLeaseIds` with them, and applying it ends
   exactly those leases (if still there), cleaning up keys, locks and elections as before. A
   renewal of an expiring lease is refused (`EXPIRING`): the server waits for the expiry to
   apply and answers NOT_FOUND, so a renewal is never acknowledged and then lost to an expiry
   already on its way. If the proposal is refused (`expiry_refused`) the leases are due again
   at the next check; if it is lost to a leader change, this lessor stops serving anyway and
   the next leader starts over (rule a).

d. Long TTLs. A lease whose holder died is expired one TTL after the last leader change. With
   no checkpoint of the remaining TTL (etcd's lease checkpoints), a cluster that changed leader
   more often than once per TTL would keep such a lease forever. This costs liveness only,
   never safety: expiry only ever comes later than the holder can count on (holders are fenced
   by tokens in any case), and TTLs are capped at a day (`leases.MAX_TTL_MS`). Checkpoints
   would also make TimeToLive on a new leader exact rather than a full TTL; they are not
   written yet, and the full TTL is what a new leader reports.

e. TimeToLive is answered from here on the leader (`remaining`). A follower has no renewals
   and redirects the question to the leader; before the lessor serves (rule a) the server
   answers from the replicated table, whose deadline after a leader change is at least a
   full TTL as well.

f. Clock rates. Deadlines are kept on the leader's clock, the client counts its TTL on its own,
   and no two clocks run at quite the same rate. Both are assumed to run within
   CLOCK_RATE_BOUND of true time (a quartz clock is within 0.01%, NTP slews at most 0.05%; the
   bound leaves room for virtual machines). A leader's clock that runs fast would end a lease
   early in true time, and a client's that runs slow would have it believe in the lease too
   long; so the lessor holds each lease a margin longer than its TTL on its own clock
   (`hold_ms`: TTL * (1 + rho) / (1 - rho), rho the bound), which covers both at once. The
   margin costs only a dead holder's lease living a few percent longer. The simulator gives
   each member a clock of its own rate, at the bound, and checks the clients' promises in
   true time (`coordinator/testing/sim_clock.py`); a lessor without the margin is caught.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .commands import ExpireLeaseIds, LeaseGrant, LeaseKeepAlive, OwnedLeaseGrant
from .machine import Applied, LeaseExpired, LeaseRevoked
from .results import LeaseResult

CLOCK_RATE_BOUND = 0.02
"""Every host's monotonic clock runs within this fraction of true time's rate (rule f)."""


def hold_ms(ttl_ms: int) -> int:
    """How long, on the leader's clock, a lease of `ttl_ms` lives past the moment it counts
    from, so that it outlives TTL on any clock within CLOCK_RATE_BOUND (rule f)."""
    rho = CLOCK_RATE_BOUND
    return math.ceil(ttl_ms * (1 + rho) / (1 - rho))


EXPIRY_IDS_MAX = 10_000
"""At most this many leases per expiry entry (the rest are named by the next one), so one
entry stays small whatever the backlog."""


class LeaseBook(Protocol):
    """What the lessor reads of the replicated state machine (`StateMachine`)."""

    @property
    def applied_term(self) -> int: ...

    def lease_ttls(self) -> list[tuple[int, int]]: ...

    def lock_delays_pending(self) -> bool: ...


class Renewal(enum.Enum):
    RENEWED = "renewed"
    """Acknowledge: the lease lives until at least arrival + TTL."""
    UNKNOWN = "unknown"
    """No such lease (it ended, or never existed): NOT_FOUND."""
    EXPIRING = "expiring"
    """An expiry naming it is on its way: answer NOT_FOUND once it applies, never acknowledge."""
    NOT_SERVING = "not serving"
    """This member does not serve renewals in that term (not the leader, or not yet: rule a)."""


@dataclass(frozen=True, slots=True)
class Lifetime:
    ttl_ms: int
    remaining_ms: int


@dataclass(slots=True)
class _Lease:
    ttl_ms: int
    deadline_ms: int
    """Leader's monotonic ms until which the lease lives (with the rule f margin); only
    ever moves forward."""


class Lessor:
    """See the module docstring. Told the machine's applies (`on_applied`) to learn grants
    and ends while it serves."""

    def __init__(self, fsm: LeaseBook) -> None:
        self._fsm = fsm
        self._term = 0
        """The term in which this lessor serves renewals; 0 while it does not."""
        self._leases: dict[int, _Lease] = {}
        """While serving: every lease of the machine, by id. Empty otherwise."""
        self._due: list[tuple[int, int]] = []
        """Min-heap of (deadline_ms, id). Every lease that is not expiring has an entry no
        later than its deadline (renewals only move deadlines later, and leave the heap
        alone); an entry that comes up before its lease's deadline is moved to it, one for
        a lease that is gone or expiring is dropped."""
        self._expiring: set[int] = set()
        """Leases named by an expiry proposed and not yet applied (subset of `_leases`)."""
        self._now_ms = 0
        """The time of the latest `step`: what a lease granted in this turn counts from."""
        self.renewed = 0
        """Renewals this lessor acknowledged (RENEWED), over every term it served (metrics)."""
        self.expiries_proposed = 0
        """Leases named by the expiries this lessor returned to propose (a lease whose
        proposal was refused is named, and counted, again; metrics)."""

    # --- leadership ----------------------------------------------------------------------------

    @property
    def serving_term(self) -> int:
        """The term whose renewals this lessor serves (0: none)."""
        return self._term

    def step(self, now_ms: int, leader_term: int) -> None:
        """Every loop turn: `leader_term` is the member's term while it leads, else 0."""
        self._now_ms = max(self._now_ms, now_ms)
        if self._term and leader_term != self._term:
            self._stop()
        if leader_term and not self._term and self._fsm.applied_term == leader_term:
            self._start(leader_term)

    def _start(self, term: int) -> None:
        """Rule a: every lease gets a full TTL from now."""
        self._term = term
        now = self._now_ms
        self._leases = {
            i: _Lease(ttl, now + self._hold_ms(ttl)) for i, ttl in self._fsm.lease_ttls()
        }
        self._due = [(lease.deadline_ms, i) for i, lease in self._leases.items()]
        heapq.heapify(self._due)

    def _hold_ms(self, ttl_ms: int) -> int:
        return hold_ms(ttl_ms)

    def _stop(self) -> None:
        self._term = 0
        self._leases.clear()
        self._due.clear()
        self._expiring.clear()

    # --- renewals and reads ---------------------------------------------------------------------

    def renew(self, asks: Sequence[tuple[Sequence[int], int]], term: int) -> list[Renewal]:
        """Renewals (lease ids that arrived together, their arrival ms), confirmed by a
        barrier of `term` requested after every one of them arrived (rule b). One outcome per
        lease id, in order."""
        if term != self._term or not term:
            return [Renewal.NOT_SERVING] * sum(len(ids) for ids, _ in asks)
        # Thousands a second on the leader's event loop: nothing per renewal but a dict
        # look-up and a comparison. The due heap is not touched (`expiry` moves an entry
        # that comes up early to the lease's deadline then), so a lease costs the heap one
        # entry per TTL, not one per renewal.
        leases, expiring, hold = self._leases, self._expiring, self._hold_ms
        out: list[Renewal] = []
        put = out.append
        for ids, arrived_ms in asks:
            for lease_id in ids:
                lease = leases.get(lease_id)
                if lease is None:
                    put(Renewal.UNKNOWN)
                elif lease_id in expiring:
                    put(Renewal.EXPIRING)
                else:
                    deadline = arrived_ms + hold(lease.ttl_ms)
                    lease.deadline_ms = max(lease.deadline_ms, deadline)
                    put(Renewal.RENEWED)
        self.renewed += out.count(Renewal.RENEWED)
        return out

    def ttl_ms(self, lease_id: int) -> int:
        """The lease's TTL (0 if this lessor does not know it)."""
        lease = self._leases.get(lease_id)
        return 0 if lease is None else lease.ttl_ms

    def expiring(self, lease_id: int) -> bool:
        return lease_id in self._expiring

    def remaining(self, lease_id: int, now_ms: int) -> Lifetime | None:
        """What is left of the lease by this leader's deadline; None if not serving or unknown."""
        lease = self._leases.get(lease_id) if self._term else None
        if lease is None:
            return None
        # What the holder may count on is the TTL, not the margin (rule f).
        left = lease.deadline_ms - (self._hold_ms(lease.ttl_ms) - lease.ttl_ms) - now_ms
        left = 0 if lease_id in self._expiring else max(0, left)
        return Lifetime(lease.ttl_ms, left)

    # --- expiry --------------------------------------------------------------------------------

    def expiry(self, now_ms: int) -> ExpireLeaseIds | None:
        """The expiry to propose now (rule c), or None. Names every lease whose deadline is
        <= now_ms and not already expiring (up to EXPIRY_IDS_MAX) and marks them expiring; an
        expiry naming none is returned when a lock-delay waits to end (its apply grants)."""
        self._now_ms = max(self._now_ms, now_ms)
        if not self._term:
            return None
        ids: list[int] = []
        while self._due and self._due[0][0] <= now_ms and len(ids) < EXPIRY_IDS_MAX:
            deadline, lease_id = heapq.heappop(self._due)
            lease = self._leases.get(lease_id)
            if lease is None or lease_id in self._expiring:
                continue  # gone, or named already
            if lease.deadline_ms > deadline:  # renewed since: due at its deadline now
                heapq.heappush(self._due, (lease.deadline_ms, lease_id))
                continue
            if lease.deadline_ms < deadline:
                continue  # an entry of an earlier grant of this id; its own entry is earlier
            ids.append(lease_id)
            self._expiring.add(lease_id)  # a second entry of it is skipped above
        if len(self._due) > 2 * len(self._leases) + 64:
            self._due = [(lease.deadline_ms, i) for i, lease in self._leases.items()]
            heapq.heapify(self._due)
        if not ids and not self._fsm.lock_delays_pending():
            return None
        self.expiries_proposed += len(ids)
        return ExpireLeaseIds(tuple(sorted(ids)))

    def expiry_refused(self, expiry: ExpireLeaseIds) -> None:
        """The expiry could not be proposed: its leases are due again at the next check."""
        for lease_id in expiry.ids:
            if lease_id in self._expiring:
                self._expiring.discard(lease_id)
                lease = self._leases[lease_id]
                heapq.heappush(self._due, (lease.deadline_ms, lease_id))

    # --- what the machine applied ---------------------------------------------------------------

    def on_applied(self, batch: Sequence[Applied]) -> None:
        if not self._term:
            return  # `_start` reads the machine itself
        for applied in batch:
            cmd = applied.command
            if (
                isinstance(cmd, LeaseGrant | OwnedLeaseGrant)
                and isinstance(applied.result, LeaseResult)
                and not applied.duplicate
            ):
                ttl = applied.result.ttl_ms
                lease = _Lease(ttl, self._now_ms + self._hold_ms(ttl))
                self._leases[applied.result.id] = lease
                heapq.heappush(self._due, (lease.deadline_ms, applied.result.id))
            if (
                isinstance(cmd, LeaseKeepAlive)
                and isinstance(applied.result, LeaseResult)
                and cmd.id not in self._expiring
            ):
                # A keep-alive written to the log (by an older version, or a driver that
                # renews through the log) renews here too: it was sent before it applied.
                self.renew([((cmd.id,), self._now_ms)], self._term)
            for effect in applied.effects:
                if isinstance(effect, LeaseExpired | LeaseRevoked):
                    self._forget(effect.id)
            if isinstance(cmd, ExpireLeaseIds):
                for lease_id in cmd.ids:  # those already gone were not in the effects
                    self._forget(lease_id)

    def _forget(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)
        self._expiring.discard(lease_id)

    def on_restored(self) -> None:
        """A snapshot replaced the machine: start over (at the next `step`, if still leading)."""
        self._stop()

    def on_stop(self) -> None:
        """The member stops: nothing is served any more."""
        self._stop()
