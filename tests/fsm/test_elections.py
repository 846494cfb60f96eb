"""Elections (`coordinator/fsm/elections.py`): campaign queues FIFO, leader/proclaim/resign,
hand-over on resign and on expiry, tokens per leadership, observe through events."""

from __future__ import annotations

import pytest

from coordinator.fsm import (
    AcquireResult,
    Campaign,
    ErrorCode,
    EventKind,
    ExpireLeases,
    LeaderElected,
    LeaderInfo,
    LeaseExpired,
    LeaseGrant,
    LeaseKeepAlive,
    Proclaim,
    ReleaseResult,
    Resign,
    RevisionResult,
)
from tests.fsm.support import Driver


@pytest.fixture
def d() -> Driver:
    drv = Driver()
    for lease in (1, 2, 3):
        drv.ok(LeaseGrant(5_000, id=lease), at_ms=0)
    return drv


def test_campaign_leader_proclaim_resign(d: Driver) -> None:
    assert d.m.election_leader("E") is None
    assert d.ok(Campaign("E", 1, b"addr-1")) == AcquireResult(1, True, 1, 0)
    assert d.m.election_leader("E") == LeaderInfo(1, b"addr-1", 1, 1)
    assert d.ok(Campaign("E", 2, b"addr-2")) == AcquireResult(1, False, 0, 0)
    assert d.ok(Campaign("E", 3, b"addr-3")) == AcquireResult(1, False, 0, 1)
    assert [c.lease for c in d.m.election_candidates("E")] == [2, 3]
    assert d.ok(Proclaim("E", 1, b"addr-1b")) == RevisionResult(2)
    assert d.m.election_leader("E") == LeaderInfo(1, b"addr-1b", 1, 2)
    applied = d.run(Resign("E", 1))
    assert applied.result == ReleaseResult(4, True)
    assert applied.effects == (LeaderElected("E", 2, 4),)
    assert d.m.election_leader("E") == LeaderInfo(2, b"addr-2", 4, 4)


def test_observe_is_the_event_stream(d: Driver) -> None:
    d.ok(Campaign("E", 1, b"a"))
    d.ok(Campaign("E", 2, b"b"))
    d.ok(Proclaim("E", 1, b"a2"))
    d.ok(Resign("E", 1))
    seen = [(e.revision, e.kind, e.key, e.value, e.lease, e.number) for e in d.m.events_since(1)]
    assert seen == [
        (1, EventKind.ELECTION_LEADER, b"E", b"a", 1, 1),
        (2, EventKind.ELECTION_LEADER, b"E", b"a2", 1, 1),
        (3, EventKind.ELECTION_VACANT, b"E", b"", 1, 1),
        (4, EventKind.ELECTION_LEADER, b"E", b"b", 2, 4),
    ]


def test_campaigning_again_changes_nothing(d: Driver) -> None:
    first = d.ok(Campaign("E", 1, b"a"))
    assert d.ok(Campaign("E", 1, b"other")) == first
    assert d.m.election_leader("E").value == b"a"  # type: ignore[union-attr]
    d.ok(Campaign("E", 2, b"b"))
    assert d.ok(Campaign("E", 2, b"b")) == AcquireResult(1, False, 0, 0)


def test_leader_expiry_hands_over(d: Driver) -> None:
    d.ok(Campaign("E", 1, b"a"), at_ms=0)
    d.ok(LeaseKeepAlive(2), at_ms=4_000)
    d.ok(Campaign("E", 2, b"b"))
    applied = d.run(ExpireLeases(), at_ms=5_000, client=0)
    leader = d.m.election_leader("E")
    assert leader is not None and leader.lease == 2
    assert applied.effects[:2] == (LeaseExpired(1), LeaderElected("E", 2, leader.token))
    assert leader.token > 1


def test_resign_by_a_candidate_withdraws_it(d: Driver) -> None:
    d.ok(Campaign("E", 1, b"a"))
    d.ok(Campaign("E", 2, b"b"))
    applied = d.run(Resign("E", 2))
    assert applied.result == ReleaseResult(1, False) and applied.effects == ()
    assert d.m.election_candidates("E") == ()


@pytest.mark.parametrize(
    ("cmd", "code", "message"),
    [
        (Proclaim("E", 2, b"x"), ErrorCode.FAILED_PRECONDITION, "lease 1 leads it"),
        (Proclaim("F", 2, b"x"), ErrorCode.FAILED_PRECONDITION, "it has no leader"),
        (Resign("E", 3), ErrorCode.NOT_FOUND, "neither leads nor campaigns"),
        (Resign("F", 1), ErrorCode.NOT_FOUND, "neither leads nor campaigns"),
        (Campaign("E", 0, b""), ErrorCode.INVALID_ARGUMENT, "an election needs a lease"),
        (Campaign("E", 9, b""), ErrorCode.NOT_FOUND, "lease 9 not found"),
        (Campaign("", 1, b""), ErrorCode.INVALID_ARGUMENT, "election name must not be empty"),
        (Campaign("E", 2, b"v" * (2**20 + 1)), ErrorCode.INVALID_ARGUMENT, "1 MiB"),
        (Proclaim("E", 1, b"v" * (2**20 + 1)), ErrorCode.INVALID_ARGUMENT, "1 MiB"),
        (Proclaim("", 1, b""), ErrorCode.INVALID_ARGUMENT, "must not be empty"),
        (Resign("", 1), ErrorCode.INVALID_ARGUMENT, "must not be empty"),
    ],
)
def test_bad_election_requests(d: Driver, cmd: Proclaim, code: ErrorCode, message: str) -> None:
    d.ok(Campaign("E", 1, b"a"))
    assert message in d.fails(cmd, code).message


def test_elections_and_locks_are_separate_namespaces(d: Driver) -> None:
    d.ok(Campaign("same", 1, b"a"))
    assert d.m.lock_holders("same") == ()
    assert not d.m.check_fence("same", d.m.election_leader("same").token)  # type: ignore[union-attr]
