"""The key-value register model (`KvModel`, its input `KvInput`) that the linearizability
checker (`linearizability.py`) checks the simulator's and the nemesis's KV histories against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .linearizability import UNKNOWN, Model, Operation, ReadOnlyHint


@dataclass(frozen=True, slots=True)
class KvInput:
    """A KV operation. `value` is what put/cas writes; `expected` is what cas compares with.

    None stands for "absent" in both, so `cas(key, expected=None, value=v)` creates the key.
    """

    kind: Literal["put", "get", "cas"]
    key: str
    value: str | None = None
    expected: str | None = None


class KvModel(Model[str | None, KvInput, object], ReadOnlyHint[KvInput, object]):
    """A map of independent registers with put, get and compare-and-set.

    Outputs: put -> None; get -> str | None (None = absent); cas -> bool (True iff swapped).
    The state of one partition is the key's current value (None = absent), so partitions are
    keys.

    With an UNKNOWN output, where the checker places the op: put always takes effect; cas swaps
    iff the state equals `expected`; get has no effect. (The checker itself covers "never".)
    """

    def init(self) -> str | None:
        return None

    def step(self, state: str | None, inp: KvInput, out: object) -> tuple[bool, str | None]:
        match inp.kind:
            case "put":
                return (out is UNKNOWN or out is None), inp.value
            case "get":
                seen_ok = (out is None or isinstance(out, str)) and out == state
                return (out is UNKNOWN or seen_ok), state
            case "cas":
                swaps = state == inp.expected
                after = inp.value if swaps else state
                return (out is UNKNOWN or (isinstance(out, bool) and out == swaps)), after
        raise ValueError(f"unknown KV operation kind: {inp.kind!r}")

    def read_only(self, inp: KvInput, out: object) -> bool:
        # A get never writes. A cas changes nothing if it failed, or if it writes back the
        # value it expected.
        match inp.kind:
            case "get":
                return True
            case "cas":
                return out is False or inp.value == inp.expected
            case "put":
                return False
        raise ValueError(f"unknown KV operation kind: {inp.kind!r}")

    def partition(
        self, ops: Sequence[Operation[KvInput, object]]
    ) -> Sequence[Sequence[Operation[KvInput, object]]]:
        by_key: dict[str, list[Operation[KvInput, object]]] = {}
        for op in ops:
            by_key.setdefault(op.inp.key, []).append(op)
        return [by_key[key] for key in sorted(by_key)]

    def describe(self, inp: KvInput, out: object) -> str:
        match inp.kind:
            case "put":
                call = f"put({inp.key!r}, {_show(inp.value)})"
                result = "?" if out is UNKNOWN else "ok" if out is None else repr(out)
            case "get":
                call = f"get({inp.key!r})"
                result = "?" if out is UNKNOWN else _show(out)
            case "cas":
                call = f"cas({inp.key!r}, expected={_show(inp.expected)}, new={_show(inp.value)})"
                if out is UNKNOWN:
                    result = "?"
                elif isinstance(out, bool):
                    result = "swapped" if out else "not swapped"
                else:
                    result = repr(out)
        return f"{call} -> {result}"


def _show(value: object) -> str:
    return "absent" if value is None else repr(value)
