"""The KV store (`coordinator/fsm/kv.py`): revisions, key metadata, ranges, Txn, watch history.

Every bad input is checked for its ErrorCode, and (through `Driver.fails`) for changing
nothing.
"""

from __future__ import annotations

import re

import pytest

from coordinator.fsm import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteResult,
    ErrorCode,
    EventKind,
    FsmError,
    KeyValue,
    LeaseGrant,
    Put,
    PutResult,
    Range,
    RangeResult,
    StateMachine,
    Txn,
    TxnResult,
)
from coordinator.fsm.kv import MAX_KEY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES, History, KvStore
from tests.fsm.support import Driver

EQ, NE, LT, GT = CompareOp.EQUAL, CompareOp.NOT_EQUAL, CompareOp.LESS, CompareOp.GREATER


@pytest.fixture
def d() -> Driver:
    return Driver()


def test_put_tracks_create_mod_revision_and_version(d: Driver) -> None:
    assert d.ok(Put(b"a", b"1")) == PutResult(1)
    assert d.m.get(b"a") == KeyValue(b"a", b"1", 1, 1, 1)
    assert d.ok(Put(b"b", b"x")) == PutResult(2)
    assert d.ok(Put(b"a", b"2", prev_kv=True)) == PutResult(3, KeyValue(b"a", b"1", 1, 1, 1))
    assert d.m.get(b"a") == KeyValue(b"a", b"2", 1, 3, 2)
    assert d.ok(Delete(b"a")) == DeleteResult(4, 1)
    assert d.m.get(b"a") is None
    d.ok(Put(b"a", b"3"))
    assert d.m.get(b"a") == KeyValue(b"a", b"3", 5, 5, 1)  # a new incarnation
    assert d.m.revision == 5


def test_prev_kv_only_when_asked_and_when_present(d: Driver) -> None:
    assert d.ok(Put(b"a", b"1", prev_kv=True)) == PutResult(1, None)
    assert d.ok(Put(b"a", b"2")) == PutResult(2, None)


def test_deleting_nothing_keeps_the_revision(d: Driver) -> None:
    d.ok(Put(b"a", b"1"))
    assert d.ok(Delete(b"zz")) == DeleteResult(1, 0)
    assert d.ok(Delete(b"b", b"c")) == DeleteResult(1, 0)
    assert d.m.revision == 1


def test_ranges_follow_etcd(d: Driver) -> None:
    for k in (b"a", b"b", b"ba", b"c", b"d"):
        d.ok(Put(k, k.upper()))
    keys = lambda r: [kv.key for kv in r.kvs]  # noqa: E731
    assert keys(d.m.range(b"b")) == [b"b"]
    assert keys(d.m.range(b"bb")) == []
    assert keys(d.m.range(b"b", b"c")) == [b"b", b"ba"]
    assert keys(d.m.range(b"b", b"\0")) == [b"b", b"ba", b"c", b"d"]
    assert keys(d.m.range(b"\0", b"\0")) == [b"a", b"b", b"ba", b"c", b"d"]
    limited = d.m.range(b"a", b"\0", limit=2)
    assert (keys(limited), limited.count, limited.more, limited.revision) == (
        [b"a", b"b"],
        5,
        True,
        5,
    )
    assert d.m.range(b"a", b"\0", limit=5).more is False
    assert d.ok(Delete(b"b", b"c")) == DeleteResult(6, 2)
    assert keys(d.m.range(b"\0", b"\0")) == [b"a", b"c", b"d"]
    assert d.ok(Delete(b"c", b"\0")) == DeleteResult(7, 2)
    assert keys(d.m.range(b"\0", b"\0")) == [b"a"]


def test_one_delete_of_many_keys_is_one_revision(d: Driver) -> None:
    for k in (b"a", b"b", b"c"):
        d.ok(Put(k, b""))
    d.ok(Delete(b"a", b"\0"))
    events = d.m.events_since(4)
    assert [(e.revision, e.kind, e.key) for e in events] == [
        (4, EventKind.DELETE, b"a"),
        (4, EventKind.DELETE, b"b"),
        (4, EventKind.DELETE, b"c"),
    ]


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        (Put(b"", b"v"), "key must not be empty"),
        (Put(b"k" * (MAX_KEY_BYTES + 1), b"v"), "key is 1025 bytes; the limit is 1024"),
        (Put(b"k", b"v" * (MAX_VALUE_BYTES + 1)), "the limit is 1048576 \\(1 MiB\\)"),
        (Delete(b""), "key must not be empty"),
        (Delete(b"b", b"a"), "must sort after key"),
        (Delete(b"b", b"b"), "must sort after key"),
        (Delete(b"b", b"x" * (MAX_KEY_BYTES + 1)), "range_end is 1025 bytes"),
    ],
)
def test_bad_kv_input_is_invalid_argument(d: Driver, cmd: Put | Delete, message: str) -> None:
    err = d.fails(cmd, ErrorCode.INVALID_ARGUMENT)
    assert re.search(message, err.message), err.message


def test_size_limits_are_inclusive(d: Driver) -> None:
    d.ok(Put(b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES))


def test_bad_range_queries_raise(d: Driver) -> None:
    for args in ((b"",), (b"b", b"a"), (b"a", None, -1)):
        with pytest.raises(FsmError) as info:
            d.m.range(*args)  # type: ignore[arg-type]
        assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_put_with_unknown_lease_is_not_found(d: Driver) -> None:
    err = d.fails(Put(b"k", b"v", lease=42), ErrorCode.NOT_FOUND)
    assert err.message == "lease 42 not found: it expired or was revoked; grant a new lease"


def test_put_without_lease_detaches_the_key(d: Driver) -> None:
    d.ok(LeaseGrant(5_000, id=7))
    d.ok(Put(b"k", b"v", lease=7))
    assert d.m.get(b"k").lease == 7  # type: ignore[union-attr]
    assert d.m.lease_ttl(7).keys == (b"k",)
    d.ok(Put(b"k", b"w"))
    assert d.m.lease_ttl(7).keys == ()


# --- Txn -------------------------------------------------------------------------------------


def cmp(key: bytes, target: CompareTarget, op: CompareOp, value: bytes | int) -> Compare:
    return Compare(key, target, op, value)


def holds(d: Driver, *compares: Compare) -> bool:
    result = d.ok(Txn(compares))
    assert isinstance(result, TxnResult)
    return result.succeeded


def test_txn_compares_every_target_with_every_op(d: Driver) -> None:
    d.ok(LeaseGrant(5_000, id=9))
    d.ok(Put(b"k", b"m", lease=9))  # revision 1
    d.ok(Put(b"x", b"x"))  # revision 2
    d.ok(Put(b"k", b"m", lease=9))  # revision 3: version 2, create 1, mod 3
    V, VER, C, M, L = (
        CompareTarget.VALUE,
        CompareTarget.VERSION,
        CompareTarget.CREATE_REVISION,
        CompareTarget.MOD_REVISION,
        CompareTarget.LEASE,
    )
    table = [
        (V, b"m", (True, False, False, False)),
        (V, b"a", (False, True, False, True)),
        (V, b"z", (False, True, True, False)),
        (VER, 2, (True, False, False, False)),
        (VER, 3, (False, True, True, False)),
        (C, 1, (True, False, False, False)),
        (C, 0, (False, True, False, True)),
        (M, 3, (True, False, False, False)),
        (L, 9, (True, False, False, False)),
        (L, 10, (False, True, True, False)),
    ]
    for target, value, expected in table:
        got = tuple(holds(d, cmp(b"k", target, op, value)) for op in (EQ, NE, LT, GT))
        assert got == expected, (target, value)


def test_txn_on_a_missing_key_reads_zero_and_value_compares_fail(d: Driver) -> None:
    for target in (CompareTarget.VERSION, CompareTarget.CREATE_REVISION, CompareTarget.LEASE):
        assert holds(d, cmp(b"nope", target, EQ, 0))
    for op in (EQ, NE, LT, GT):
        assert not holds(d, cmp(b"nope", CompareTarget.VALUE, op, b""))


def test_txn_runs_one_branch_at_one_revision(d: Driver) -> None:
    d.ok(Put(b"a", b"1"))
    txn = Txn(
        (cmp(b"a", CompareTarget.VALUE, EQ, b"1"),),
        (Put(b"a", b"2"), Put(b"b", b"2", prev_kv=True), Delete(b"zz"), Range(b"a", b"\0")),
        (Put(b"fail", b"1"),),
    )
    result = d.ok(txn)
    assert isinstance(result, TxnResult)
    assert result.succeeded and result.revision == 2
    put_a, put_b, delete, rng = result.responses
    assert put_a == PutResult(2) and put_b == PutResult(2)
    assert delete == DeleteResult(2, 0)
    assert isinstance(rng, RangeResult) and rng.revision == 2
    assert [kv.value for kv in rng.kvs] == [b"2", b"2"]  # sees the branch's own writes
    assert [e.revision for e in d.m.events_since(2)] == [2, 2]
    assert d.m.get(b"fail") is None
    again = d.ok(txn)
    assert isinstance(again, TxnResult) and not again.succeeded
    assert again.revision == 3 and d.m.get(b"fail") is not None


def test_read_only_txn_keeps_the_revision(d: Driver) -> None:
    d.ok(Put(b"a", b"1"))
    result = d.ok(Txn((), (Range(b"a"),), ()))
    assert isinstance(result, TxnResult)
    assert result.revision == 1 and d.m.revision == 1
    assert result.responses == (RangeResult(1, (d.m.get(b"a"),), 1, False),)  # type: ignore[arg-type]


def test_txn_cas_is_the_compare_and_swap_primitive(d: Driver) -> None:
    def cas(expected_version: int, value: bytes) -> bool:
        txn = Txn(
            (cmp(b"reg", CompareTarget.VERSION, EQ, expected_version),), (Put(b"reg", value),)
        )
        result = d.ok(txn)
        assert isinstance(result, TxnResult)
        return result.succeeded

    assert cas(0, b"first")
    assert not cas(0, b"second")
    assert cas(1, b"second")
    assert d.m.get(b"reg").value == b"second"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("txn", "message"),
    [
        (Txn((), (Put(b"a", b"1"), Put(b"a", b"2"))), "puts key b'a' twice"),
        (Txn((), (), (Put(b"a", b"1"), Delete(b"a"))), "both puts and deletes key b'a'"),
        (Txn((), (Delete(b"a", b"c"), Put(b"b", b"1"))), "both puts and deletes key b'b'"),
        (Txn((), (Put(b"", b"1"),)), "key must not be empty"),
        (Txn((), (), (Put(b"k", b"1"), Range(b"b", b"a"))), "must sort after key"),
        (Txn((cmp(b"", CompareTarget.VERSION, EQ, 1),)), "compare key must not be empty"),
        (Txn((cmp(b"\xff", CompareTarget.LOCK_TOKEN, EQ, 1),)), "valid UTF-8"),
        (Txn((cmp(b"x" * 300, CompareTarget.LOCK_TOKEN, EQ, 1),)), "lock name is 300 bytes"),
        (Txn((), (Put(b"k", b"v"),) * (MAX_TXN_OPS + 1)), "129 ops; the limit is 128"),
        (Txn((cmp(b"k", CompareTarget.VERSION, EQ, 0),) * (MAX_TXN_OPS + 1)), "129 compares"),
    ],
)
def test_bad_txn_is_invalid_argument_even_in_the_branch_not_taken(
    d: Driver, txn: Txn, message: str
) -> None:
    err = d.fails(txn, ErrorCode.INVALID_ARGUMENT)
    assert message in err.message


@pytest.mark.parametrize(
    ("txn", "message"),
    [
        (Txn((), (Range(b"a", None, -1),)), "limit must be >= 0"),
        (Txn((cmp(b"k", CompareTarget.VERSION, EQ, -1),)), "non-negative integer"),
        (Txn((cmp(b"k", CompareTarget.VALUE, EQ, 1),)), "VALUE compare needs a bytes value"),
        (Txn((cmp(b"k", CompareTarget.VERSION, EQ, b"1"),)), "non-negative integer"),
    ],
)
def test_txn_values_the_codec_cannot_carry_are_still_checked(txn: Txn, message: str) -> None:
    """A server that builds commands by hand (not through the codec) still gets an answer."""
    store = KvStore(History(), lambda _: False, lambda _: ())
    with pytest.raises(FsmError) as info:
        store.txn(txn)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert message in info.value.message


def test_txn_with_unknown_lease_in_the_chosen_branch_writes_nothing(d: Driver) -> None:
    txn = Txn((), (Put(b"a", b"1"), Put(b"b", b"1", lease=5)), (Put(b"c", b"1", lease=6),))
    assert "lease 5 not found" in d.fails(txn, ErrorCode.NOT_FOUND).message
    assert d.m.get(b"a") is None
    # The branch not taken may name a dead lease: only the branch that runs needs live ones.
    ok = Txn(
        (cmp(b"a", CompareTarget.VERSION, EQ, 0),), (Put(b"a", b"1"),), (Put(b"c", b"", lease=6),)
    )
    assert d.ok(ok) == TxnResult(1, True, (PutResult(1),))


# --- watch history ---------------------------------------------------------------------------


def test_events_since_is_inclusive_and_ordered(d: Driver) -> None:
    d.ok(Put(b"a", b"1"))
    d.ok(Put(b"a", b"2"))
    d.ok(Delete(b"a"))
    events = d.m.events_since(2)
    assert [(e.revision, e.kind) for e in events] == [(2, EventKind.PUT), (3, EventKind.DELETE)]
    assert (events[0].value, events[0].number, events[0].create_revision) == (b"2", 2, 1)
    assert [e.revision for e in d.m.events_since(0)] == [1, 2, 3]
    assert d.m.events_since(4) == [] and d.m.events_since(100) == []


def test_compacted_history_is_out_of_range_with_the_resume_point() -> None:
    d = Driver(StateMachine(history_events_max=3))
    for i in range(5):
        d.ok(Put(b"k", str(i).encode()))
    assert d.m.history_horizon == 3
    assert [e.revision for e in d.m.events_since(3)] == [3, 4, 5]
    with pytest.raises(FsmError) as info:
        d.m.events_since(2)
    assert info.value.code is ErrorCode.OUT_OF_RANGE
    assert info.value.message.startswith("compacted:")
    assert "starts at revision 3" in info.value.message
    assert "resume from revision 6" in info.value.message
    with pytest.raises(FsmError) as neg:
        d.m.events_since(-1)
    assert neg.value.code is ErrorCode.INVALID_ARGUMENT


def test_history_is_bounded_in_bytes_but_keeps_the_newest_revision_whole() -> None:
    d = Driver(StateMachine(history_bytes_max=1_000))
    d.ok(Put(b"a", b"x" * 600))
    d.ok(Put(b"b", b"x" * 600))
    assert d.m.history_horizon == 2
    assert [e.key for e in d.m.events_since(2)] == [b"b"]
    # One revision bigger than the whole bound: it is kept whole, everything older goes.
    d.ok(Txn((), (Put(b"c", b"y" * 600), Put(b"d", b"y" * 600), Put(b"e", b"y" * 600))))
    assert d.m.history_horizon == 3
    assert [e.key for e in d.m.events_since(3)] == [b"c", b"d", b"e"]
    with pytest.raises(FsmError):
        d.m.events_since(2)
    d.ok(Put(b"f", b"z"))
    assert d.m.history_horizon == 4
    assert [e.key for e in d.m.events_since(4)] == [b"f"]


def test_a_revision_larger_than_the_event_count_bound_is_kept_whole() -> None:
    d = Driver(StateMachine(history_events_max=2))
    d.ok(Put(b"a", b""))
    d.ok(Delete(b"a"))
    d.ok(Txn((), tuple(Put(bytes([65 + i]), b"") for i in range(5))))
    assert d.m.history_horizon == 3
    assert len(d.m.events_since(3)) == 5


def test_txn_results_keep_previous_values_counts_and_limits(d: Driver) -> None:
    for key in (b"a", b"b", b"c"):
        d.ok(Put(key, b"1"))
    branch = (Put(b"a", b"2", prev_kv=True), Range(b"a", b"\0", 2), Delete(b"c"), Range(b"c"))
    result = d.ok(Txn((), branch, ()))
    new_a, b = KeyValue(b"a", b"2", 1, 4, 2), KeyValue(b"b", b"1", 2, 2, 1)
    assert result == TxnResult(
        4,
        True,
        (
            PutResult(4, KeyValue(b"a", b"1", 1, 1, 1)),
            RangeResult(4, (new_a, b), 3, True),  # before the delete, cut at the limit
            DeleteResult(4, 1),
            RangeResult(4, (), 0, False),
        ),
    )
