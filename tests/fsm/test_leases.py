"""Leases (`coordinator/fsm/leases.py`, clean-up in `machine.py`): grant bounds and ids,
keep-alive, revoke, expiry by the log, full TTL after a leader change, and the replicated
clock across leaders whose clocks disagree."""

from __future__ import annotations

import pytest

from coordinator.fsm import (
    AcquireResult,
    Campaign,
    ErrorCode,
    EventKind,
    ExpireLeases,
    ExpireResult,
    FsmError,
    LeaderElected,
    LeaseExpired,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseResult,
    LeaseRevoke,
    LeaseRevoked,
    LockAcquire,
    LockGranted,
    Put,
    RevisionResult,
)
from coordinator.fsm import leases as leases_module
from tests.fsm.support import Driver

TICK = ExpireLeases()


@pytest.fixture
def d() -> Driver:
    return Driver()


def expire(d: Driver, at_ms: int) -> tuple[int, ...]:
    applied = d.run(TICK, at_ms=at_ms, client=0)
    assert isinstance(applied.result, ExpireResult), applied.result
    ended = tuple(e.id for e in applied.effects if isinstance(e, LeaseExpired))
    assert ended == applied.result.expired
    return applied.result.expired


@pytest.mark.parametrize("ttl_ms", [0, 999, 86_400_001, 2**63])
def test_ttl_out_of_bounds_is_invalid(d: Driver, ttl_ms: int) -> None:
    err = d.fails(LeaseGrant(ttl_ms), ErrorCode.INVALID_ARGUMENT)
    assert "outside 1000..86400000 ms (1 s to 1 day)" in err.message


def test_ttl_bounds_are_inclusive(d: Driver) -> None:
    assert d.ok(LeaseGrant(1_000)) == LeaseResult(1, 1_000)
    assert d.ok(LeaseGrant(86_400_000)) == LeaseResult(2, 86_400_000)


def test_automatic_ids_are_never_reused(d: Driver) -> None:
    assert d.ok(LeaseGrant(5_000)) == LeaseResult(1, 5_000)
    assert d.ok(LeaseGrant(5_000, id=100)) == LeaseResult(100, 5_000)
    assert d.ok(LeaseGrant(5_000)) == LeaseResult(101, 5_000)
    d.ok(LeaseRevoke(101))
    assert d.ok(LeaseGrant(5_000)) == LeaseResult(102, 5_000)
    assert d.ok(LeaseGrant(5_000, id=50)) == LeaseResult(50, 5_000)
    assert d.m.leases() == (1, 50, 100, 102)


def test_duplicate_and_out_of_range_ids(d: Driver) -> None:
    d.ok(LeaseGrant(5_000, id=7))
    err = d.fails(LeaseGrant(5_000, id=7), ErrorCode.ALREADY_EXISTS)
    assert "lease 7 already exists; pass id 0" in err.message
    err = d.fails(LeaseGrant(5_000, id=2**63), ErrorCode.INVALID_ARGUMENT)
    assert "lease id must be between 1 and 9223372036854775807" in err.message


def test_too_many_leases_is_resource_exhausted(d: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases_module, "MAX_LEASES", 2)
    d.ok(LeaseGrant(5_000))
    d.ok(LeaseGrant(5_000))
    err = d.fails(LeaseGrant(5_000), ErrorCode.RESOURCE_EXHAUSTED)
    assert "revoke unused leases" in err.message


@pytest.mark.parametrize("cmd", [LeaseKeepAlive(42), LeaseRevoke(42)])
def test_unknown_lease_is_not_found_with_advice(d: Driver, cmd: LeaseKeepAlive) -> None:
    err = d.fails(cmd, ErrorCode.NOT_FOUND)
    assert err.message == "lease 42 not found: it expired or was revoked; grant a new lease"
    with pytest.raises(FsmError) as info:
        d.m.lease_ttl(42)
    assert info.value.code is ErrorCode.NOT_FOUND


def test_expiry_at_the_deadline_deletes_keys_and_reports(d: Driver) -> None:
    d.ok(LeaseGrant(5_000), at_ms=1_000)
    d.ok(Put(b"a", b"1", lease=1))
    d.ok(Put(b"b", b"1", lease=1))
    d.ok(Put(b"c", b"1"))
    assert d.m.lease_ttl(1).remaining_ms == 5_000
    assert expire(d, 5_999) == ()
    assert d.m.lease_ttl(1).remaining_ms == 1
    applied = d.run(TICK, at_ms=6_000, client=0)
    assert applied.result == ExpireResult(4, (1,))
    assert applied.effects == (LeaseExpired(1),)
    assert d.m.get(b"a") is None and d.m.get(b"b") is None and d.m.get(b"c") is not None
    assert [(e.revision, e.kind) for e in d.m.events_since(4)] == [
        (4, EventKind.DELETE),
        (4, EventKind.DELETE),
    ]
    assert d.m.leases() == ()


def test_keep_alive_resets_the_deadline(d: Driver) -> None:
    d.ok(LeaseGrant(5_000), at_ms=0)
    assert d.ok(LeaseKeepAlive(1), at_ms=4_000) == LeaseResult(1, 5_000)
    assert expire(d, 8_999) == ()
    assert expire(d, 9_000) == (1,)


def test_a_keep_alive_that_commits_before_the_expiry_rescues_the_lease(d: Driver) -> None:
    """Expiry is decided by ExpireLeases entries only; until one applies the lease lives."""
    d.ok(LeaseGrant(5_000), at_ms=0)
    d.ok(LeaseKeepAlive(1), at_ms=7_000)  # past the deadline, but no tick ended it yet
    assert expire(d, 7_001) == ()
    assert expire(d, 12_000) == (1,)


def test_expiry_order_is_deadline_then_id(d: Driver) -> None:
    d.ok(LeaseGrant(3_000, id=5), at_ms=0)
    d.ok(LeaseGrant(2_000, id=9), at_ms=0)
    d.ok(LeaseGrant(2_000, id=7), at_ms=0)
    d.ok(LeaseGrant(9_000, id=1), at_ms=0)
    assert expire(d, 3_000) == (7, 9, 5)
    assert d.m.leases() == (1,)


def test_revoke_deletes_keys_releases_locks_without_delay_and_resigns(d: Driver) -> None:
    d.ok(LeaseGrant(5_000, id=1))
    d.ok(LeaseGrant(5_000, id=2))
    d.ok(Put(b"k", b"v", lease=1))
    held = d.ok(LockAcquire("L", 1, lock_delay_ms=10_000, waiter_id=11))
    assert isinstance(held, AcquireResult) and held.granted
    assert d.ok(LockAcquire("L", 2, waiter_id=22)) == AcquireResult(2, False, 0, 0)
    d.ok(Campaign("E", 1, b"one"))
    d.ok(Campaign("E", 2, b"two"))
    applied = d.run(LeaseRevoke(1))
    assert isinstance(applied.result, RevisionResult)
    lock_token = d.m.lock_holders("L")[0].token
    leader = d.m.election_leader("E")
    assert leader is not None and leader.lease == 2 and leader.value == b"two"
    assert applied.effects == (
        LeaseRevoked(1),
        LockGranted("L", 2, 22, lock_token),
        LeaderElected("E", 2, leader.token),
    )
    assert d.m.get(b"k") is None
    assert applied.result.revision == d.m.revision


# --- the replicated clock and leader changes -------------------------------------------------


def test_a_new_term_gives_every_lease_a_full_ttl(d: Driver) -> None:
    d.ok(LeaseGrant(10_000), at_ms=0)
    d.ok(LeaseGrant(10_000), at_ms=7_000)
    assert expire(d, 8_000) == ()  # lease 1 has 2 s left, lease 2 has 9 s
    d.new_term()  # the new leader's empty entry: no time yet, nothing changes
    assert d.m.lease_ttl(1).remaining_ms == 2_000
    # The new leader's first command (same clock here) restores the full TTL first:
    assert expire(d, 8_000) == ()
    assert d.m.lease_ttl(1).remaining_ms == 10_000
    assert d.m.lease_ttl(2).remaining_ms == 10_000
    assert expire(d, 17_999) == ()
    assert expire(d, 18_000) == (1, 2)


def test_without_a_leader_change_there_is_no_refresh(d: Driver) -> None:
    d.ok(LeaseGrant(10_000), at_ms=0)
    assert expire(d, 8_000) == ()
    assert expire(d, 10_000) == (1,)


def test_the_refresh_happens_before_the_new_leaders_first_expiry(d: Driver) -> None:
    d.ok(LeaseGrant(10_000), at_ms=0)
    d.new_term()
    # An outage of a minute: the first thing the new leader does is tick, far past the
    # old deadline. The lease survives and gets its full TTL from here.
    assert expire(d, 60_000) == ()
    assert expire(d, 69_999) == ()
    assert expire(d, 70_000) == (1,)


def test_the_refresh_is_once_per_new_term(d: Driver) -> None:
    d.ok(LeaseGrant(10_000), at_ms=0)
    d.new_term()
    d.ok(LeaseGrant(1_000), at_ms=5_000)  # first command of term 2: refresh to 15 000
    assert expire(d, 9_000) == (2,)
    assert expire(d, 14_999) == ()
    assert expire(d, 15_000) == (1,)


def test_a_new_leader_whose_clock_is_far_behind_still_expires_leases(d: Driver) -> None:
    d.ok(LeaseGrant(10_000), at_ms=1_000_000)
    d.new_term()
    # The new leader's clock reads 0 (a different monotonic epoch). Time continues from the
    # replicated clock instead of jumping back, so the lease does not live an extra 1000 s.
    assert expire(d, 0) == ()
    assert d.m.now_ms == 1_000_000
    assert expire(d, 9_999) == ()
    assert expire(d, 10_000) == (1,)


def test_a_new_leader_whose_clock_is_far_ahead_does_not_expire_everyone(d: Driver) -> None:
    d.ok(LeaseGrant(10_000), at_ms=0)
    d.new_term()
    assert expire(d, 10**12) == ()
    assert expire(d, 10**12 + 9_999) == ()
    assert expire(d, 10**12 + 10_000) == (1,)


def test_the_clock_never_runs_backwards_within_a_term(d: Driver) -> None:
    d.ok(LeaseGrant(10_000), at_ms=5_000)
    d.ok(LeaseKeepAlive(1), at_ms=1_000)  # a stamp older than the last one
    assert d.m.now_ms == 5_000
    assert d.m.lease_ttl(1).remaining_ms == 10_000
