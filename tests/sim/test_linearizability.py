"""Tests for coordinator.testing.linearizability.

Three layers:
- hand-written histories, each a known case with a known verdict;
- a naive twin: a brute-force checker that tries every real-time-consistent order of every
  subset of the history (dropping unknown-outcome ops is the "never took effect" case). It
  replays each order on a plain dict, with KV semantics written independently of `KvModel`,
  and never partitions by key. It must agree with `check` on thousands of random small
  histories;
- a performance smoke run on a long generated history. It prints numbers and asserts no
  times.

All randomness comes from seeded `random.Random` instances.
"""

from __future__ import annotations

import copy
import itertools
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.testing.kv_model import KvInput, KvModel
from coordinator.testing.linearizability import (
    UNKNOWN,
    CheckResult,
    Model,
    Operation,
    ReadOnlyHint,
    Unknown,
    check,
)

Op = Operation[KvInput, object]
MODEL = KvModel()
Span = tuple[int, int | None]  # (call_us, ret_us)


def put(client: int, key: str, value: str, call: int, ret: int | None) -> Op:
    return Operation(
        client, KvInput("put", key, value), call, ret, UNKNOWN if ret is None else None
    )


def get(client: int, key: str, seen: str | None, call: int, ret: int) -> Op:
    return Operation(client, KvInput("get", key), call, ret, seen)


def cas(client: int, key: str, expected: str | None, value: str, *, span: Span, out: bool) -> Op:
    inp = KvInput("cas", key, value=value, expected=expected)
    call, ret = span
    return Operation(client, inp, call, ret, out if ret is not None else UNKNOWN)


def unknown_put(client: int, key: str, value: str, call: int) -> Op:
    return Operation(client, KvInput("put", key, value), call, None, UNKNOWN)


# --- Hand-written histories --------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check(MODEL, [])
    assert result == CheckResult(True, 0, 0, 0, None, result.explanation)


def test_sequential_history_is_linearizable() -> None:
    ops = [put(1, "x", "a", 0, 10), get(2, "x", "a", 20, 30), put(1, "x", "b", 40, 50)]
    assert check(MODEL, ops).ok is True


def test_stale_read_after_completed_write_is_not_linearizable() -> None:
    ops = [
        put(1, "x", "a", 0, 10),
        put(1, "x", "b", 20, 30),
        get(2, "x", "a", 40, 50),  # "b" completed before this read began
    ]
    result = check(MODEL, ops)
    assert result.ok is False
    assert result.failing_partition is not None
    assert len(result.failing_partition) == 3


def test_read_of_absent_key_after_completed_write_is_not_linearizable() -> None:
    assert check(MODEL, [put(1, "x", "a", 0, 10), get(2, "x", None, 11, 12)]).ok is False


def test_concurrent_writes_with_reads_seeing_either_order_are_linearizable() -> None:
    writes = [put(1, "x", "a", 0, 100), put(2, "x", "b", 0, 100)]
    # Readers concurrent with both writes may see a then b, or b then a.
    for first, second in [("a", "b"), ("b", "a")]:
        ops = [*writes, get(3, "x", first, 10, 20), get(4, "x", second, 30, 40)]
        assert check(MODEL, ops).ok is True
    # But once a reader saw b after a, no later reader may see a again.
    ops = [
        *writes,
        get(3, "x", "a", 10, 20),
        get(3, "x", "b", 30, 40),
        get(4, "x", "a", 50, 60),
    ]
    assert check(MODEL, ops).ok is False


def test_cas_succeeding_twice_from_the_same_expected_value_is_not_linearizable() -> None:
    ops = [
        put(1, "x", "a", 0, 10),
        cas(2, "x", "a", "b", span=(20, 30), out=True),
        cas(3, "x", "a", "c", span=(40, 50), out=True),  # x is "b" by now
    ]
    assert check(MODEL, ops).ok is False


def test_concurrent_cas_only_one_may_win() -> None:
    both_win = [
        put(1, "x", "a", 0, 10),
        cas(2, "x", "a", "b", span=(20, 50), out=True),
        cas(3, "x", "a", "c", span=(20, 50), out=True),
    ]
    one_wins = [*both_win[:2], cas(3, "x", "a", "c", span=(20, 50), out=False)]
    assert check(MODEL, both_win).ok is False
    assert check(MODEL, one_wins).ok is True


def test_cas_with_expected_none_creates_an_absent_key() -> None:
    ops = [cas(1, "x", None, "a", span=(0, 10), out=True), get(2, "x", "a", 20, 30)]
    assert check(MODEL, ops).ok is True
    ops = [put(1, "x", "z", 0, 5), cas(1, "x", None, "a", span=(6, 10), out=True)]
    assert check(MODEL, ops).ok is False


def test_read_of_a_value_never_written_is_not_linearizable() -> None:
    ops = [put(1, "x", "a", 0, 10), get(2, "x", "ghost", 5, 15)]
    assert check(MODEL, ops).ok is False


def test_unknown_outcome_put_explains_a_later_read() -> None:
    ops = [
        put(1, "x", "a", 0, 10),
        unknown_put(2, "x", "b", 20),  # client 2 timed out
        get(3, "x", "b", 100, 110),
        get(3, "x", "b", 200, 210),
    ]
    assert check(MODEL, ops).ok is True


def test_unknown_outcome_put_may_take_effect_after_later_reads() -> None:
    ops = [
        put(1, "x", "a", 0, 10),
        unknown_put(2, "x", "b", 20),
        get(3, "x", "a", 100, 110),  # b not applied yet ...
        get(3, "x", "b", 200, 210),  # ... now it is
    ]
    assert check(MODEL, ops).ok is True


def test_unknown_outcome_put_may_never_take_effect() -> None:
    ops = [unknown_put(2, "x", "b", 0), get(3, "x", None, 100, 110)]
    assert check(MODEL, ops).ok is True


def test_unknown_outcome_put_cannot_take_effect_before_its_call() -> None:
    ops = [get(3, "x", "b", 0, 10), unknown_put(2, "x", "b", 20)]
    assert check(MODEL, ops).ok is False


def test_unknown_outcome_put_takes_effect_at_most_once() -> None:
    ops = [
        unknown_put(2, "x", "b", 0),
        get(3, "x", "b", 10, 20),
        put(1, "x", "a", 30, 40),
        get(3, "x", "b", 50, 60),  # b would have to be applied twice
    ]
    assert check(MODEL, ops).ok is False


def test_unknown_outcome_cas_explains_a_later_read_only_if_it_could_swap() -> None:
    unknown_cas = cas(2, "x", "a", "b", span=(20, None), out=False)
    ops = [put(1, "x", "a", 0, 10), unknown_cas, get(3, "x", "b", 100, 110)]
    assert check(MODEL, ops).ok is True
    ops = [put(1, "x", "z", 0, 10), unknown_cas, get(3, "x", "b", 100, 110)]
    assert check(MODEL, ops).ok is False


def test_unknown_outcome_get_has_no_effect() -> None:
    ops = [
        put(1, "x", "a", 0, 10),
        Operation(2, KvInput("get", "x"), 20, None, UNKNOWN),
        get(3, "x", "a", 30, 40),
    ]
    assert check(MODEL, ops).ok is True


def test_equal_timestamps_count_as_concurrent() -> None:
    # The write returns at 10 and the read is called at 10: either order is allowed.
    assert check(MODEL, [put(1, "x", "a", 0, 10), get(2, "x", None, 10, 20)]).ok is True
    assert check(MODEL, [put(1, "x", "a", 0, 10), get(2, "x", None, 11, 20)]).ok is False


def test_keys_are_checked_independently() -> None:
    ops = [
        put(1, "x", "a", 0, 10),
        put(2, "y", "b", 0, 10),
        get(3, "x", "a", 20, 30),
        get(3, "y", "b", 20, 30),
    ]
    result = check(MODEL, ops)
    assert result.ok is True
    assert result.partitions == 2
    assert result.ops_checked == 4


def test_many_concurrent_unknown_writes_stay_cheap() -> None:
    # Twenty unknown puts alive at once, then a read of a value nobody wrote. A search that
    # enumerates subsets of the unknown puts would need ~2**20 nodes.
    ops: list[Op] = [unknown_put(100 + i, "x", f"u{i}", 0) for i in range(20)]
    for j in range(30):
        ops.append(put(1, "x", f"a{j}", 1 + 4 * j, 2 + 4 * j))
        ops.append(get(2, "x", f"a{j}", 3 + 4 * j, 4 + 4 * j))
    good = check(MODEL, [*ops, get(2, "x", "u7", 1000, 1001)], max_states=200_000)
    bad = check(MODEL, [*ops, get(2, "x", "ghost", 1000, 1001)], max_states=200_000)
    print(f"\n20 unknown puts: {good.states_explored} / {bad.states_explored} states explored")
    assert good.ok is True
    assert bad.ok is False


# --- Failures explain themselves ------------------------------------------------------------


def test_explanation_names_the_failing_keys_ops() -> None:
    ops = [
        put(1, "x", "a", 0, 10),
        get(2, "x", "a", 20, 30),
        put(1, "y", "one", 0, 10),
        put(1, "y", "two", 20, 30),
        get(2, "y", "one", 40, 50),
        put(3, "z", "c", 0, 10),
    ]
    result = check(MODEL, ops)
    assert result.ok is False
    assert result.partitions == 3
    assert result.failing_partition is not None
    assert {op.inp.key for op in result.failing_partition} == {"y"}
    text = result.explanation
    assert text.startswith("not linearizable: partition 2 of 3")
    assert "put('y', 'two') -> ok" in text
    assert "get('y') -> 'one': the model rejects this output in this state" in text
    assert "state after the prefix: 'two'" in text
    assert "'x'" not in text
    assert "'z'" not in text


def test_explanation_shows_unknown_outcomes_and_infinite_returns() -> None:
    ops = [
        unknown_put(7, "k", "v", 5),
        Operation(9, KvInput("get", "k"), 6, None, UNKNOWN),
        get(8, "k", "w", 10, 20),
    ]
    result = check(MODEL, ops)
    assert result.ok is False
    assert "get('k') -> ?" not in result.explanation  # no effect, so never a candidate
    assert "client 7 [5us, inf] put('k', 'v') -> ?" in result.explanation
    assert "client 8 [10us, 20us] get('k') -> 'w'" in result.explanation


def test_budget_exhaustion_gives_up_without_raising() -> None:
    rng = random.Random(7)
    ops = [put(c, "x", f"v{c}", 0, 1000) for c in range(12)]
    ops += [get(20 + c, "x", f"v{rng.randrange(12)}", 0, 1000) for c in range(12)]
    ops.append(get(99, "x", "ghost", 2000, 2001))
    result = check(MODEL, ops, max_states=50)
    assert result.ok is None
    assert result.states_explored <= 50
    assert result.explanation.startswith("gave up: partition 1 of 1")
    assert result.failing_partition is not None


def test_a_definite_failure_outranks_a_partition_that_gave_up() -> None:
    hard = [put(c, "a", f"v{c}", 0, 1000) for c in range(10)]
    hard += [get(20 + c, "a", f"v{c}", 0, 1000) for c in range(10)]
    hard.append(get(99, "a", "ghost", 2000, 2001))
    easy_bad = [put(1, "b", "x", 0, 10), get(2, "b", "y", 20, 30)]
    result = check(MODEL, [*hard, *easy_bad], max_states=30)
    assert result.ok is False
    assert result.failing_partition is not None
    assert {op.inp.key for op in result.failing_partition} == {"b"}


# --- Operations and the UNKNOWN sentinel ------------------------------------------------------


def test_operation_rejects_inconsistent_outcomes() -> None:
    with pytest.raises(ValueError, match="UNKNOWN iff"):
        Operation(1, KvInput("get", "x"), 0, None, "a")
    with pytest.raises(ValueError, match="UNKNOWN iff"):
        Operation(1, KvInput("get", "x"), 0, 5, UNKNOWN)
    with pytest.raises(ValueError, match="returns before it is called"):
        Operation(1, KvInput("get", "x"), 10, 5, None)


def test_unknown_is_a_singleton() -> None:
    assert copy.deepcopy(UNKNOWN) is UNKNOWN
    assert pickle.loads(pickle.dumps(UNKNOWN)) is UNKNOWN
    assert list(Unknown) == [UNKNOWN]
    assert repr(UNKNOWN) == "UNKNOWN"


def test_a_partition_that_loses_ops_is_rejected() -> None:
    class Lossy(KvModel):
        def partition(self, ops: Sequence[Op]) -> Sequence[Sequence[Op]]:
            return [list(ops)[1:]]

    with pytest.raises(ValueError, match="exactly once"):
        check(Lossy(), [put(1, "x", "a", 0, 1), put(1, "x", "b", 2, 3)])


# --- Random histories ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """How to generate a history. Small integer times make ties and overlaps common."""

    ops: int
    clients: int
    keys: tuple[str, ...]
    gap_max_us: int = 3
    gap_min_us: int = 0
    duration_max_us: int = 8
    unknown_p: float = 0.15


VALUES = ("a", "b", "c")


def random_input(rng: random.Random, keys: Sequence[str]) -> KvInput:
    key = rng.choice(keys)
    match rng.choice(("put", "get", "get", "cas")):
        case "put":
            return KvInput("put", key, rng.choice(VALUES))
        case "get":
            return KvInput("get", key)
        case _:
            return KvInput("cas", key, rng.choice(VALUES), rng.choice((None, *VALUES)))


def apply_to_dict(store: dict[str, str], inp: KvInput) -> object:
    """The sequential KV semantics, written independently of KvModel."""
    current = store.get(inp.key)
    if inp.kind == "put":
        assert inp.value is not None
        store[inp.key] = inp.value
        return None
    if inp.kind == "get":
        return current
    if current != inp.expected:
        return False
    assert inp.value is not None
    store[inp.key] = inp.value
    return True


@dataclass(frozen=True, slots=True)
class Planned:
    effect_us: int  # when the op takes effect (ties broken by seq)
    seq: int
    client_id: int
    inp: KvInput
    call_us: int
    ret_us: int | None  # None: the client never learned the outcome
    takes_effect: bool  # False only for unknown outcomes


def executed_history(rng: random.Random, shape: Shape) -> list[Op]:
    """A linearizable history: each op takes effect at a random instant within its interval
    (for unknown outcomes: at any instant after its call, or never), in that order."""
    free_at_us = [0] * shape.clients
    planned: list[Planned] = []
    for seq in range(shape.ops):
        client = rng.randrange(shape.clients)
        call_us = free_at_us[client] + rng.randint(shape.gap_min_us, shape.gap_max_us)
        ret_us = call_us + rng.randint(0, shape.duration_max_us)
        # A client that times out moves on, so its later ops may overlap the unknown one.
        free_at_us[client] = ret_us
        inp = random_input(rng, shape.keys)
        if rng.random() < shape.unknown_p:
            effect_us = call_us + rng.randint(0, 3 * shape.duration_max_us)
            takes_effect = rng.random() < 0.5
            planned.append(Planned(effect_us, seq, client, inp, call_us, None, takes_effect))
        else:
            effect_us = rng.randint(call_us, ret_us)
            planned.append(Planned(effect_us, seq, client, inp, call_us, ret_us, True))
    store: dict[str, str] = {}
    ops: list[Op] = []
    for p in sorted(planned, key=lambda p: (p.effect_us, p.seq)):
        out = apply_to_dict(store, p.inp) if p.takes_effect else None
        seen = UNKNOWN if p.ret_us is None else out
        ops.append(Operation(p.client_id, p.inp, p.call_us, p.ret_us, seen))
    ops.sort(key=lambda op: (op.call_us, op.client_id))
    return ops


def random_output(rng: random.Random, inp: KvInput) -> object:
    match inp.kind:
        case "put":
            return None
        case "get":
            return rng.choice((None, *VALUES))
        case _:
            return rng.random() < 0.5


def with_random_outputs(rng: random.Random, ops: Sequence[Op]) -> list[Op]:
    return [
        op if op.ret_us is None else Operation(op.client_id, op.inp, op.call_us, op.ret_us, out)
        for op in ops
        for out in [random_output(rng, op.inp)]
    ]


def with_one_output_changed(rng: random.Random, ops: Sequence[Op]) -> list[Op]:
    observed = [i for i, op in enumerate(ops) if op.ret_us is not None and op.inp.kind != "put"]
    if not observed:
        return list(ops)
    i = rng.choice(observed)
    op = ops[i]
    if op.inp.kind == "cas":
        out: object = not op.out
    else:
        out = rng.choice([value for value in (None, *VALUES) if value != op.out])
    return [*ops[:i], Operation(op.client_id, op.inp, op.call_us, op.ret_us, out), *ops[i + 1 :]]


# --- The naive twin --------------------------------------------------------------------------


def must_precede(a: Op, b: Op) -> bool:
    return a.ret_us is not None and a.ret_us < b.call_us


def real_time_orders(ops: Sequence[Op], kept: list[int]) -> Iterator[list[int]]:
    """Every permutation of `kept` in which no op follows one that returned before its call."""
    for order in itertools.permutations(kept):
        if all(
            not must_precede(ops[order[j]], ops[order[i]])
            for i in range(len(order))
            for j in range(i + 1, len(order))
        ):
            yield list(order)


def legal_order(ops: Sequence[Op], order: list[int]) -> bool:
    store: dict[str, str] = {}
    for i in order:
        out = apply_to_dict(store, ops[i].inp)
        seen = ops[i].out
        if seen is not UNKNOWN and (seen != out or type(seen) is not type(out)):
            return False
    return True


def brute_force_linearizable(ops: Sequence[Op]) -> bool:
    """Does some subset of the unknown ops, dropped, leave a legal real-time-consistent order?"""
    unknown = [i for i, op in enumerate(ops) if op.ret_us is None]
    for dropped_count in range(len(unknown) + 1):
        for dropped in itertools.combinations(unknown, dropped_count):
            kept = [i for i in range(len(ops)) if i not in dropped]
            if any(legal_order(ops, order) for order in real_time_orders(ops, kept)):
                return True
    return False


def small_shape(rng: random.Random) -> Shape:
    return Shape(
        ops=rng.randint(1, 7),
        clients=3,
        keys=("x", "y")[: rng.randint(1, 2)],
        unknown_p=rng.choice((0.0, 0.15, 0.4)),
    )


class HintlessKv:
    """KvModel without the optional ReadOnlyHint, so the search cannot favour reads."""

    def init(self) -> str | None:
        return MODEL.init()

    def step(self, state: str | None, inp: KvInput, out: object) -> tuple[bool, str | None]:
        return MODEL.step(state, inp, out)

    def partition(self, ops: Sequence[Op]) -> Sequence[Sequence[Op]]:
        return MODEL.partition(ops)

    def describe(self, inp: KvInput, out: object) -> str:
        return MODEL.describe(inp, out)


MODELS: tuple[Model[str | None, KvInput, object], ...] = (MODEL, HintlessKv())


def test_only_kv_model_gives_the_read_only_hint() -> None:
    assert isinstance(MODEL, ReadOnlyHint)
    assert not isinstance(HintlessKv(), ReadOnlyHint)


def test_naive_twin_agrees_on_executed_histories() -> None:
    rng = random.Random(20240601)
    for case in range(1500):
        ops = executed_history(rng, small_shape(rng))
        assert brute_force_linearizable(ops), (case, ops)
        for model in MODELS:
            assert check(model, ops).ok is True, (case, ops)


@pytest.mark.parametrize("mutate", [with_random_outputs, with_one_output_changed])
def test_naive_twin_agrees_on_random_and_mutated_histories(
    mutate: Callable[[random.Random, Sequence[Op]], list[Op]],
) -> None:
    rng = random.Random(4242)
    verdicts = {True: 0, False: 0}
    for case in range(1500):
        ops = mutate(rng, executed_history(rng, small_shape(rng)))
        expected = brute_force_linearizable(ops)
        for model in MODELS:
            result = check(model, ops)
            assert result.ok is expected, (case, type(model), ops, result.explanation)
        verdicts[expected] += 1
    print(f"\n{mutate.__name__}: {verdicts}")
    assert verdicts[True] > 100
    assert verdicts[False] > 100


def test_verdict_does_not_depend_on_input_order() -> None:
    rng = random.Random(99)
    for case in range(200):
        shape = Shape(ops=30, clients=4, keys=("x", "y"), gap_min_us=1)
        ops = executed_history(rng, shape)
        if case % 2:
            ops = with_one_output_changed(rng, ops)
        shuffled = list(ops)
        rng.shuffle(shuffled)
        assert check(MODEL, shuffled) == check(MODEL, ops), case


_HASH_SEED_PROBE = """
import random
from coordinator.testing.kv_model import KvInput, KvModel
from coordinator.testing.linearizability import UNKNOWN, Operation, check
rng = random.Random(5)
store, ops, now_us = {}, [], 0
for i in range(600):  # executed one at a time at now_us, each seen over a random interval
    now_us += rng.randrange(3)
    key, kind = rng.choice(["alpha", "beta", "gamma"]), rng.choice(["put", "get", "cas"])
    inp = KvInput(kind, key, rng.choice("abc"), rng.choice([None, "a", "b"]))
    if kind == "put":
        store[key], out = inp.value, None
    elif kind == "get":
        out = store.get(key)
    else:
        out = store.get(key) == inp.expected
        store[key] = inp.value if out else store.get(key)
    ret_us = None if rng.random() < 0.05 else now_us + rng.randrange(20)
    call_us = max(0, now_us - rng.randrange(20))
    ops.append(Operation(i % 7, inp, call_us, ret_us, UNKNOWN if ret_us is None else out))
ghost = Operation(9, KvInput("get", "gamma"), now_us + 30, now_us + 40, "ghost")
print(repr(check(KvModel(), ops)))
print(repr(check(KvModel(), [*ops, ghost])))
print(repr(check(KvModel(), [*ops, ghost], max_states=40)))
"""


def test_results_do_not_depend_on_hash_randomization() -> None:
    root = Path(__file__).resolve().parents[2]
    outputs = set()
    for hash_seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        done = subprocess.run(
            [sys.executable, "-c", _HASH_SEED_PROBE],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1
    verdicts = [line.split(",")[0] for line in outputs.pop().splitlines()]
    assert verdicts == ["CheckResult(ok=True", "CheckResult(ok=False", "CheckResult(ok=None"]


# --- Performance smoke -----------------------------------------------------------------------


def test_performance_smoke_on_a_long_history() -> None:
    rng = random.Random(1)
    shape = Shape(
        ops=2_000,
        clients=8,
        keys=("k0", "k1", "k2", "k3", "k4"),
        gap_max_us=20,
        duration_max_us=200,
        unknown_p=0.02,
    )
    ops = executed_history(rng, shape)
    result = check(MODEL, ops)
    print(
        f"\nperf smoke: {result.ops_checked} ops, {result.partitions} partitions, "
        f"{result.states_explored} states explored"
    )
    assert result.ok is True, result.explanation


def test_performance_smoke_on_one_hot_key() -> None:
    # Ten clients on one key: about ten ops in flight at once, 5% with unknown outcomes.
    rng = random.Random(2)
    shape = Shape(
        ops=500, clients=10, keys=("hot",), gap_max_us=5, duration_max_us=100, unknown_p=0.05
    )
    ops = executed_history(rng, shape)
    mutated = with_one_output_changed(rng, ops)
    for name, history in (("linearizable", ops), ("one output changed", mutated)):
        result = check(MODEL, history)
        print(f"\nhot key, {name}: ok={result.ok}, {result.states_explored} states explored")
        assert result.ok is not None
    assert check(MODEL, ops).ok is True
