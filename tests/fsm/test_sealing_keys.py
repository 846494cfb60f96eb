"""The replicated sealing-key table: conditional adds (first use and renewal races), shape
checks, ordering, and the snapshot image (version 4)."""

from __future__ import annotations

import pytest

from coordinator.fsm import (
    ErrorCode,
    SealingKeyAdd,
    SealingKeyResult,
    StateMachine,
)

from .support import Driver


@pytest.fixture
def d() -> Driver:
    return Driver()


def key(n: int, after: int = 0, created_ms: int = 0) -> SealingKeyAdd:
    prev = bytes([after]) * 8 if after else b""
    return SealingKeyAdd(bytes([n]) * 8, created_ms or n * 1000, b"der-%d" % n, b"pem-%d" % n, prev)


def test_first_key_is_added_and_a_racing_first_key_is_not(d: Driver) -> None:
    assert d.ok(key(1)) == SealingKeyResult(True, b"\1" * 8, 1000)
    # A second member that also found no key proposed one: it loses, and learns the winner.
    assert d.ok(key(2)) == SealingKeyResult(False, b"\1" * 8, 1000)
    assert [k.id for k in d.m.sealing_keys()] == [b"\1" * 8]


def test_renewal_appends_and_keeps_old_keys_a_stale_renewal_changes_nothing(d: Driver) -> None:
    d.ok(key(1))
    assert d.ok(key(2, after=1)) == SealingKeyResult(True, b"\2" * 8, 2000)
    assert d.ok(key(3, after=1)) == SealingKeyResult(False, b"\2" * 8, 2000)
    keys = d.m.sealing_keys()
    assert [k.id for k in keys] == [b"\1" * 8, b"\2" * 8]
    assert d.m.sealing_key(b"\1" * 8) == keys[0] and keys[0].private_key_der == b"der-1"
    assert d.m.sealing_key(b"\x09" * 8) is None


def test_malformed_or_duplicate_keys_are_refused_and_change_nothing(d: Driver) -> None:
    d.ok(key(1))
    d.fails(SealingKeyAdd(b"short", 1, b"d", b"c", b"\1" * 8), ErrorCode.INVALID_ARGUMENT)
    d.fails(SealingKeyAdd(b"\2" * 8, 1, b"", b"c", b"\1" * 8), ErrorCode.INVALID_ARGUMENT)
    d.fails(SealingKeyAdd(b"\2" * 8, 1, b"d", b"", b"\1" * 8), ErrorCode.INVALID_ARGUMENT)
    d.fails(key(1, after=1), ErrorCode.ALREADY_EXISTS)


def test_keys_survive_a_snapshot_and_the_repr_hides_the_private_key(d: Driver) -> None:
    d.ok(key(1))
    d.ok(key(2, after=1))
    image = d.m.snapshot()
    copy = StateMachine()
    copy.restore(image)
    assert copy.sealing_keys() == d.m.sealing_keys()
    assert copy.snapshot() == image
    assert "der-" not in repr(copy.sealing_keys()) and "der-" not in repr(key(1))
