"""Locks and semaphores (`coordinator/fsm/locks.py`): FIFO grants, idempotent acquire,
semaphores, lock-delay, fencing tokens (strictly increasing per name over random histories),
`check_fence`, and guarded writes with a LOCK_TOKEN compare."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.fsm import (
    AcquireResult,
    Compare,
    CompareOp,
    CompareTarget,
    ErrorCode,
    EventKind,
    ExpireLeases,
    FsmError,
    LeaseExpired,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LockAcquire,
    LockGranted,
    LockRelease,
    Put,
    ReleaseResult,
    Txn,
    TxnResult,
)
from coordinator.fsm import locks as locks_module
from tests.fsm.support import Driver

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=60)
TICK = ExpireLeases()


@pytest.fixture
def d() -> Driver:
    drv = Driver()
    for lease in (1, 2, 3, 4):
        drv.ok(LeaseGrant(5_000, id=lease), at_ms=0)
    return drv


def acquire(d: Driver, name: str, lease: int, at_ms: int | None = None, **kw: int) -> AcquireResult:
    result = d.ok(LockAcquire(name, lease, **kw), at_ms=at_ms)
    assert isinstance(result, AcquireResult)
    return result


def test_mutex_grants_fifo_with_increasing_tokens(d: Driver) -> None:
    a = acquire(d, "L", 1)
    assert a.granted and a.token == d.m.revision == 1
    assert acquire(d, "L", 2, waiter_id=20) == AcquireResult(1, False, 0, 0)
    assert acquire(d, "L", 3, waiter_id=30) == AcquireResult(1, False, 0, 1)
    assert [w.lease for w in d.m.lock_waiters("L")] == [2, 3]
    applied = d.run(LockRelease("L", 1))
    assert applied.result == ReleaseResult(3, True)
    assert applied.effects == (LockGranted("L", 2, 20, 3),)
    assert [(e.revision, e.kind, e.lease, e.number) for e in d.m.events_since(2)] == [
        (2, EventKind.LOCK_RELEASED, 1, 1),
        (3, EventKind.LOCK_GRANTED, 2, 3),
    ]
    applied = d.run(LockRelease("L", 2))
    assert applied.effects == (LockGranted("L", 3, 30, 5),)
    holder = d.m.lock_holders("L")[0]
    assert (holder.lease, holder.waiter_id, holder.token) == (3, 30, 5)


def test_acquire_is_idempotent_for_holders_and_waiters(d: Driver) -> None:
    first = acquire(d, "L", 1)
    assert acquire(d, "L", 1) == first
    assert d.m.revision == first.token  # nothing happened
    acquire(d, "L", 2, waiter_id=20)
    acquire(d, "L", 3, waiter_id=30)
    # The waiter's retry keeps its place and the newest waiter id (the request to wake).
    assert acquire(d, "L", 3, waiter_id=31) == AcquireResult(1, False, 0, 1)
    assert [(w.lease, w.waiter_id) for w in d.m.lock_waiters("L")] == [(2, 20), (3, 31)]


def test_semaphore_grants_up_to_max_holders(d: Driver) -> None:
    tokens = [acquire(d, "S", lease, max_holders=3).token for lease in (1, 2, 3)]
    assert tokens == [1, 2, 3]
    assert not acquire(d, "S", 4, max_holders=3).granted
    assert d.m.check_fence("S", 2)
    applied = d.run(LockRelease("S", 2))
    assert applied.effects == (LockGranted("S", 4, 0, 5),)
    assert [h.lease for h in d.m.lock_holders("S")] == [1, 3, 4]


def test_max_holders_must_match_while_the_lock_is_in_use(d: Driver) -> None:
    acquire(d, "S", 1, max_holders=2)
    err = d.fails(LockAcquire("S", 2, max_holders=3), ErrorCode.FAILED_PRECONDITION)
    assert "in use with max_holders=2; acquire it with max_holders=2" in err.message
    d.ok(LockRelease("S", 1))
    assert acquire(d, "S", 2, max_holders=3).granted  # free again: any size


@pytest.mark.parametrize(
    ("cmd", "code", "message"),
    [
        (LockAcquire("L", 0), ErrorCode.INVALID_ARGUMENT, "a lock needs a lease"),
        (LockAcquire("L", 99), ErrorCode.NOT_FOUND, "lease 99 not found"),
        (LockAcquire("", 1), ErrorCode.INVALID_ARGUMENT, "lock name must not be empty"),
        (LockAcquire("x" * 257, 1), ErrorCode.INVALID_ARGUMENT, "257 bytes; the limit is 256"),
        (LockAcquire("L", 1, max_holders=0), ErrorCode.INVALID_ARGUMENT, "max_holders must be"),
        (LockAcquire("L", 1, max_holders=10_001), ErrorCode.INVALID_ARGUMENT, "max_holders"),
        (LockAcquire("L", 1, lock_delay_ms=60_001), ErrorCode.INVALID_ARGUMENT, "lock_delay_ms"),
        (LockRelease("L", 1), ErrorCode.NOT_FOUND, "neither held nor awaited by lease 1"),
        (LockRelease("", 1), ErrorCode.INVALID_ARGUMENT, "must not be empty"),
    ],
)
def test_bad_lock_requests(d: Driver, cmd: LockAcquire, code: ErrorCode, message: str) -> None:
    assert message in d.fails(cmd, code).message


def test_release_of_a_lock_held_by_someone_else_is_not_found(d: Driver) -> None:
    acquire(d, "L", 1)
    err = d.fails(LockRelease("L", 2), ErrorCode.NOT_FOUND)
    assert "already released, or the lease ended" in err.message


def test_release_by_a_waiter_leaves_the_queue(d: Driver) -> None:
    acquire(d, "L", 1)
    acquire(d, "L", 2)
    acquire(d, "L", 3)
    applied = d.run(LockRelease("L", 2))
    assert applied.result == ReleaseResult(1, False) and applied.effects == ()
    assert [w.lease for w in d.m.lock_waiters("L")] == [3]


def test_too_many_waiters_is_resource_exhausted(d: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks_module, "MAX_WAITERS_PER_LOCK", 1)
    acquire(d, "L", 1)
    acquire(d, "L", 2)
    assert "retry later" in d.fails(LockAcquire("L", 3), ErrorCode.RESOURCE_EXHAUSTED).message


# --- expiry and lock-delay -------------------------------------------------------------------


def test_expiry_releases_and_grants_the_next_waiter_in_the_same_tick(d: Driver) -> None:
    acquire(d, "L", 1)
    d.ok(LeaseKeepAlive(2), at_ms=3_000)
    acquire(d, "L", 2, waiter_id=7)
    applied = d.run(TICK, at_ms=5_000, client=0)
    token = d.m.lock_holders("L")[0].token
    assert applied.effects == (
        LeaseExpired(1),
        LockGranted("L", 2, 7, token),
        LeaseExpired(3),
        LeaseExpired(4),
    )
    assert [h.lease for h in d.m.lock_holders("L")] == [2]


def test_lock_delay_after_expiry_blocks_everyone_until_it_ends(d: Driver) -> None:
    d.ok(LeaseGrant(60_000, id=10), at_ms=0)
    d.ok(LeaseGrant(60_000, id=11), at_ms=0)
    acquire(d, "L", 1, lock_delay_ms=3_000)
    acquire(d, "L", 10, waiter_id=100)
    applied = d.run(TICK, at_ms=5_000, client=0)  # lease 1 expires while holding
    assert LeaseExpired(1) in applied.effects
    assert not any(isinstance(e, LockGranted) for e in applied.effects)
    assert d.m.lock_holders("L") == ()
    # A newcomer queues behind the waiter; nobody overtakes, nobody is granted.
    assert acquire(d, "L", 11, at_ms=6_000) == AcquireResult(d.m.revision, False, 0, 1)
    assert not any(isinstance(e, LockGranted) for e in d.run(TICK, at_ms=7_999, client=0).effects)
    applied = d.run(TICK, at_ms=8_000, client=0)
    token = d.m.lock_holders("L")[0].token
    assert applied.effects == (LockGranted("L", 10, 100, token),)
    assert [w.lease for w in d.m.lock_waiters("L")] == [11]


def test_lock_delay_ends_at_any_command_touching_the_lock(d: Driver) -> None:
    d.ok(LeaseGrant(60_000, id=10), at_ms=0)
    acquire(d, "L", 1, lock_delay_ms=1_000)
    d.run(TICK, at_ms=5_000, client=0)
    assert acquire(d, "L", 10, at_ms=5_999).granted is False
    d.ok(LeaseGrant(60_000, id=11), at_ms=6_000)
    result = acquire(d, "L", 11, at_ms=6_000)
    assert not result.granted and result.waiting_ahead == 0  # 10 got it first, FIFO
    assert [h.lease for h in d.m.lock_holders("L")] == [10]


@pytest.mark.parametrize("how", ["release", "revoke"])
def test_no_lock_delay_after_an_explicit_release_or_revoke(d: Driver, how: str) -> None:
    acquire(d, "L", 1, lock_delay_ms=60_000)
    acquire(d, "L", 2, waiter_id=5)
    applied = d.run(LockRelease("L", 1) if how == "release" else LeaseRevoke(1))
    assert LockGranted("L", 2, 5, d.m.lock_holders("L")[0].token) in applied.effects


def test_a_waiter_expiring_in_the_same_tick_is_never_granted(d: Driver) -> None:
    d.ok(LeaseGrant(60_000, id=10), at_ms=0)
    acquire(d, "L", 1)  # holder, expires at 5 000
    acquire(d, "L", 2)  # waiter, expires at 5 000 too
    acquire(d, "L", 10, waiter_id=9)
    applied = d.run(TICK, at_ms=5_000, client=0)
    grants = [e for e in applied.effects if isinstance(e, LockGranted)]
    assert [(g.lease, g.waiter_id) for g in grants] == [(10, 9)]


# --- fencing ---------------------------------------------------------------------------------


def test_check_fence_answers_for_current_holders_only(d: Driver) -> None:
    token = acquire(d, "L", 1).token
    assert d.m.check_fence("L", token)
    assert not d.m.check_fence("L", token + 1)
    assert not d.m.check_fence("other", token)
    d.ok(LockRelease("L", 1))
    assert not d.m.check_fence("L", token)


def test_txn_on_lock_token_guards_writes(d: Driver) -> None:
    def guarded_put(token: int, value: bytes) -> bool:
        guard = Compare(b"L", CompareTarget.LOCK_TOKEN, CompareOp.EQUAL, token)
        result = d.ok(Txn((guard,), (Put(b"data", value),)))
        assert isinstance(result, TxnResult)
        return result.succeeded

    d.ok(LeaseGrant(60_000, id=10), at_ms=0)
    old = acquire(d, "L", 1).token
    assert guarded_put(old, b"from 1")
    acquire(d, "L", 10)
    d.run(TICK, at_ms=5_000, client=0)  # lease 1 expires: 10 holds now
    new = d.m.lock_holders("L")[0].token
    assert new > old
    assert not guarded_put(old, b"late write from the deposed holder")
    assert d.m.get(b"data").value == b"from 1"  # type: ignore[union-attr]
    assert guarded_put(new, b"from 10")

    def compare(op: CompareOp, token: int) -> bool:
        result = d.ok(Txn((Compare(b"L", CompareTarget.LOCK_TOKEN, op, token),)))
        assert isinstance(result, TxnResult)
        return result.succeeded

    assert compare(CompareOp.NOT_EQUAL, old) and not compare(CompareOp.NOT_EQUAL, new)
    assert compare(CompareOp.GREATER, old) and compare(CompareOp.LESS, new + 1)
    assert compare(CompareOp.EQUAL, 0) is False
    assert compare(CompareOp.LESS, 1) is False
    d.ok(LockRelease("L", 10))
    assert compare(CompareOp.LESS, 1)  # free: the newest token reads as 0


# --- properties over random histories --------------------------------------------------------

NAMES = ("a", "b")
LEASES = (1, 2, 3, 4, 5)
MAX_HOLDERS = {"a": 1, "b": 2}

_acquires = st.tuples(
    st.just("acquire"), st.sampled_from(NAMES), st.sampled_from(LEASES), st.sampled_from((0, 700))
)
actions = st.lists(
    st.one_of(
        _acquires,
        _acquires,
        st.tuples(st.just("release"), st.sampled_from(NAMES), st.sampled_from(LEASES), st.just(0)),
        st.tuples(st.just("keepalive"), st.just(""), st.sampled_from(LEASES), st.just(0)),
        st.tuples(st.just("revoke"), st.just(""), st.sampled_from(LEASES), st.just(0)),
        st.tuples(st.just("regrant"), st.just(""), st.sampled_from(LEASES), st.just(0)),
        st.tuples(st.just("tick"), st.just(""), st.just(0), st.integers(0, 900)),
        st.tuples(st.just("term"), st.just(""), st.just(0), st.just(0)),
    ),
    min_size=10,
    max_size=120,
)


@settings(SETTINGS, max_examples=100)
@given(history=actions)
def test_tokens_strictly_increase_per_name_and_lock_delay_holds(
    history: list[tuple[str, str, int, int]],
) -> None:
    d = Driver()
    for lease in LEASES:
        d.ok(LeaseGrant(2_000, id=lease))
    grants: dict[str, list[int]] = {name: [] for name in NAMES}
    blocked_until: dict[str, int] = {name: 0 for name in NAMES}
    now = 0
    for kind, name, lease, arg in history:
        holders_before = {n: {h.lease: h.lock_delay_ms for h in d.m.lock_holders(n)} for n in NAMES}
        if kind == "acquire":
            cmd: object = LockAcquire(name, lease, MAX_HOLDERS[name], arg)
        elif kind == "release":
            cmd = LockRelease(name, lease)
        elif kind == "keepalive":
            cmd = LeaseKeepAlive(lease)
        elif kind == "revoke":
            cmd = LeaseRevoke(lease)
        elif kind == "regrant":
            cmd = LeaseGrant(2_000, id=lease)
        elif kind == "tick":
            now += arg
            cmd = TICK
        else:
            d.new_term()
            continue
        applied = d.run(cmd, at_ms=now)  # type: ignore[arg-type]
        now = d.m.now_ms
        for effect in applied.effects:
            if isinstance(effect, LeaseExpired):
                for n in NAMES:
                    delay = holders_before[n].get(effect.id, 0)
                    if delay:
                        blocked_until[n] = max(blocked_until[n], now + delay)
        granted = [(e.name, e.token) for e in applied.effects if isinstance(e, LockGranted)]
        if isinstance(applied.result, AcquireResult) and applied.result.granted:
            acquired = applied.command
            assert isinstance(acquired, LockAcquire)
            if acquired.lease not in holders_before[acquired.name]:
                granted.append((acquired.name, applied.result.token))
        for n, token in granted:
            assert now >= blocked_until[n], f"{n} granted at {now} during a lock-delay"
            assert not grants[n] or token > grants[n][-1], f"token {token} after {grants[n]}"
            grants[n].append(token)
        for n in NAMES:
            holders = d.m.lock_holders(n)
            assert len(holders) <= MAX_HOLDERS[n]
            assert all(d.m.check_fence(n, h.token) for h in holders)
            assert [h.token for h in holders] == sorted(h.token for h in holders)
            assert not {h.lease for h in holders} & {w.lease for w in d.m.lock_waiters(n)}
            assert all(lease in d.m.leases() for lease in {h.lease for h in holders})
            if holders:
                assert not d.m.check_fence(n, max(h.token for h in holders) + 1)
    for n in NAMES:
        released = [g for g in grants[n] if not d.m.check_fence(n, g)]
        assert all(not d.m.check_fence(n, t) for t in released)


def test_errors_leave_tokens_untouched(d: Driver) -> None:
    token = acquire(d, "L", 1).token
    with pytest.raises(FsmError):
        d.m.lease_ttl(99)
    d.fails(LockAcquire("L", 1, max_holders=2), ErrorCode.FAILED_PRECONDITION)
    assert d.m.lock_holders("L")[0].token == token
