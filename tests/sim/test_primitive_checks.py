"""The simulator's checks of sequences, locks and elections (`primitive_checks.py`): each
accepts a history that some execution explains and names the violation in one that none
does; the state invariant holds on the real state machine and breaks on the mutant."""

from __future__ import annotations

import pytest

from coordinator.fsm import (
    Command,
    Envelope,
    ExpireLeases,
    FsmError,
    LeaseGrant,
    LockAcquire,
    StateMachine,
)
from coordinator.raft import Entry, EntryKind
from coordinator.testing.checkers import Violation
from coordinator.testing.mutants import MUTANTS
from coordinator.testing.primitive_checks import (
    MS,
    NEVER,
    Block,
    Hold,
    check_holds,
    check_leases_held,
    check_sequence,
)


def block(client: int, call: int, ret: int, first: int, count: int, *, asked: int = 0) -> Block:
    return Block(client, call * MS, ret * MS, asked or count, first, count, 1)


def test_sequence_blocks_that_an_execution_explains_pass() -> None:
    # Concurrent calls may return in either order; values skipped by unknown calls are fine.
    blocks = [block(1, 0, 10, 1, 2), block(2, 5, 8, 3, 1), block(1, 11, 12, 7, 4)]
    assert check_sequence(blocks) is None


@pytest.mark.parametrize(
    ("blocks", "says"),
    [
        ([block(1, 0, 1, 1, 3), block(2, 0, 1, 3, 1)], "values issued twice"),
        ([block(1, 0, 1, 1, 2, asked=3)], "asked for 3"),
        ([block(1, 0, 1, 5, 1), block(2, 2, 3, 4, 1)], "had already returned"),
        ([block(1, 5, 6, 1, 1), block(1, 0, 1, 9, 1)], "client 1 got"),
    ],
)
def test_sequence_violations_are_named(blocks: list[Block], says: str) -> None:
    problem = check_sequence(blocks)
    assert problem is not None and says in problem, problem


def hold(client: int, lease: int, token: int, call: int, ack: int, *, end: int = NEVER) -> Hold:
    return Hold("lock", "L", client, lease, token, call * MS, ack * MS, end)


SAFE = {1: 100 * MS, 2: 1_000 * MS, 3: 1_000 * MS}


def test_holds_one_after_another_pass() -> None:
    holds = [
        hold(1, 1, 5, 0, 1, end=50 * MS),
        hold(2, 2, 9, 10, 60, end=70 * MS),
        hold(3, 3, 12, 71, 80),
    ]
    assert check_holds(holds, SAFE, {}) is None


def test_a_hold_whose_lease_may_have_expired_ends_at_its_safe_until() -> None:
    # Client 1 never released, but its lease was only certainly alive until 100 ms.
    holds = [hold(1, 1, 5, 0, 1), hold(2, 2, 9, 90, 120)]
    assert check_holds(holds, SAFE, {}) is None
    assert check_holds(holds, {**SAFE, 1: 130 * MS}, {}) is not None


@pytest.mark.parametrize(
    ("holds", "gone", "says"),
    [
        ([hold(1, 1, 5, 0, 1), hold(2, 2, 9, 10, 20)], {}, "held twice"),
        ([hold(1, 1, 9, 0, 1, end=5 * MS), hold(2, 2, 7, 10, 20)], {}, "already returned"),
        ([hold(1, 1, 9, 0, 1, end=5 * MS), hold(2, 2, 9, 10, 20)], {}, "token 9 granted to two"),
        ([hold(1, 1, 9, 30, 40)], {1: 20 * MS}, "seen gone"),
    ],
)
def test_hold_violations_are_named(holds: list[Hold], gone: dict[int, int], says: str) -> None:
    problem = check_holds(holds, SAFE, gone)
    assert problem is not None and says in problem, problem


def test_a_repeated_grant_is_one_hold() -> None:
    holds = [hold(1, 1, 5, 0, 1, end=50 * MS), hold(1, 1, 5, 2, 3, end=50 * MS)]
    assert check_holds(holds, SAFE, {}) is None
    # ...but a grant repeated after the lease was seen gone is a grant past the lease.
    problem = check_holds(holds, SAFE, {1: 1 * MS})
    assert problem is not None and "seen gone" in problem, problem


def apply_all(m: StateMachine, commands: list[tuple[int, Command]]) -> object:
    result: object = None
    for at_ms, cmd in commands:
        index = m.applied_index + 1
        data = Envelope(0, 0, at_ms, cmd).encode()
        result = m.apply(Entry(index, 1, EntryKind.NORMAL, data)).result
    return result


def test_an_expired_lease_lets_go_of_its_lock_on_the_real_machine() -> None:
    m = StateMachine()
    apply_all(m, [(0, LeaseGrant(1_000, id=7)), (0, LockAcquire("L", 7))])
    check_leases_held(m, ["L"], [])
    apply_all(m, [(2_000, ExpireLeases())])
    assert not m.lock_holders("L")
    check_leases_held(m, ["L"], [])
    refused = apply_all(m, [(2_000, LockAcquire("L", 7))])
    assert isinstance(refused, FsmError)


def test_the_lock_ignores_lease_mutant_breaks_the_invariant() -> None:
    m = MUTANTS["lock_ignores_lease"].fsm_factory()
    apply_all(m, [(0, LeaseGrant(1_000, id=7)), (2_000, ExpireLeases())])
    apply_all(m, [(2_000, LockAcquire("L", 7))])
    with pytest.raises(Violation, match="lease 7, which no longer exists"):
        check_leases_held(m, ["L"], [])
    # The break survives a snapshot restore (which builds every part afresh).
    m.restore(m.snapshot())
    apply_all(m, [(2_000, LockAcquire("M", 8))])
    with pytest.raises(Violation, match="lease 8"):
        check_leases_held(m, ["M"], [])
