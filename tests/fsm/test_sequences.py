"""Sequences (`coordinator/fsm/sequences.py`): contiguous blocks, never reissued (through
retries, leader changes and snapshot/restore), explicit creation, bounds and exhaustion."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.fsm import (
    ErrorCode,
    EventKind,
    FsmError,
    SequenceBlock,
    SequenceCreate,
    SequenceInfo,
    SequenceNext,
    StateMachine,
)
from coordinator.fsm.sequences import MAX_BLOCK_COUNT
from tests.fsm.support import Driver

I64_MAX = 2**63 - 1


@pytest.fixture
def d() -> Driver:
    return Driver()


def test_blocks_are_contiguous_and_move_forward(d: Driver) -> None:
    assert d.ok(SequenceCreate("s", start=10, increment=5)) == SequenceInfo("s", 10, 5, 1)
    block = d.ok(SequenceNext("s", 3))
    assert block == SequenceBlock(10, 3, 5, 2)
    assert isinstance(block, SequenceBlock) and list(block.values) == [10, 15, 20]
    assert d.ok(SequenceNext("s")) == SequenceBlock(25, 1, 5, 3)
    assert d.m.sequence_current("s") == SequenceInfo("s", 30, 5, 3)
    assert [(e.kind, e.key, e.number) for e in d.m.events_since(1)] == [
        (EventKind.SEQUENCE, b"s", 10),
        (EventKind.SEQUENCE, b"s", 25),
        (EventKind.SEQUENCE, b"s", 30),
    ]


def test_a_retried_next_gets_the_same_block_and_takes_nothing(d: Driver) -> None:
    d.ok(SequenceCreate("s"))
    first = d.run(SequenceNext("s", 4), client=7, seq=1)
    retry = d.run(SequenceNext("s", 4), client=7, seq=1)
    assert retry.result == first.result == SequenceBlock(1, 4, 1, 2)
    assert retry.duplicate
    assert d.ok(SequenceNext("s", 1)) == SequenceBlock(5, 1, 1, 3)


@pytest.mark.parametrize(
    ("cmd", "code", "message"),
    [
        (SequenceNext("nope"), ErrorCode.NOT_FOUND, "create it first"),
        (SequenceCreate("s"), ErrorCode.ALREADY_EXISTS, "next value 1, increment 1"),
        (SequenceCreate("t", increment=0), ErrorCode.INVALID_ARGUMENT, "increment must be"),
        (SequenceCreate("t", increment=-1), ErrorCode.INVALID_ARGUMENT, "increment must be"),
        (SequenceCreate(""), ErrorCode.INVALID_ARGUMENT, "sequence name must not be empty"),
        (SequenceNext("s", 0), ErrorCode.INVALID_ARGUMENT, "count must be between 1"),
        (SequenceNext("s", MAX_BLOCK_COUNT + 1), ErrorCode.INVALID_ARGUMENT, "count must be"),
        (SequenceNext("", 1), ErrorCode.INVALID_ARGUMENT, "must not be empty"),
    ],
)
def test_bad_sequence_requests(d: Driver, cmd: SequenceNext, code: ErrorCode, message: str) -> None:
    d.ok(SequenceCreate("s"))
    assert message in d.fails(cmd, code).message


def test_current_of_a_missing_sequence_is_not_found(d: Driver) -> None:
    with pytest.raises(FsmError) as info:
        d.m.sequence_current("nope")
    assert info.value.code is ErrorCode.NOT_FOUND


def test_a_sequence_runs_out_before_it_could_wrap(d: Driver) -> None:
    d.ok(SequenceCreate("s", start=I64_MAX - 10, increment=3))
    assert d.ok(SequenceNext("s", 3)) == SequenceBlock(I64_MAX - 10, 3, 3, 2)
    err = d.fails(SequenceNext("s", 1), ErrorCode.OUT_OF_RANGE)
    assert "exhausted: only 0 values remain" in err.message
    d.ok(SequenceCreate("t", start=I64_MAX - 10, increment=3))
    assert "only 3 values remain" in d.fails(SequenceNext("t", 4), ErrorCode.OUT_OF_RANGE).message
    assert d.ok(SequenceNext("t", 3)) == SequenceBlock(I64_MAX - 10, 3, 3, 4)


def test_negative_starts_are_allowed(d: Driver) -> None:
    d.ok(SequenceCreate("s", start=-(2**63), increment=2))
    assert d.ok(SequenceNext("s", 2)) == SequenceBlock(-(2**63), 2, 2, 2)


@settings(derandomize=True, deadline=None, database=None, max_examples=60)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["next", "retry", "snapshot", "term"]),
            st.sampled_from(["a", "b"]),
            st.integers(1, 5),
        ),
        max_size=60,
    )
)
def test_values_are_never_issued_twice(steps: list[tuple[str, str, int]]) -> None:
    d = Driver()
    d.ok(SequenceCreate("a", start=1, increment=1))
    d.ok(SequenceCreate("b", start=-5, increment=7))
    issued: dict[str, list[int]] = {"a": [], "b": []}
    last_seq = None
    for action, name, count in steps:
        if action == "snapshot":
            restored = StateMachine()
            restored.restore(d.m.snapshot())
            d.m = restored
            continue
        if action == "term":
            d.new_term()
            continue
        if action == "retry" and last_seq is not None:
            again = d.run(SequenceNext(*last_seq[1]), client=3, seq=last_seq[0])
            assert again.duplicate
            continue
        d.seq += 1
        applied = d.run(SequenceNext(name, count), client=3, seq=d.seq)
        last_seq = (d.seq, (name, count))
        block = applied.result
        assert isinstance(block, SequenceBlock)
        values = list(block.values)
        assert len(values) == count
        assert not issued[name] or values[0] > issued[name][-1]
        issued[name] += values
    for values in issued.values():
        assert len(values) == len(set(values))
        assert values == sorted(values)
