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
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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
