"""The watch index against a naive twin: every key finds exactly the watches that select it."""

from __future__ import annotations

import random

from coordinator.server._watch_index import KeyRange, WatchIndex, prefix_end


def test_prefix_end() -> None:
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None
    assert prefix_end(b"") is None


def test_kinds_of_range() -> None:
    assert KeyRange(b"k", None).prefix() is None
    assert KeyRange(b"/pods/", b"/pods0").prefix() == b"/pods/"
    assert KeyRange(b"", b"\0").prefix() == b""
    assert KeyRange(b"a", b"c").prefix() is None
    assert KeyRange(b"a", b"\0").prefix() is None


def test_matching_equals_a_scan_of_every_watch() -> None:
    rng = random.Random(7)
    alphabet = b"ab\xff"

    def key() -> bytes:
        return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))

    index: WatchIndex[int] = WatchIndex()
    ranges: dict[int, KeyRange] = {}
    for watch in range(400):
        k = key()
        match rng.randint(0, 3):
            case 0:
                r = KeyRange(k, None)
            case 1:
                r = KeyRange(k, prefix_end(k) or b"\0")
            case 2:
                r = KeyRange(k, b"\0")
            case _:
                r = KeyRange(k, k + b"b")
        index.add(watch, r)
        ranges[watch] = r
    for watch in rng.sample(sorted(ranges), 150):
        index.remove(watch)
        del ranges[watch]
    assert len(index) == len(ranges) == len(set(index))
    for _ in range(500):
        k = key()
        found = list(index.matching(k))
        assert len(found) == len(set(found))
        assert set(found) == {w for w, r in ranges.items() if r.selects(k)}


def test_a_prefix_lookup_does_not_visit_other_watches() -> None:
    index: WatchIndex[int] = WatchIndex()
    for i in range(5000):
        index.add(i, KeyRange(b"/other/%d" % i, None))
    index.add(-1, KeyRange(b"/pods/", b"/pods0"))
    assert list(index.matching(b"/pods/a")) == [-1]
