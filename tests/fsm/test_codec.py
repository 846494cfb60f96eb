"""The declared codec (`coordinator/fsm/_codec.py`): commands' layouts come from their fields.

- every command round-trips for values drawn from its *declaration* (each field's wire type
  says which values it carries), so a new command is covered without a new strategy;
- a field without a wire type is refused when the class is made, not silently skipped;
- a value of a class a tagged union does not hold cannot be encoded (it could not be read back);
- the combinators reject what they promise to reject, with the offset.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.fsm import (
    CommandDecodeError,
    Compare,
    CompareOp,
    CompareTarget,
    Envelope,
    ExpireLeaseIds,
    Noop,
    Put,
    Range,
    Txn,
    _codec,
)
from coordinator.fsm._codec import U64, Blob, Wire, declared, list_of, one_of, wire_of
from coordinator.fsm._wire import DecodeError, Reader, Writer
from coordinator.fsm.commands import COMMAND_TYPES

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=100)

_PRIMITIVES: dict[int, st.SearchStrategy[Any]] = {
    id(_codec.U32_WIRE): st.integers(0, 2**32 - 1),
    id(_codec.U64_WIRE): st.integers(0, 2**64 - 1),
    id(_codec.I64_WIRE): st.integers(-(2**63), 2**63 - 1),
    id(_codec.BOOL_WIRE): st.booleans(),
    id(_codec.BLOB_WIRE): st.binary(max_size=16),
    id(_codec.TEXT_WIRE): st.text(max_size=8),
    id(_codec.OPT_BLOB_WIRE): st.none() | st.binary(max_size=16),
}
_OPS = st.one_of(
    st.builds(Put, st.binary(max_size=4), st.binary(max_size=4)),
    st.builds(Range, st.binary(max_size=4), st.none() | st.binary(max_size=4)),
)
_SPECIAL: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    # The fields whose wire type is a combinator: what each may hold, by the class's rules.
    (Txn, "compares"): st.lists(
        st.builds(
            Compare,
            st.binary(max_size=4),
            st.sampled_from([t for t in CompareTarget if t is not CompareTarget.VALUE]),
            st.sampled_from(CompareOp),
            st.integers(0, 2**64 - 1),
        ),
        max_size=3,
    ).map(tuple),
    (Txn, "success"): st.lists(_OPS, max_size=3).map(tuple),
    (Txn, "failure"): st.lists(_OPS, max_size=3).map(tuple),
    (ExpireLeaseIds, "ids"): st.sets(st.integers(0, 2**64 - 1), max_size=6).map(
        lambda ids: tuple(sorted(ids))
    ),
}


def _from_declaration(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for field in dataclasses.fields(cls):
        special = _SPECIAL.get((cls, field.name))
        if special is not None:
            fields[field.name] = special
            continue
        (wire,) = hints[field.name].__metadata__
        fields[field.name] = _PRIMITIVES[id(wire)]
    return st.builds(cls, **fields)


@pytest.mark.parametrize("cls", COMMAND_TYPES, ids=lambda c: c.__name__)
def test_every_command_round_trips_from_its_declaration(cls: type) -> None:
    @SETTINGS
    @given(cmd=_from_declaration(cls), header=st.tuples(*[st.integers(0, 2**64 - 1)] * 3))
    def check(cmd: Any, header: tuple[int, int, int]) -> None:
        env = Envelope(*header, cmd)
        data = env.encode()
        assert Envelope.decode(data) == env
        assert data[25] == cls.TAG  # type: ignore[attr-defined]

    check()


def test_a_field_without_a_wire_type_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match=r"Bad\.size needs one wire type, has 0"):

        @declared
        @dataclass(frozen=True, slots=True)
        class Bad:
            TAG: ClassVar[int] = 200
            key: Blob
            size: int


def test_a_tagged_union_refuses_classes_it_does_not_hold() -> None:
    # Before the codec was declared, these encoded and then failed to decode.
    with pytest.raises(TypeError, match="cannot encode a Range here: Put, Delete, Txn"):
        Envelope(1, 1, 1, Range(b"a")).encode()  # type: ignore[arg-type]
    nested = Txn((), (Txn(),), ())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot encode a Txn here: Put, Delete, Range"):
        Envelope(1, 1, 1, nested).encode()


def test_a_tagged_union_refuses_duplicate_tags() -> None:
    @declared
    @dataclass(frozen=True, slots=True)
    class Twin:
        TAG: ClassVar[int] = Noop.TAG

    with pytest.raises(TypeError, match="duplicate tags"):
        one_of((Noop, Twin), "unknown {tag}")


@declared
@dataclass(frozen=True, slots=True)
class _Pair:
    TAG: ClassVar[int] = 1
    first: U64
    rest: Annotated[tuple[int, ...], list_of(_codec.U64_WIRE)]


def test_a_declared_struct_writes_its_fields_in_order_and_reads_them_back() -> None:
    wire: Wire[_Pair] = wire_of(_Pair)
    w = Writer()
    wire.write(w, _Pair(7, (1, 2)))
    data = w.getvalue()
    assert data.hex() == "0000000000000007" + "00000002" + "0000000000000001" + "0000000000000002"
    r = Reader(data, "pair")
    assert wire.read(r) == _Pair(7, (1, 2))
    r.finish()
    for cut in range(len(data)):
        with pytest.raises(DecodeError, match=r"cannot decode pair at byte \d+: (truncated|count)"):
            wire.read(Reader(data[:cut], "pair"))


def test_unknown_tags_name_the_tag_and_the_offset() -> None:
    union = one_of((_Pair,), "unknown pair tag {tag}")
    with pytest.raises(CommandDecodeError, match="cannot decode x at byte 1: unknown pair tag 9"):
        union.read(Reader(b"\x09", "x", CommandDecodeError))
