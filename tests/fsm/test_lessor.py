"""The leader's lessor (`coordinator/fsm/lessor.py`) on virtual time, over a real state
machine: serving only after an entry of its own term applied, a full TTL at a leader change,
no acknowledgement once deposed, expiry named only past a deadline, and a renewal racing an
expiry refused; plus `ExpireLeaseIds` applying exactly the leases it names."""

from __future__ import annotations

import pytest

from coordinator.fsm import (
    Applied,
    Command,
    ExpireLeaseIds,
    ExpireResult,
    LeaseExpired,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Lessor,
    Lifetime,
    LockAcquire,
    LockGranted,
    Renewal,
)
from coordinator.fsm.lessor import CLOCK_RATE_BOUND, hold_ms
from tests.fsm.support import Driver

TTL = 3_000
HOLD = hold_ms(TTL)
"""How long the lessor holds a lease of TTL on its clock: the TTL and the rule f margin."""


class Leader:
    """A member's machine and lessor, fed as the loop feeds them."""

    def __init__(self) -> None:
        self.d = Driver()
        self.lessor = Lessor(self.d.m)

    def run(self, cmd: Command, client: int = 1) -> Applied:
        applied = self.d.run(cmd, client=client)
        self.lessor.on_applied([applied])
        return applied

    def grant(self, ttl_ms: int = TTL) -> int:
        result = self.run(LeaseGrant(ttl_ms)).result
        assert result is not None and hasattr(result, "id")
        return int(result.id)

    def lead(self, now_ms: int) -> None:
        """Lead in the current term from `now_ms`, its first entry applied."""
        self.lessor.on_applied([self.d.entry()])
        self.lessor.step(now_ms, leader_term=self.d.term)
        assert self.lessor.serving_term == self.d.term

    def new_term(self) -> None:
        self.lessor.on_applied([self.d.new_term()])

    def renew(self, lease: int, at_ms: int, term: int | None = None) -> Renewal:
        return self.lessor.renew([((lease,), at_ms)], self.d.term if term is None else term)[0]


@pytest.fixture
def ld() -> Leader:
    return Leader()


def test_serves_only_after_an_entry_of_its_own_term_applied(ld: Leader) -> None:
    lease = ld.grant()  # term 1
    ld.lessor.step(0, leader_term=2)  # elected in term 2, nothing of term 2 applied yet
    assert ld.lessor.serving_term == 0
    assert ld.renew(lease, 0, term=2) is Renewal.NOT_SERVING
    assert ld.lessor.expiry(10 * TTL) is None  # nor does it expire anything
    ld.new_term()  # term 2's first entry (the leader's no-op) applies
    ld.lessor.step(100, leader_term=2)
    assert ld.lessor.serving_term == 2
    assert ld.renew(lease, 100) is Renewal.RENEWED


def test_leader_change_gives_every_lease_a_full_ttl(ld: Leader) -> None:
    lease = ld.grant()
    ld.lessor.step(0, leader_term=1)
    assert ld.lessor.remaining(lease, 0) == Lifetime(TTL, TTL)
    # Deposed at 1_000; leader again (term 3) at 2_500, after an election that took most of
    # the TTL: the lease does not expire at 3_000 but a full TTL after the new term started.
    ld.lessor.step(1_000, leader_term=0)
    ld.d.term = 2
    ld.new_term()
    ld.lessor.step(2_500, leader_term=3)
    assert ld.lessor.serving_term == 3
    assert ld.lessor.remaining(lease, 2_500) == Lifetime(TTL, TTL)
    assert ld.lessor.expiry(2_500 + HOLD - 1) is None
    assert ld.lessor.expiry(2_500 + HOLD) == ExpireLeaseIds((lease,))


def test_a_deposed_leader_acknowledges_no_renewal(ld: Leader) -> None:
    lease = ld.grant()
    ld.lessor.step(0, leader_term=1)
    assert ld.renew(lease, 500) is Renewal.RENEWED
    ld.lessor.step(600, leader_term=0)  # another member won an election
    # A barrier taken in term 1 cannot make it acknowledge any more, nor one of a later term.
    assert ld.renew(lease, 700, term=1) is Renewal.NOT_SERVING
    assert ld.renew(lease, 700, term=2) is Renewal.NOT_SERVING
    assert ld.lessor.remaining(lease, 700) is None
    assert ld.lessor.expiry(10 * TTL) is None


def test_a_term_change_while_leading_restarts_the_lessor(ld: Leader) -> None:
    """Leader in term 1, then (without this lessor seeing a turn as follower) in term 3: the
    barrier of term 1 no longer counts, and term 3 serves only after its own entry applied."""
    lease = ld.grant()
    ld.lessor.step(0, leader_term=1)
    ld.lessor.step(100, leader_term=3)
    assert ld.renew(lease, 50, term=1) is Renewal.NOT_SERVING
    assert ld.renew(lease, 50, term=3) is Renewal.NOT_SERVING


def test_expiry_is_named_only_past_the_deadline(ld: Leader) -> None:
    ld.lead(0)
    a, b = ld.grant(), ld.grant(2 * TTL)
    assert ld.lessor.expiry(TTL - 1) is None
    assert ld.renew(a, TTL - 1) is Renewal.RENEWED  # a renewal just in time: TTL from arrival
    a_deadline = TTL - 1 + HOLD
    assert ld.lessor.expiry(a_deadline - 1) is None
    assert ld.lessor.expiry(a_deadline) == ExpireLeaseIds((a,))
    assert ld.lessor.expiry(a_deadline) is None  # named once, not again while in flight
    assert ld.lessor.expiry(hold_ms(2 * TTL)) == ExpireLeaseIds((b,))


def test_a_lease_outlives_its_ttl_in_true_time_at_any_clock_rate_within_the_bound() -> None:
    rho = CLOCK_RATE_BOUND
    for ttl in (1, 999, TTL, 86_400_000):
        # The leader's clock fast by rho ends it after hold / (1 + rho) of true time; the
        # holder's clock slow by rho has it believe in ttl / (1 - rho) of true time.
        assert hold_ms(ttl) / (1 + rho) >= ttl / (1 - rho)
    assert hold_ms(TTL) < TTL * 1.05  # a margin, not a second TTL


def test_a_renewal_only_ever_lengthens(ld: Leader) -> None:
    ld.lead(1_000)
    lease = ld.grant()
    assert ld.renew(lease, 500) is Renewal.RENEWED  # arrived before the start: no shortening
    assert ld.lessor.remaining(lease, 1_000) == Lifetime(TTL, TTL)


def test_a_lease_renewed_for_many_ttls_is_named_exactly_at_its_last_deadline(ld: Leader) -> None:
    """Renewals leave the due heap alone (an expiry check moves an entry that comes up early
    to the lease's deadline): a lease renewed for many TTLs, checked every 100 ms, is never
    named while renewed, is named the moment its last renewal's TTL ran out, and the heap
    holds about one entry per lease however many renewals there were."""
    ld.lead(0)
    leases = [ld.grant() for _ in range(10)]
    now = 0
    for now in range(0, 20 * TTL, 100):
        if now % (TTL // 3) < 100:
            for lease in leases:
                assert ld.renew(lease, now) is Renewal.RENEWED
        assert ld.lessor.expiry(now) is None
        assert len(ld.lessor._due) <= 2 * len(leases)
    last = max(t for t in range(0, 20 * TTL, 100) if t % (TTL // 3) < 100)
    assert now < last + HOLD
    assert ld.lessor.expiry(last + HOLD - 1) is None
    assert ld.lessor.expiry(last + HOLD) == ExpireLeaseIds(tuple(sorted(leases)))


def test_an_id_granted_again_expires_by_its_new_ttl(ld: Leader) -> None:
    """The entry of an earlier grant of the same id (a later deadline) neither names the new
    lease early nor twice."""
    ld.lead(0)
    lease = ld.grant(10 * TTL)
    first_entry = hold_ms(10 * TTL)
    ld.run(LeaseRevoke(lease))
    ld.run(LeaseGrant(TTL, lease))
    assert ld.renew(lease, 5 * TTL) is Renewal.RENEWED
    assert ld.lessor.expiry(HOLD) is None  # its grant's entry moves to 5 * TTL + HOLD
    last = first_entry - HOLD + 500  # its last renewal's deadline is after the first entry
    assert ld.renew(lease, last) is Renewal.RENEWED
    assert ld.lessor.expiry(5 * TTL + HOLD) is None
    assert ld.lessor.expiry(first_entry) is None  # the first grant's entry: not due by this one
    assert ld.lessor.expiry(last + HOLD - 1) is None
    assert ld.lessor.expiry(last + HOLD) == ExpireLeaseIds((lease,))
    assert ld.lessor.expiry(20 * TTL) is None  # named once


def test_a_renewal_racing_an_expiry_is_refused_then_not_found(ld: Leader) -> None:
    ld.lead(0)
    lease = ld.grant()
    expiry = ld.lessor.expiry(HOLD)
    assert expiry == ExpireLeaseIds((lease,))
    # The holder's renewal arrives while the expiry is on its way: never acknowledged.
    assert ld.renew(lease, HOLD + 1) is Renewal.EXPIRING
    assert ld.lessor.remaining(lease, HOLD + 1) == Lifetime(TTL, 0)
    applied = ld.run(expiry, client=0)
    assert applied.result == ExpireResult(applied.result.revision, (lease,))  # type: ignore[union-attr]
    assert LeaseExpired(lease) in applied.effects
    assert lease not in ld.d.m.leases()
    assert ld.renew(lease, HOLD + 2) is Renewal.UNKNOWN


def test_a_refused_expiry_proposal_is_due_again(ld: Leader) -> None:
    ld.lead(0)
    lease = ld.grant()
    expiry = ld.lessor.expiry(HOLD)
    assert expiry is not None
    ld.lessor.expiry_refused(expiry)
    assert ld.lessor.expiry(HOLD + 500) == ExpireLeaseIds((lease,))


def test_grants_and_revocations_are_followed_while_serving(ld: Leader) -> None:
    ld.lead(0)
    assert ld.renew(99, 0) is Renewal.UNKNOWN
    ld.lessor.step(200, leader_term=1)
    lease = ld.grant()
    assert ld.lessor.remaining(lease, 200) == Lifetime(TTL, TTL)  # counted from this turn
    ld.run(LeaseRevoke(lease))
    assert ld.renew(lease, 300) is Renewal.UNKNOWN
    assert ld.lessor.expiry(10 * TTL) is None


def test_a_keep_alive_written_to_the_log_renews_too(ld: Leader) -> None:
    ld.lead(0)
    lease = ld.grant()
    ld.lessor.step(2_000, leader_term=ld.d.term)
    ld.run(LeaseKeepAlive(lease))
    assert ld.lessor.remaining(lease, 2_000) == Lifetime(TTL, TTL)
    assert ld.lessor.expiry(TTL + 1_000) is None


def test_a_restored_snapshot_restarts_the_lessor(ld: Leader) -> None:
    lease = ld.grant()
    ld.lessor.step(0, leader_term=1)
    ld.lessor.on_restored()
    assert ld.renew(lease, 10) is Renewal.NOT_SERVING
    ld.lessor.step(1_000, leader_term=1)
    assert ld.lessor.remaining(lease, 1_000) == Lifetime(TTL, TTL)


def test_an_empty_expiry_is_proposed_only_for_a_lock_delay(ld: Leader) -> None:
    ld.lead(0)
    holder, waiter = ld.grant(), ld.grant(10 * TTL)
    ld.run(LockAcquire("job", holder, lock_delay_ms=5_000))
    ld.run(LockAcquire("job", waiter))
    assert ld.lessor.expiry(TTL - 1) is None
    ld.d.time_ms = HOLD
    expiry = ld.lessor.expiry(HOLD)
    assert expiry == ExpireLeaseIds((holder,))
    ld.run(expiry, client=0)  # the holder expires: lock-delay until HOLD + 5_000
    ld.d.time_ms = HOLD + 5_000
    tick = ld.lessor.expiry(HOLD + 5_000)
    assert tick == ExpireLeaseIds(())
    applied = ld.run(tick, client=0)
    assert any(isinstance(e, LockGranted) and e.lease == waiter for e in applied.effects)
    assert ld.lessor.expiry(HOLD + 5_500) is None


def test_expire_lease_ids_ends_exactly_those_still_there() -> None:
    d = Driver()
    a, b, c = (d.ok(LeaseGrant(TTL)).id for _ in range(3))  # type: ignore[union-attr]
    d.ok(LeaseRevoke(b))
    applied = d.run(ExpireLeaseIds((a, b)), client=0)
    assert isinstance(applied.result, ExpireResult)
    assert applied.result.expired == (a,)
    assert d.m.leases() == (c,)


def test_counts_what_it_renewed_and_named_for_expiry(ld: Leader) -> None:
    ld.lead(0)
    a, b = ld.grant(), ld.grant()
    assert (ld.lessor.renewed, ld.lessor.expiries_proposed) == (0, 0)
    assert ld.renew(a, 1_000) is Renewal.RENEWED
    assert ld.renew(a, 2_000) is Renewal.RENEWED
    assert ld.renew(99, 2_000) is Renewal.UNKNOWN  # not a renewal: not counted
    assert ld.lessor.renewed == 2
    expiry = ld.lessor.expiry(HOLD)  # b's deadline passed, a's did not
    assert expiry is not None and expiry.ids == (b,)
    assert ld.renew(b, HOLD) is Renewal.EXPIRING  # refused: not counted
    ld.lessor.expiry_refused(expiry)
    again = ld.lessor.expiry(HOLD)
    assert again is not None and again.ids == (b,)
    assert (ld.lessor.renewed, ld.lessor.expiries_proposed) == (2, 2)  # named twice
