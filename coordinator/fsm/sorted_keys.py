"""The KV's keys in order, as a list of sorted blocks.

One sorted list made inserting a key cost a memmove of every key after it: 0.2 ms a new key
at a million keys, on every member, in the apply path. Blocks of at most `2 * BLOCK` keys
bound that to a few kilobytes, and the block holding a key is found by bisecting the blocks'
last keys. Ranges still come out as one list in key order.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator

BLOCK = 1024
"""Keys per block when built from a sorted list; a block splits in two past twice this."""


class SortedKeys:
    __slots__ = ("_blocks", "_lasts", "_len")

    def __init__(self, ordered: Iterable[bytes] = ()) -> None:
        """`ordered`: distinct keys in ascending order (not checked)."""
        keys = list(ordered)
        self._blocks: list[list[bytes]] = [keys[i : i + BLOCK] for i in range(0, len(keys), BLOCK)]
        self._lasts: list[bytes] = [block[-1] for block in self._blocks]
        """The last key of each block: bisecting it finds the block a key belongs in."""
        self._len = len(keys)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[bytes]:
        return itertools.chain.from_iterable(self._blocks)

    def add(self, key: bytes) -> None:
        """Insert `key`, which must not be present."""
        blocks, lasts = self._blocks, self._lasts
        self._len += 1
        if not blocks:
            blocks.append([key])
            lasts.append(key)
            return
        i = bisect.bisect_left(lasts, key)
        if i == len(blocks):  # past every key: the end of the last block
            i -= 1
            blocks[i].append(key)
            lasts[i] = key
        else:
            bisect.insort(blocks[i], key)
        block = blocks[i]
        if len(block) > 2 * BLOCK:
            half = len(block) // 2
            blocks[i : i + 1] = [block[:half], block[half:]]
            lasts[i : i + 1] = [block[half - 1], block[-1]]

    def remove(self, key: bytes) -> None:
        """Delete `key`, which must be present (KeyError if it is not)."""
        blocks, lasts = self._blocks, self._lasts
        i = bisect.bisect_left(lasts, key)
        block = blocks[i] if i < len(blocks) else []
        j = bisect.bisect_left(block, key)
        if j == len(block) or block[j] != key:
            raise KeyError(key)
        del block[j]
        self._len -= 1
        if not block:
            del blocks[i]
            del lasts[i]
        elif j == len(block):
            lasts[i] = block[-1]

    def span(self, lo: bytes, hi: bytes | None) -> list[bytes]:
        """The keys k with lo <= k < hi (hi None: no upper bound), in order."""
        blocks, lasts = self._blocks, self._lasts
        first = bisect.bisect_left(lasts, lo)
        if first == len(blocks) or (hi is not None and hi <= lo):
            return []
        start = bisect.bisect_left(blocks[first], lo)
        last = len(blocks) if hi is None else bisect.bisect_left(lasts, hi)
        if hi is None or last == len(blocks):  # to the end of the last block
            last, stop = len(blocks) - 1, len(blocks[-1])
        else:
            stop = bisect.bisect_left(blocks[last], hi)
        if first == last:
            return blocks[first][start:stop]
        out = blocks[first][start:]
        for block in blocks[first + 1 : last]:
            out += block
        out += blocks[last][:stop]
        return out
