"""The core's vocabulary (`coordinator/raft/messages.py`): ConfState's codec and value types.

ConfState travels inside CONF log entries and snapshots, so its codec must round-trip every
valid configuration, be canonical (sorted ids, one encoding per value) and reject anything
else with a ValueError that says what is wrong, never with a lower-level error from
`struct` that a caller catching ValueError would miss.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.raft import (
    NONE,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=200)

node_ids = st.integers(min_value=1, max_value=2**64 - 1)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    voters = draw(st.frozensets(node_ids, max_size=7))
    learners = draw(st.frozensets(node_ids, max_size=4))
    return ConfState(voters, learners - voters)


def raw(voters: list[int], learners: list[int], version: int = 1) -> bytes:
    fmt = f">BII{len(voters)}Q{len(learners)}Q"
    return struct.pack(fmt, version, len(voters), len(learners), *voters, *learners)


@SETTINGS
@given(conf=conf_states())
def test_conf_state_round_trips(conf: ConfState) -> None:
    data = conf.encode()
    assert ConfState.decode(data) == conf
    assert len(data) == 9 + 8 * (len(conf.voters) + len(conf.learners))


@SETTINGS
@given(conf=conf_states())
def test_conf_state_encoding_is_canonical(conf: ConfState) -> None:
    """Equal values encode to equal bytes, whatever order the sets were built in."""
    rebuilt = ConfState(frozenset(sorted(conf.voters, reverse=True)), frozenset(conf.learners))
    assert rebuilt.encode() == conf.encode()
    assert conf.encode() == raw(sorted(conf.voters), sorted(conf.learners))


def test_conf_state_examples() -> None:
    conf = ConfState(frozenset({3, 1}), frozenset({7}))
    assert conf.encode() == raw([1, 3], [7])
    assert conf.members == {1, 3, 7}
    assert ConfState.decode(ConfState().encode()) == ConfState()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"unknown ConfState encoding version b''"),
        (b"\x02" + raw([1], [])[1:], r"unknown ConfState encoding version b'\\x02'"),
        (b"\x00", r"unknown ConfState encoding version b'\\x00'"),
        (raw([1, 2], [3]) + b"\x00", r"trailing bytes"),
    ],
    ids=["empty", "future-version", "zero-version", "trailing-byte"],
)
def test_conf_state_decode_rejects_garbage(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConfState.decode(data)


@pytest.mark.parametrize(
    "data",
    [b"\x01", b"\x01\x00\x00", raw([1, 2], [3])[:-1], raw([1, 2], [3])[:16]],
    ids=["version-only", "short-header", "last-id-cut", "fewer-ids-than-counted"],
)
def test_conf_state_decode_rejects_truncated_input_with_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="ConfState"):
        ConfState.decode(data)


@st.composite
def near_encodings(draw: st.DrawFn) -> bytes:
    """Byte strings shaped like encodings: any version, small ids including 0 and repeats,
    in any order, sometimes cut short or with bytes appended."""
    ids = st.lists(st.integers(0, 4), max_size=4)
    data = raw(draw(ids), draw(ids), version=draw(st.sampled_from([1, 1, 1, 0, 2])))
    cut = draw(st.integers(0, len(data)))
    return draw(st.sampled_from([data, data[:cut], data + b"\x00"]))


@SETTINGS
@given(data=near_encodings())
def test_conf_state_decode_accepts_only_well_formed_input(data: bytes) -> None:
    """Anything accepted decodes to a value whose own encoding decodes to that value; a
    canonical encoding (sorted, distinct, positive ids, disjoint sets) round-trips exactly."""
    try:
        conf = ConfState.decode(data)
    except ValueError:
        return
    assert ConfState.decode(conf.encode()) == conf
    if _is_canonical(data):
        assert conf.encode() == data


def _is_canonical(data: bytes) -> bool:
    nv, nl = struct.unpack_from(">II", data, 1)
    ids = struct.unpack_from(f">{nv + nl}Q", data, 9)
    voters, learners = ids[:nv], ids[nv:]
    return (
        list(voters) == sorted(set(voters))
        and list(learners) == sorted(set(learners))
        and not set(voters) & set(learners)
        and 0 not in ids
    )


def test_conf_state_decode_rejects_a_node_that_is_voter_and_learner() -> None:
    with pytest.raises(ValueError, match=r"disjoint|both"):
        ConfState.decode(raw([1, 2], [2]))


def test_conf_state_decode_rejects_node_id_zero() -> None:
    with pytest.raises(ValueError, match="0"):
        ConfState.decode(raw([0, 1], []))


# --- value types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        Entry(1, 1),
        HardState(),
        ConfState(),
        SnapshotMeta(),
        Snapshot(),
        Message(MessageType.APP),
    ],
    ids=lambda v: type(v).__name__,
)
def test_values_are_frozen_and_slotted(value: object) -> None:
    field = dataclasses.fields(value)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, 0)
    assert not hasattr(value, "__dict__")


def test_defaults_mean_nothing_yet() -> None:
    assert NONE == 0
    assert HardState() == HardState(term=0, vote=NONE, commit=0)
    assert Snapshot().empty
    assert not Snapshot(SnapshotMeta(index=1)).empty
    assert Entry(1, 1).kind is EntryKind.NORMAL
    assert Entry(1, 1).data == b""
