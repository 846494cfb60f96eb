"""The watch hub without a network: fan-out by key range, coalescing, slow consumers, resume.

A real StateMachine applies commands (tests.fsm.support.Driver); a stand-in for the RaftLoop
exposes it, and the test calls the hub's LoopObserver methods as the loop would. The fan-out
task runs on the test's event loop, on virtual time (coordinator.testing.virtual_time);
`settle()` lets it finish its passes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import pytest

from coordinator.fsm import Put, StateMachine
from coordinator.runtime.view import RaftView
from coordinator.server._core import Core
from coordinator.server._errors import Code, ServiceError
from coordinator.server._watch import SharedBarrier
from coordinator.server._watch_index import KeyRange
from coordinator.server._watchers import RESUME_METADATA_KEY, Watcher, WatchHub
from coordinator.testing.virtual_time import run_virtual, until
from tests.fsm.support import Driver


@dataclass
class FakeLoop:
    fsm: StateMachine
    stopped: bool = False


PODS = KeyRange(b"/pods/", b"/pods0")


@dataclass
class Recorder:
    """The hub's `WatchEvents`, as the member's metrics get them."""

    open_watches: int = 0
    ended_slow: int = 0

    def watches_changed(self, open_watches: int) -> None:
        self.open_watches = open_watches

    def watch_ended_slow(self) -> None:
        self.ended_slow += 1


def hub_over(d: Driver, queue_events_max: int = 100, events: Recorder | None = None) -> WatchHub:
    return WatchHub(cast(RaftView, FakeLoop(d.m)), queue_events_max, events)


def put(d: Driver, hub: WatchHub, key: bytes, value: bytes = b"v") -> int:
    d.ok(Put(key, value))
    hub.on_applied([])
    return d.m.revision


async def settle(hub: WatchHub | None = None) -> None:
    """A few event-loop turns, and with a hub until its fan-out has passed over everything
    applied: a pass ends with a pause as long as the pass took (in loop time), so a count of
    turns alone does not say it is done."""
    for _ in range(20):
        await asyncio.sleep(0)
    if hub is not None:
        await until(lambda: hub.caught_up, 10)  # the hub has no event for it


async def drain(hub: WatchHub, w: Watcher) -> list[tuple[int, bytes]]:
    out = [(e.revision, e.key) for e in hub.catch_up(w)]
    while w.given < w.floor:
        out += [(e.revision, e.key) for e in hub.catch_up(w)]
    if w.queue:
        out += [(e.revision, e.key) for e in await hub.take(w)]
    return out


def test_only_watchers_of_the_key_get_the_event_and_each_wakes_once() -> None:
    async def main() -> None:
        d = Driver()
        hub = hub_over(d)
        pods = [hub.add(PODS, d.m.revision + 1) for _ in range(50)]
        others = [hub.add(KeyRange(b"/nodes/%d" % i, None), d.m.revision + 1) for i in range(500)]
        r1 = put(d, hub, b"/pods/a")
        r2 = put(d, hub, b"/pods/b")
        await settle(hub)
        for w in pods:
            assert w.wake.is_set()
            assert await hub.take(w) == d.m.events_since(r1)[:2]  # coalesced: both at once
            assert w.given == r2 + 1
        assert not any(w.queue or w.wake.is_set() for w in others)
        hub.close()

    run_virtual(main())


def test_a_slow_consumer_is_ended_with_its_resume_revision_and_resumes_exactly() -> None:
    async def main() -> None:
        d = Driver()
        events = Recorder()
        hub = hub_over(d, queue_events_max=3, events=events)
        start = d.m.revision + 1
        slow = hub.add(PODS, start)
        fine = hub.add(PODS, start)
        assert events.open_watches == 2
        put(d, hub, b"/pods/0")
        await settle(hub)
        seen = [(e.revision, e.key) for e in await hub.take(slow)]  # it read one, then stalled
        assert [e.key for e in await hub.take(fine)] == [b"/pods/0"]
        for i in range(10):
            put(d, hub, b"/pods/%d" % i)
            await settle(hub)
            assert [e.key for e in await hub.take(fine)] == [b"/pods/%d" % i]  # keeps up
        with pytest.raises(ServiceError) as ended:
            await hub.take(slow)
        assert ended.value.code is Code.RESOURCE_EXHAUSTED
        assert "slow consumer" in ended.value.message
        resume = slow.given
        assert resume == seen[-1][0] + 1
        assert f"resume from revision {resume}" in ended.value.message
        assert dict(ended.value.metadata)[RESUME_METADATA_KEY] == str(resume)
        assert len(hub) == 1  # dropped from the index, its queue freed
        assert not slow.queue
        assert (events.open_watches, events.ended_slow) == (1, 1)
        hub.remove(slow)  # its stream ends: the gauge stays exact (already out of the index)
        assert events.open_watches == 1

        again = hub.add(PODS, resume)  # what a client does: resume from the revision named
        later = put(d, hub, b"/pods/late")
        await settle(hub)
        got = await drain(hub, again)
        assert seen + got == [(e.revision, e.key) for e in d.m.events_since(1)]
        assert got[-1] == (later, b"/pods/late")
        hub.close()
        assert (events.open_watches, events.ended_slow) == (0, 1)

    run_virtual(main())


def test_a_watcher_that_joins_behind_the_fan_out_reads_the_gap_from_history() -> None:
    async def main() -> None:
        d = Driver()
        hub = hub_over(d)
        first = hub.add(PODS, 1)
        for i in range(5):
            put(d, hub, b"/pods/%d" % i)
        await settle(hub)
        # Joins from revision 2 while revisions 6.. are applied but not yet fanned out.
        put(d, hub, b"/pods/5")
        late = hub.add(PODS, 2)
        put(d, hub, b"/pods/6")
        await settle(hub)
        assert [r for r, _ in await drain(hub, late)] == [2, 3, 4, 5, 6, 7]
        assert [e.revision for e in await hub.take(first)] == [1, 2, 3, 4, 5, 6, 7]
        hub.close()

    run_virtual(main())


def test_stop_ends_every_watch_with_unavailable() -> None:
    async def main() -> None:
        d = Driver()
        hub = hub_over(d)
        w = hub.add(PODS, 1)
        hub.on_stop()
        with pytest.raises(ServiceError) as ended:
            await hub.take(w)
        assert ended.value.code is Code.UNAVAILABLE
        with pytest.raises(ServiceError):
            hub.add(PODS, 1)

    run_virtual(main())


class CountingCore:
    """Stands in for Core.read: each barrier completes when the test releases it."""

    def __init__(self) -> None:
        self.started: list[asyncio.Future[None]] = []

    async def read(self, serializable: bool) -> None:
        assert not serializable
        fut = asyncio.get_running_loop().create_future()
        self.started.append(fut)
        await fut


def test_watches_opening_together_share_read_barriers_asked_after_they_arrived() -> None:
    async def main() -> None:
        core = CountingCore()
        barrier = SharedBarrier(cast(Core, core))
        first = asyncio.ensure_future(barrier.wait())
        await settle()
        burst = [asyncio.ensure_future(barrier.wait()) for _ in range(100)]
        await settle()
        assert len(core.started) == 1
        core.started[0].set_result(None)
        await settle()
        assert first.done() and first.result() is None
        # The burst arrived while barrier 1 was in flight, so barrier 1 does not cover it:
        # one more barrier, started when the first ended, serves all of it.
        assert not any(w.done() for w in burst) and len(core.started) == 2
        core.started[1].set_exception(ServiceError(Code.UNAVAILABLE, "no quorum"))
        await settle()
        for w in burst:
            with pytest.raises(ServiceError):
                w.result()
        assert len(core.started) == 2

    run_virtual(main())
