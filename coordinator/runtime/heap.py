"""The member's state machine and Python's cyclic garbage collector.

A member keeps its whole key space as Python objects: a million keys are about a million
objects the collector tracks, all created at once when a snapshot is decoded (at start, or
when the leader sends one). Left alone, the collector costs such a decode three ways:

- while the objects are being created it keeps running collections over the growing heap,
  though none of them can free anything (every object is still referenced): a third of the
  decode's time (a million keys decoded in 3.1 s with the collector paused, 4.9 s without;
  measured 2026-11-26);
- once it is back on, the million new objects are still in the youngest generation, so they
  are scanned again at the first allocations, then once more a generation up: 0.15-0.19 s
  each time on this machine;
- and from then on every full collection walks them all again (0.17-0.25 s a time, with the
  event loop stopped) though they live until the keys change.

`image_decode` avoids all three: the collector is paused for the decode, and what is alive
after it is frozen (`gc.freeze`), so that no collection scans it again. Nothing in an image
forms a reference cycle, and reference counting still frees frozen objects as usual (a
key's old value, a deleted key); what freezing gives up is collecting *cycles* among frozen
objects. So that this cannot accumulate, each decode first unfreezes and collects the whole
heap (the state it replaces included): a cycle that became garbage while frozen lives until
the next decode at most. That collection is cheap at start, when the heap is small, and
costs one full pass when a member installs a snapshot from its leader, which is rare.

Then `release_free_heap` hands what the decode used only for a moment (its column buffers
and lists) back to the system: glibc keeps freed heap pages otherwise, and a decode of a
million keys left a member 251 MiB over its empty size with them, 212 MiB without (the same
212 MiB the previous key-by-key decode reached only after the same trim; measured 2026-12-06).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for the block (and back on after, if it was on)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def image_decode() -> Iterator[None]:
    """For decoding a whole state-machine image (see the module docstring): before the
    block, everything frozen is unfrozen and the heap collected; during it, the collector is
    paused; after it, if it succeeded, everything alive is frozen."""
    gc.unfreeze()
    gc.collect()
    with collector_paused():
        yield
        gc.freeze()
    release_free_heap()


def release_free_heap() -> bool:
    """Return the C heap's free pages to the system (glibc's `malloc_trim(0)`); False where
    the C library has no such call (the pages are then reused by later allocations only)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    # The process's own symbols (dlopen(NULL)) include the C library's.
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    return trim
