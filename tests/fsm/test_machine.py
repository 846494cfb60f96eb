"""`StateMachine` itself (`coordinator/fsm/machine.py`): entry handling, sessions (exactly
once), Applied, and snapshot/restore (round trip, atomic failure, everything included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.fsm import (
    AcquireResult,
    Campaign,
    Envelope,
    ErrorCode,
    ExpireLeases,
    FsmError,
    LeaseGrant,
    LockAcquire,
    LockGranted,
    LockRelease,
    MemberUpsert,
    Noop,
    OwnedLeaseGrant,
    Put,
    PutResult,
    ReleaseResult,
    RevisionResult,
    SequenceCreate,
    SequenceNext,
    SnapshotDecodeError,
    StateMachine,
)
from coordinator.fsm._wire import Writer
from coordinator.raft import ConfState, Entry, EntryKind
from tests.fsm.support import Driver

IMAGES = Path(__file__).parent / "images"


@pytest.fixture
def d() -> Driver:
    return Driver()


def twin_after(d: Driver, before: bytes) -> bytes:
    """The snapshot of the state `before` after one sessionless Noop at d's index and time:
    what the machine must look like if the entry just applied changed nothing."""
    twin = StateMachine()
    twin.restore(before)
    data = Envelope(0, 0, d.time_ms, Noop()).encode()
    twin.apply(Entry(d.index, d.term, EntryKind.NORMAL, data))
    return twin.snapshot()


# --- entries ---------------------------------------------------------------------------------


def test_leader_noops_and_conf_entries_only_advance_the_index(d: Driver) -> None:
    d.ok(Put(b"a", b"1"))
    before = d.m.revision
    noop = d.entry()
    conf = d.entry(ConfState(frozenset({1, 2, 3})).encode(), EntryKind.CONF)
    assert (noop.index, noop.result, noop.command, noop.effects) == (2, None, None, ())
    assert (conf.index, conf.result) == (3, None)
    assert d.m.applied_index == 3 and d.m.revision == before


def test_entries_must_come_in_order(d: Driver) -> None:
    d.entry()
    with pytest.raises(ValueError, match=r"out of order.*takes 2 next"):
        d.m.apply(Entry(1, 1))
    with pytest.raises(ValueError, match="out of order"):
        d.m.apply(Entry(3, 1))
    assert d.m.applied_index == 1


def test_an_undecodable_entry_is_answered_not_raised(d: Driver) -> None:
    d.ok(Put(b"a", b"1"))
    before = d.m.snapshot()
    applied = d.entry(b"\x07garbage")
    assert isinstance(applied.result, FsmError)
    assert applied.result.code is ErrorCode.INVALID_ARGUMENT
    assert "entry 2 holds no valid command" in applied.result.message
    assert applied.command is None and applied.client_id == 0
    # Nothing changed, not even the clock (there was no stamp to read).
    twin = StateMachine()
    twin.restore(before)
    twin.apply(Entry(2, 1))
    assert d.m.snapshot() == twin.snapshot()


def test_applied_carries_the_envelope(d: Driver) -> None:
    applied = d.run(Put(b"a", b"1"), client=9, seq=4, at_ms=123)
    assert (applied.index, applied.term, applied.client_id, applied.seq) == (1, 1, 9, 4)
    assert applied.command == Put(b"a", b"1") and applied.result == PutResult(1)
    assert not applied.duplicate
    assert d.m.now_ms == 123


def test_noop_is_a_barrier_that_reports_the_revision(d: Driver) -> None:
    d.ok(Put(b"a", b"1"))
    assert d.ok(Noop()) == RevisionResult(1)


# --- sessions --------------------------------------------------------------------------------


def test_a_duplicate_returns_the_saved_result_and_changes_nothing(d: Driver) -> None:
    first = d.run(Put(b"a", b"1"), client=5, seq=1)
    d.ok(Put(b"b", b"2"), client=6, seq=1)
    before = d.m.snapshot()
    retry = d.run(Put(b"a", b"1"), client=5, seq=1)
    assert retry.duplicate and retry.result == first.result == PutResult(1)
    assert d.m.snapshot() == twin_after(d, before)


def test_a_duplicate_of_a_rejection_returns_the_same_rejection(d: Driver) -> None:
    first = d.run(Put(b"", b"1"), client=5, seq=1)
    retry = d.run(Put(b"", b"1"), client=5, seq=1)
    assert isinstance(first.result, FsmError) and retry.result == first.result
    assert retry.duplicate


def test_a_duplicate_wakes_nobody_again(d: Driver) -> None:
    d.ok(LeaseGrant(5_000, id=1))
    d.ok(LeaseGrant(5_000, id=2))
    d.ok(LockAcquire("L", 1))
    d.ok(LockAcquire("L", 2, waiter_id=3))
    release = d.run(LockRelease("L", 1), client=8, seq=1)
    assert release.effects and isinstance(release.effects[0], LockGranted)
    retry = d.run(LockRelease("L", 1), client=8, seq=1)
    assert retry.duplicate and retry.effects == () and retry.result == ReleaseResult(3, True)


def test_a_stale_request_is_refused_and_changes_nothing(d: Driver) -> None:
    d.run(Put(b"a", b"1"), client=5, seq=1)
    d.run(Put(b"a", b"2"), client=5, seq=2)
    before = d.m.snapshot()
    stale = d.run(Put(b"a", b"3"), client=5, seq=1)
    assert isinstance(stale.result, FsmError)
    assert stale.result.code is ErrorCode.FAILED_PRECONDITION
    assert "older than the newest one applied" in stale.result.message
    assert stale.duplicate
    assert d.m.snapshot() == twin_after(d, before)


def test_client_zero_has_no_session(d: Driver) -> None:
    assert d.ok(Put(b"a", b"1"), client=0, seq=0) == PutResult(1)
    assert d.ok(Put(b"a", b"1"), client=0, seq=0) == PutResult(2)


def test_sessions_survive_snapshot_and_restore(d: Driver) -> None:
    first = d.run(Put(b"a", b"1"), client=5, seq=1)
    restored = StateMachine()
    restored.restore(d.m.snapshot())
    d.m = restored
    retry = d.run(Put(b"a", b"1"), client=5, seq=1)
    assert retry.duplicate and retry.result == first.result


# --- snapshots -------------------------------------------------------------------------------


def busy(d: Driver) -> None:
    d.ok(LeaseGrant(5_000, id=1), at_ms=10)
    d.ok(LeaseGrant(9_000, id=2))
    d.ok(Put(b"a", b"1", lease=1))
    d.ok(Put(b"b", b"2"))
    d.ok(LockAcquire("L", 1, lock_delay_ms=500))
    d.ok(LockAcquire("L", 2, waiter_id=4))
    d.ok(LockAcquire("S", 2, max_holders=3))
    d.ok(Campaign("E", 2, b"v"))
    d.ok(SequenceCreate("seq", 100, 10))
    d.ok(SequenceNext("seq", 2))
    d.ok(MemberUpsert(1, "m0", "https://m0:1", "https://m0:2"))
    d.new_term()


def test_snapshot_round_trips_everything(d: Driver) -> None:
    busy(d)
    image = d.m.snapshot()
    restored = StateMachine()
    restored.restore(image)
    assert restored.snapshot() == image
    for m in (d.m, restored):
        assert m.applied_index == d.index and m.applied_term == 2
        assert m.get(b"a") is not None and m.revision == d.m.revision
        assert m.lock_holders("L")[0].lease == 1 and m.lock_waiters("L")[0].waiter_id == 4
        assert m.election_leader("E") is not None
        assert m.sequence_current("seq").next_value == 120
        assert m.members()[0].name == "m0"
        assert m.lease_ttl(2).remaining_ms == 9_000
    # Both continue identically, including the pending full-TTL refresh of the new term and
    # the lock-delay that follows lease 1's expiry.
    other = Driver(restored)
    other.index, other.term, other.seq = d.index, d.term, d.seq
    for at in (2_000, 5_400, 6_000, 20_000):
        a = d.run(ExpireLeases(), at_ms=at, client=0)
        b = other.run(ExpireLeases(), at_ms=at, client=0)
        assert a == b
    assert d.m.snapshot() == other.m.snapshot()


def test_snapshot_keeps_the_watch_history_and_its_horizon() -> None:
    d = Driver(StateMachine(history_events_max=2))
    for i in range(4):
        d.ok(Put(b"k", bytes([i])))
    restored = StateMachine(history_events_max=2)
    restored.restore(d.m.snapshot())
    assert restored.history_horizon == d.m.history_horizon == 3
    assert restored.events_since(3) == d.m.events_since(3)
    with pytest.raises(FsmError) as info:
        restored.events_since(2)
    assert info.value.code is ErrorCode.OUT_OF_RANGE


def test_a_bad_image_is_rejected_and_the_machine_is_untouched(d: Driver) -> None:
    busy(d)
    image = d.m.snapshot()
    target = Driver()
    target.ok(Put(b"mine", b"1"))
    kept = target.m.snapshot()
    bad_images = [
        b"",
        b"garbage",
        b"XFSM" + image[4:],
        image[:4] + b"\x09" + image[5:],
        image + b"\x00",
        *(image[:cut] for cut in range(0, len(image), 7)),
    ]
    for bad in bad_images:
        with pytest.raises(SnapshotDecodeError):
            target.m.restore(bad)
        assert target.m.snapshot() == kept
    with pytest.raises(SnapshotDecodeError, match="unknown snapshot version 9"):
        target.m.restore(image[:4] + b"\x09" + image[5:])
    with pytest.raises(SnapshotDecodeError, match="not a Concord state machine snapshot"):
        target.m.restore(b"XFSM" + image[4:])


def test_restore_replaces_everything(d: Driver) -> None:
    busy(d)
    fresh = StateMachine().snapshot()
    d.m.restore(fresh)
    assert d.m.applied_index == 0 and d.m.revision == 0 and d.m.leases() == ()
    assert d.m.lock_holders("L") == () and d.m.members() == ()
    assert d.m.snapshot() == fresh


def test_the_restored_machine_keeps_granting_in_fifo_order(d: Driver) -> None:
    busy(d)
    restored = StateMachine()
    restored.restore(d.m.snapshot())
    d.m = restored
    applied = d.run(LockRelease("L", 1))
    assert applied.result == ReleaseResult(d.m.revision, True)
    assert applied.effects == (LockGranted("L", 2, 4, d.m.revision),)
    assert isinstance(d.ok(LockAcquire("L", 2)), AcquireResult)


def test_a_cut_anywhere_in_the_keys_is_rejected(d: Driver) -> None:
    for i in range(5):
        d.ok(Put(b"key-%d" % i, b"value-%d" % i, lease=0))
    image = d.m.snapshot()
    start = image.index(b"key-0") - 8
    end = image.index(b"value-4") + len(b"value-4") + 40
    for cut in range(start, end):
        with pytest.raises(SnapshotDecodeError, match=r"truncated|cannot decode"):
            StateMachine().restore(image[:cut])


def test_a_key_twice_in_an_image_is_rejected(d: Driver) -> None:
    d.ok(Put(b"key-AAAA", b"1"))
    d.ok(Put(b"key-BBBB", b"2"))
    image = d.m.snapshot().replace(b"key-BBBB", b"key-AAAA")
    with pytest.raises(SnapshotDecodeError, match="keys are not in strictly ascending order"):
        StateMachine().restore(image)


def test_an_owned_lease_keeps_its_owner_through_a_snapshot(d: Driver) -> None:
    busy(d)
    d.ok(OwnedLeaseGrant(5_000, 0, "team-a"))
    owned = max(d.m.leases())
    assert d.m.lease_owner(owned) == "team-a"
    assert d.m.lease_owner(1) == ""  # a cluster client's
    assert d.m.lease_owner(10**9) is None
    restored = StateMachine()
    restored.restore(d.m.snapshot())
    assert restored.lease_owner(owned) == "team-a"
    assert restored.snapshot() == d.m.snapshot()


def test_a_version_4_image_still_restores_without_owners(d: Driver) -> None:
    """Version 4 is version 5 without the owner section (an empty one is 4 zero bytes, just
    before the session table): an old member's snapshot must stay readable. Made from the
    image the version 5 build wrote for this state (tests/fsm/images/README.md)."""
    busy(d)
    image = (IMAGES / "v5-busy.bin").read_bytes()
    assert image[4] == 5
    sessions = Writer()
    sessions.blob(d.m._sessions.encode())
    tail = sessions.getvalue()
    assert image.endswith(b"\x00\x00\x00\x00" + tail)
    old = image[:4] + b"\x04" + image[5 : len(image) - len(tail) - 4] + tail
    restored = StateMachine()
    restored.restore(old)
    assert restored.leases() == d.m.leases() and restored.lease_owner(1) == ""


def test_a_version_5_image_restores_to_the_same_state_and_is_written_as_version_6(
    d: Driver,
) -> None:
    busy(d)
    restored = StateMachine()
    restored.restore((IMAGES / "v5-busy.bin").read_bytes())
    image = restored.snapshot()
    assert image[4] == 6 and image == d.m.snapshot()
    assert restored.lease_owner(1) == d.m.lease_owner(1) and restored.get(b"a") == d.m.get(b"a")


def view_of(data: bytes) -> memoryview:
    """`data` as a member holds a snapshot it read from disk: a read-only view of a buffer
    that holds more before it (the file's header and configuration)."""
    return memoryview(bytearray(b"header" + data)).toreadonly()[6:]


def test_an_image_restores_from_a_view_as_from_bytes(d: Driver) -> None:
    busy(d)
    for data in (d.m.snapshot(), (IMAGES / "v5-busy.bin").read_bytes()):
        restored = StateMachine()
        restored.restore(view_of(data))
        assert restored.snapshot() == d.m.snapshot()
        assert restored.get(b"a") == d.m.get(b"a")


def test_the_later_image_is_a_read_only_view_of_the_same_bytes(d: Driver) -> None:
    busy(d)
    image = d.m.snapshot_later()()
    assert isinstance(image, memoryview) and image.readonly
    assert image == d.m.snapshot()


def test_a_bad_image_is_rejected_from_a_view_too(d: Driver) -> None:
    busy(d)
    image = d.m.snapshot()
    for size in (0, 5, len(image) // 2, len(image) - 1):
        with pytest.raises(SnapshotDecodeError):
            StateMachine().restore(view_of(image[:size]))
