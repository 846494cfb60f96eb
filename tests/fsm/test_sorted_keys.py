"""SortedKeys against a plain sorted list: adds, removes and spans in random order, with
blocks small enough that they split and empty often."""

from __future__ import annotations

import bisect
import random

import pytest

from coordinator.fsm import sorted_keys
from coordinator.fsm.sorted_keys import SortedKeys


def _model_span(model: list[bytes], lo: bytes, hi: bytes | None) -> list[bytes]:
    start = bisect.bisect_left(model, lo)
    stop = len(model) if hi is None else bisect.bisect_left(model, hi)
    return model[start:stop] if stop > start else []


@pytest.mark.parametrize("seed", range(8))
def test_matches_a_sorted_list(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sorted_keys, "BLOCK", 4)
    rng = random.Random(seed)
    universe = [b"k%03d" % i for i in range(300)]
    initial = sorted(rng.sample(universe, rng.randrange(0, 60)))
    keys, model = SortedKeys(initial), list(initial)
    for step in range(3_000):
        key = rng.choice(universe)
        if rng.random() < 0.55:
            if key not in model:
                keys.add(key)
                bisect.insort(model, key)
        elif key in model:
            keys.remove(key)
            model.remove(key)
        else:
            with pytest.raises(KeyError):
                keys.remove(key)
        lo = rng.choice(universe) + rng.choice([b"", b"\0"])
        hi = rng.choice([None, rng.choice(universe), lo, b"k"])
        assert keys.span(lo, hi) == _model_span(model, lo, hi), (seed, step, lo, hi)
        assert len(keys) == len(model)
        _check_blocks(keys)
    assert list(keys) == model
    assert keys.span(b"", None) == model


def _check_blocks(keys: SortedKeys) -> None:
    """What keeps an insert cheap: no block past twice BLOCK, none empty, and each block's
    recorded last key is its last key."""
    blocks, lasts = keys._blocks, keys._lasts
    assert all(0 < len(b) <= 2 * sorted_keys.BLOCK for b in blocks)
    assert lasts == [b[-1] for b in blocks]


def test_empty_and_edges() -> None:
    keys = SortedKeys()
    assert keys.span(b"a", None) == [] and len(keys) == 0 and list(keys) == []
    with pytest.raises(KeyError):
        keys.remove(b"a")
    keys.add(b"b")
    assert keys.span(b"a", b"c") == [b"b"] and keys.span(b"b", b"b") == []
    assert keys.span(b"c", None) == [] and keys.span(b"a", b"b") == []
    keys.add(b"a")
    keys.add(b"c")
    assert list(keys) == [b"a", b"b", b"c"]
    keys.remove(b"c")
    keys.add(b"d")  # after the old last key: appended, the block's last key follows
    assert keys.span(b"c", None) == [b"d"]
