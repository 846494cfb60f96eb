"""The command codec (`coordinator/fsm/commands.py`) and the result codec (`results.py`).

- every command, and every result and rejection, round-trips exactly (hypothesis);
- the wire format is pinned by golden bytes, and tags are unique and stable;
- anything that is not a valid encoding raises `CommandDecodeError` (never IndexError,
  struct.error or a silent partial decode): every truncation, trailing bytes, unknown
  version/tag/enum, bad booleans and bad UTF-8, and arbitrary bytes;
- the codec is canonical: bytes that decode re-encode to themselves.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.fsm import (
    AcquireResult,
    Campaign,
    CommandDecodeError,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteResult,
    Envelope,
    ErrorCode,
    ExpireLeaseIds,
    ExpireLeases,
    ExpireResult,
    FsmError,
    JoinTokenAdd,
    JoinTokenRevoke,
    KeyValue,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseResult,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    MemberReadmit,
    MemberRemove,
    MemberUpsert,
    Noop,
    OwnedLeaseGrant,
    Proclaim,
    Put,
    PutResult,
    Range,
    RangeResult,
    ReleaseResult,
    Resign,
    RevisionResult,
    SealingKeyAdd,
    SealingKeyResult,
    SequenceBlock,
    SequenceCreate,
    SequenceInfo,
    SequenceNext,
    Txn,
    TxnResult,
    decode_outcome,
    encode_outcome,
)
from coordinator.fsm._wire import DecodeError
from coordinator.fsm.commands import COMMAND_TYPES, ENVELOPE_VERSION
from coordinator.fsm.results import RESULT_TYPES

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=150)

u8 = st.integers(0, 2**8 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
blobs = st.binary(max_size=24)
texts = st.text(max_size=12)

compares = st.one_of(
    st.builds(Compare, blobs, st.just(CompareTarget.VALUE), st.sampled_from(CompareOp), blobs),
    st.builds(
        Compare,
        blobs,
        st.sampled_from([t for t in CompareTarget if t is not CompareTarget.VALUE]),
        st.sampled_from(CompareOp),
        u64,
    ),
)
puts = st.builds(Put, blobs, blobs, u64, st.booleans())
deletes = st.builds(Delete, blobs, st.none() | blobs)
ranges = st.builds(Range, blobs, st.none() | blobs, u32)
ops = st.one_of(puts, deletes, ranges)
op_lists = st.lists(ops, max_size=4).map(tuple)

COMMANDS = {
    Put: puts,
    Delete: deletes,
    Txn: st.builds(Txn, st.lists(compares, max_size=4).map(tuple), op_lists, op_lists),
    LeaseGrant: st.builds(LeaseGrant, u64, u64),
    OwnedLeaseGrant: st.builds(OwnedLeaseGrant, u64, u64, texts),
    LeaseKeepAlive: st.builds(LeaseKeepAlive, u64),
    LeaseRevoke: st.builds(LeaseRevoke, u64),
    ExpireLeases: st.just(ExpireLeases()),
    ExpireLeaseIds: st.builds(
        ExpireLeaseIds, st.lists(u64, max_size=8, unique=True).map(lambda ids: tuple(sorted(ids)))
    ),
    LockAcquire: st.builds(LockAcquire, texts, u64, u32, u64, u64),
    LockRelease: st.builds(LockRelease, texts, u64),
    Campaign: st.builds(Campaign, texts, u64, blobs),
    Proclaim: st.builds(Proclaim, texts, u64, blobs),
    Resign: st.builds(Resign, texts, u64),
    SequenceCreate: st.builds(SequenceCreate, texts, i64, i64),
    SequenceNext: st.builds(SequenceNext, texts, u32),
    MemberUpsert: st.builds(MemberUpsert, u64, texts, texts, texts),
    MemberRemove: st.builds(MemberRemove, u64),
    MemberReadmit: st.builds(MemberReadmit, u64),
    JoinTokenAdd: st.builds(JoinTokenAdd, texts, blobs, u64),
    JoinTokenRevoke: st.builds(JoinTokenRevoke, texts, u64),
    SealingKeyAdd: st.builds(SealingKeyAdd, blobs, u64, blobs, blobs, blobs),
    Noop: st.just(Noop()),
}
envelopes = st.builds(Envelope, u64, u64, u64, st.one_of(*COMMANDS.values()))

kvs = st.builds(KeyValue, blobs, blobs, u64, u64, u64, u64)
put_results = st.builds(PutResult, u64, st.none() | kvs)
delete_results = st.builds(DeleteResult, u64, u64)
range_results = st.builds(
    RangeResult, u64, st.lists(kvs, max_size=3).map(tuple), u64, st.booleans()
)
RESULTS = {
    PutResult: put_results,
    DeleteResult: delete_results,
    RangeResult: range_results,
    TxnResult: st.builds(
        TxnResult,
        u64,
        st.booleans(),
        st.lists(st.one_of(put_results, delete_results, range_results), max_size=3).map(tuple),
    ),
    LeaseResult: st.builds(LeaseResult, u64, u64),
    ExpireResult: st.builds(ExpireResult, u64, st.lists(u64, max_size=4).map(tuple)),
    AcquireResult: st.builds(AcquireResult, u64, st.booleans(), u64, u64),
    ReleaseResult: st.builds(ReleaseResult, u64, st.booleans()),
    SequenceInfo: st.builds(SequenceInfo, texts, i64, i64, u64),
    SequenceBlock: st.builds(SequenceBlock, i64, u64, i64, u64),
    RevisionResult: st.builds(RevisionResult, u64),
    SealingKeyResult: st.builds(SealingKeyResult, st.booleans(), blobs, u64),
}
errors = st.builds(FsmError, st.sampled_from(ErrorCode), texts)


def test_every_command_and_result_has_a_strategy_and_a_unique_tag() -> None:
    assert set(COMMANDS) == set(COMMAND_TYPES)
    assert set(RESULTS) == set(RESULT_TYPES)
    command_tags = [cls.TAG for cls in COMMAND_TYPES] + [Range.TAG]
    assert len(set(command_tags)) == len(command_tags)
    assert 0 not in command_tags
    result_tags = [cls.TAG for cls in RESULT_TYPES]
    assert len(set(result_tags)) == len(result_tags)
    assert 255 not in result_tags  # reserved for FsmError


@SETTINGS
@given(env=envelopes)
def test_envelope_round_trips(env: Envelope) -> None:
    data = env.encode()
    assert Envelope.decode(data) == env
    assert data[0] == ENVELOPE_VERSION


@pytest.mark.parametrize("cls", COMMAND_TYPES, ids=lambda c: c.__name__)
def test_each_command_round_trips(cls: type) -> None:
    @SETTINGS
    @given(cmd=COMMANDS[cls])
    def check(cmd: object) -> None:
        env = Envelope(7, 9, 11, cmd)  # type: ignore[arg-type]
        assert Envelope.decode(env.encode()) == env

    check()


@SETTINGS
@given(outcome=st.one_of(*RESULTS.values(), errors))
def test_outcomes_round_trip(outcome: object) -> None:
    assert decode_outcome(encode_outcome(outcome)) == outcome  # type: ignore[arg-type]


def test_wire_format_is_pinned() -> None:
    """Changing these bytes means a new ENVELOPE_VERSION (old logs must stay readable)."""
    put = Envelope(1, 2, 3, Put(b"k", b"v", lease=5, prev_kv=True)).encode()
    assert (
        put.hex()
        == (
            "01" + "0000000000000001" + "0000000000000002" + "0000000000000003"  # v, client, seq, t
            "01"
            + "000000016b"
            + "0000000176"
            + "0000000000000005"
            + "01"  # Put: key, value, lease, prev
        )
    )
    acquire = Envelope(0, 0, 0, LockAcquire("L", 4, 2, 100, 9)).encode()
    assert acquire[25:].hex() == (
        "14"
        + "000000014c"
        + "0000000000000004"
        + "00000002"
        + "0000000000000064"
        + "0000000000000009"
    )
    assert Envelope(0, 0, 0, Delete(b"a", None)).encode()[-1:] == b"\x00"  # None != b""
    assert Envelope(0, 0, 0, Delete(b"a", b"")).encode()[-5:] == b"\x01\x00\x00\x00\x00"


def test_none_and_empty_range_end_are_different() -> None:
    for end in (None, b""):
        assert Envelope.decode(Envelope(1, 1, 1, Delete(b"a", end)).encode()).command == Delete(
            b"a", end
        )


# --- garbage ---------------------------------------------------------------------------------

SAMPLE = Envelope(
    3,
    4,
    5,
    Txn(
        (Compare(b"k", CompareTarget.VALUE, CompareOp.EQUAL, b"v"),),
        (Put(b"k", b"w"), Range(b"a", b"z", 3)),
        (Delete(b"k"),),
    ),
).encode()


def test_every_truncation_is_rejected() -> None:
    for cut in range(len(SAMPLE)):
        with pytest.raises(CommandDecodeError, match=r"truncated|cannot decode"):
            Envelope.decode(SAMPLE[:cut])


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(CommandDecodeError, match="trailing"):
        Envelope.decode(SAMPLE + b"\x00")


def test_unknown_version_is_rejected_with_advice() -> None:
    with pytest.raises(CommandDecodeError, match=r"unknown envelope version 2.*upgrade"):
        Envelope.decode(b"\x02" + SAMPLE[1:])


def test_unknown_command_tag_is_rejected() -> None:
    data = bytearray(Envelope(1, 1, 1, Noop()).encode())
    data[25] = 99
    with pytest.raises(CommandDecodeError, match="unknown command tag 99"):
        Envelope.decode(bytes(data))


def test_nested_txn_and_unknown_op_tags_are_rejected() -> None:
    inner = Envelope(1, 1, 1, Txn((), (Put(b"a", b"b"),), ())).encode()
    op_tag_at = 25 + 1 + 4 + 4  # tag, compares count, success count
    for bad in (Txn.TAG, 0, 77):
        data = bytearray(inner)
        data[op_tag_at] = bad
        with pytest.raises(CommandDecodeError, match=f"unknown txn op tag {bad}"):
            Envelope.decode(bytes(data))


def test_bad_enum_boolean_and_utf8_are_rejected() -> None:
    cmp = Envelope(
        1, 1, 1, Txn((Compare(b"k", CompareTarget.VERSION, CompareOp.LESS, 1),))
    ).encode()
    target_at = 25 + 1 + 4 + 4 + 1
    for offset, value, message in (
        (target_at, 9, "unknown CompareTarget 9"),
        (target_at + 1, 0, "unknown CompareOp 0"),
    ):
        data = bytearray(cmp)
        data[offset] = value
        with pytest.raises(CommandDecodeError, match=message):
            Envelope.decode(bytes(data))
    put = bytearray(Envelope(1, 1, 1, Put(b"k", b"v")).encode())
    put[-1] = 2
    with pytest.raises(CommandDecodeError, match="boolean byte must be 0 or 1"):
        Envelope.decode(bytes(put))
    name = bytearray(Envelope(1, 1, 1, LockRelease("ab", 1)).encode())
    name[30] = 0xFF  # first byte of the name
    with pytest.raises(CommandDecodeError, match="invalid UTF-8"):
        Envelope.decode(bytes(name))


def test_absurd_counts_are_rejected_without_looping() -> None:
    data = bytearray(Envelope(1, 1, 1, Txn()).encode())
    data[26:30] = b"\xff\xff\xff\xff"
    with pytest.raises(CommandDecodeError, match="count"):
        Envelope.decode(bytes(data))


@SETTINGS
@given(data=st.binary(max_size=80))
def test_arbitrary_bytes_decode_canonically_or_are_rejected(data: bytes) -> None:
    try:
        env = Envelope.decode(data)
    except CommandDecodeError:
        return
    assert env.encode() == data


@SETTINGS
@given(env=envelopes, flip=st.integers(0, 10_000), to=u8)
def test_corrupted_encodings_decode_canonically_or_are_rejected(
    env: Envelope, flip: int, to: int
) -> None:
    data = bytearray(env.encode())
    data[flip % len(data)] = to
    try:
        decoded = Envelope.decode(bytes(data))
    except CommandDecodeError:
        return
    assert decoded.encode() == bytes(data)


def test_outcome_garbage_is_rejected() -> None:
    good = encode_outcome(FsmError(ErrorCode.NOT_FOUND, "gone"))
    for cut in range(len(good)):
        with pytest.raises(DecodeError):
            decode_outcome(good[:cut])
    for bad in (b"\x02\x28" + good[2:], b"\x01\x63", b"\x01\xff\x04\x00\x00\x00\x00"):
        with pytest.raises(DecodeError, match="unknown"):
            decode_outcome(bad)
    with pytest.raises(DecodeError, match="trailing"):
        decode_outcome(good + b"x")


def test_encoding_rejects_values_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Envelope(1, 1, 1, LeaseGrant(2**64)).encode()
    with pytest.raises(ValueError, match="out of range"):
        Envelope(-1, 1, 1, Noop()).encode()
    with pytest.raises(TypeError, match="VALUE compare needs bytes"):
        Envelope(1, 1, 1, Txn((Compare(b"k", CompareTarget.VALUE, CompareOp.EQUAL, 3),))).encode()
    with pytest.raises(TypeError, match="needs an int"):
        Envelope(
            1, 1, 1, Txn((Compare(b"k", CompareTarget.LEASE, CompareOp.EQUAL, b"x"),))
        ).encode()


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(CommandDecodeError, ValueError)
