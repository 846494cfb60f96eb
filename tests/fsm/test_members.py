"""The member directory (`coordinator/fsm/members.py`)."""

from __future__ import annotations

import pytest

from coordinator.fsm import (
    ErrorCode,
    EventKind,
    Member,
    MemberReadmit,
    MemberRemove,
    MemberUpsert,
    RevisionResult,
    StateMachine,
)
from tests.fsm.support import Driver


@pytest.fixture
def d() -> Driver:
    return Driver()


def upsert(i: int, name: str) -> MemberUpsert:
    return MemberUpsert(i, name, f"https://{name}:2380", f"https://{name}:2379")


def test_upsert_list_update_remove(d: Driver) -> None:
    assert d.ok(upsert(2, "concord-1")) == RevisionResult(1)
    assert d.ok(upsert(1, "concord-0")) == RevisionResult(2)
    assert [m.id for m in d.m.members()] == [1, 2]
    assert d.ok(upsert(1, "concord-0")) == RevisionResult(2)  # unchanged: no revision
    moved = MemberUpsert(1, "concord-0", "https://10.0.0.9:2380", "https://10.0.0.9:2379")
    assert d.ok(moved) == RevisionResult(3)
    assert d.m.members()[0] == Member(
        1, "concord-0", "https://10.0.0.9:2380", "https://10.0.0.9:2379"
    )
    assert d.ok(MemberRemove(2)) == RevisionResult(4)
    assert [m.name for m in d.m.members()] == ["concord-0"]
    assert [(e.kind, e.key, e.number) for e in d.m.events_since(1)] == [
        (EventKind.MEMBER_UPSERTED, b"concord-1", 2),
        (EventKind.MEMBER_UPSERTED, b"concord-0", 1),
        (EventKind.MEMBER_UPSERTED, b"concord-0", 1),
        (EventKind.MEMBER_REMOVED, b"concord-1", 2),
    ]


@pytest.mark.parametrize(
    ("cmd", "code", "message"),
    [
        (upsert(2, "concord-0"), ErrorCode.ALREADY_EXISTS, "belongs to member 1; remove member 1"),
        (upsert(0, "x"), ErrorCode.INVALID_ARGUMENT, "member id must be between 1"),
        (upsert(2**63, "x"), ErrorCode.INVALID_ARGUMENT, "member id must be between 1"),
        (upsert(2, ""), ErrorCode.INVALID_ARGUMENT, "member name must not be empty"),
        (MemberUpsert(2, "x", "x:2380", "https://x:2379"), ErrorCode.INVALID_ARGUMENT, "peer_url"),
        (
            MemberUpsert(2, "x", "https://x:2380", "h ttp://x"),
            ErrorCode.INVALID_ARGUMENT,
            "client_url",
        ),
        (
            MemberUpsert(2, "x", "https://" + "x" * 1024, "https://x"),
            ErrorCode.INVALID_ARGUMENT,
            "longer than",
        ),
        (MemberRemove(0), ErrorCode.INVALID_ARGUMENT, "member id must be between 1"),
    ],
)
def test_bad_member_requests(d: Driver, cmd: MemberUpsert, code: ErrorCode, message: str) -> None:
    d.ok(upsert(1, "concord-0"))
    assert message in d.fails(cmd, code).message


def test_a_removed_id_is_never_listed_again(d: Driver) -> None:
    d.ok(upsert(1, "concord-0"))
    d.ok(upsert(2, "concord-1"))
    assert d.ok(MemberRemove(2)) == RevisionResult(3)
    err = d.fails(upsert(2, "concord-1"), ErrorCode.FAILED_PRECONDITION)
    assert "member id 2 was removed from this cluster and is never reused" in err.message
    # An id removed from the Raft configuration without ever being listed is remembered too,
    # with no revision and no event.
    assert d.ok(MemberRemove(7)) == RevisionResult(3)
    assert d.m.removed_member_ids() == {2, 7}
    d.fails(upsert(7, "concord-7"), ErrorCode.FAILED_PRECONDITION)
    assert [m.id for m in d.m.members()] == [1]
    restored = StateMachine()
    restored.restore(d.m.snapshot())
    assert restored.removed_member_ids() == {2, 7}
    assert restored.snapshot() == d.m.snapshot()


def test_an_explicit_readmit_lets_the_same_member_be_listed_again(d: Driver) -> None:
    """A StatefulSet ordinal scaled down and up again: the operator readmits its id (no
    revision, no event), then lists it again; every other removed id stays refused."""
    d.ok(upsert(1, "concord-0"))
    d.ok(upsert(4, "concord-3"))
    d.ok(MemberRemove(4))
    d.ok(MemberRemove(5))
    revision = d.m.revision
    assert d.ok(MemberReadmit(4)) == RevisionResult(revision)
    assert d.ok(MemberReadmit(9)) == RevisionResult(revision)  # never removed: nothing to do
    assert d.m.removed_member_ids() == {5}
    assert d.ok(upsert(4, "concord-3")) == RevisionResult(revision + 1)
    d.fails(upsert(5, "concord-4"), ErrorCode.FAILED_PRECONDITION)
