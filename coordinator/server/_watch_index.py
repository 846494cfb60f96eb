"""Which watches select a key: an index by key range, so one change touches only its watchers.

A watch selects one key, a prefix, or a general range [key, range_end) (range_end b"\\0": every
key >= key). Matching a change against every open watch costs O(watches) per change, which is
what made 5,000 watchers on one prefix slow every write. The index answers "which watches
select this key" in time that does not grow with the watches that do not:

- exact keys: a dict, one lookup;
- prefixes (range_end is the prefix's successor, as `concordctl watch --prefix` and etcd's
  WithPrefix build it; "everything" is the empty prefix): a dict keyed by prefix, probed with
  each of the key's len(key) + 1 prefixes, so O(len(key)) lookups (keys are <= 1 KiB);
- any other range: a list, scanned. Such watches are rare (no client of ours makes them); a
  sorted interval structure would pay off only if they were common.

Entries are stored in insertion-ordered dicts (used as ordered sets), so a key's watchers are
visited in a stable order and removal is O(1).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

W = TypeVar("W", bound=Hashable)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with `prefix` (None: there is
    none, the prefix is all 0xff bytes, so the range runs to the end)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


@dataclass(frozen=True, slots=True)
class KeyRange:
    """[key, end): end None = just `key`; end b"\\0" = every key >= key; key b"" with end
    b"\\0" = everything."""

    key: bytes
    end: bytes | None

    def prefix(self) -> bytes | None:
        """The prefix this range is exactly, or None."""
        if self.end == b"\0":
            return b"" if not self.key else (self.key if prefix_end(self.key) is None else None)
        if self.end is not None and prefix_end(self.key) == self.end:
            return self.key
        return None

    def selects(self, k: bytes) -> bool:
        if self.end is None:
            return k == self.key
        if self.end == b"\0":
            return k >= self.key
        return self.key <= k < self.end


class WatchIndex(Generic[W]):
    """Watches by the key range they select."""

    def __init__(self) -> None:
        self._exact: dict[bytes, dict[W, None]] = {}
        self._prefixes: dict[bytes, dict[W, None]] = {}
        self._ranges: dict[W, KeyRange] = {}
        self._where: dict[W, KeyRange] = {}
        """Every watch in the index -> its range (so removal needs only the watch)."""

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[W]:
        return iter(self._where)

    def add(self, watch: W, selected: KeyRange) -> None:
        if watch in self._where:
            raise ValueError(f"{watch!r} is already in the index")
        self._where[watch] = selected
        prefix = selected.prefix()
        if selected.end is None:
            self._exact.setdefault(selected.key, {})[watch] = None
        elif prefix is not None:
            self._prefixes.setdefault(prefix, {})[watch] = None
        else:
            self._ranges[watch] = selected

    def remove(self, watch: W) -> None:
        """Forget `watch` (no-op if it is not in the index)."""
        selected = self._where.pop(watch, None)
        if selected is None:
            return
        prefix = selected.prefix()
        if selected.end is None:
            _discard(self._exact, selected.key, watch)
        elif prefix is not None:
            _discard(self._prefixes, prefix, watch)
        else:
            del self._ranges[watch]

    def matching(self, key: bytes) -> Iterator[W]:
        """Every watch that selects `key`, each once."""
        exact = self._exact.get(key)
        if exact:
            yield from exact
        prefixes = self._prefixes
        if prefixes:
            for i in range(len(key) + 1):
                found = prefixes.get(key[:i])
                if found:
                    yield from found
        for watch, selected in self._ranges.items():
            if selected.selects(key):
                yield watch


def _discard(table: dict[bytes, dict[W, None]], key: bytes, watch: W) -> None:
    entries = table.get(key)
    if entries is None:
        return
    entries.pop(watch, None)
    if not entries:
        del table[key]
