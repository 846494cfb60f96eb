"""The watch hub: applied changes fanned out to watch streams off the Raft loop's turn.

Before. Every watch stream awaited one shared "something was applied" future; the `RaftLoop`
resolved it after each applied batch, so every stream woke on every entry, read the history
and filtered it itself: N streams cost N wake-ups and N scans per applied batch, all on the
event loop that also runs Raft, whether or not the change concerned them.

Now. The loop tells the `WatchHub` that something was applied (`on_applied`: one flag set, O(1)
on the loop's turn, whatever the number of watches). The hub's own task (`_run`) then, in its
own turns, reads the new events from the state machine's history once, finds the watches that
select each event's key through a `WatchIndex` (by exact key, by prefix, or by range; never a
scan of every watch) and appends the event to each such watch's queue, waking each touched
stream once per pass however many events it got. A pass over many watches yields to the event
loop every `_FANOUT_SLICE` deliveries, so the Raft loop is never held up by a long fan-out.

Queues. A watch's queue is bounded (`queue_events_max`). A stream that wakes takes everything
queued at once (coalescing: one response for many revisions, up to the batch size), so a
stream that is merely slow catches up in fewer, larger messages. After each pass the hub
pauses for as long as the pass (and the woken streams' first step) took, so under load watch
delivery takes about half of the event loop and Raft the rest: passes then carry more
revisions each instead of delaying writes. A stream whose queue would
overflow (its client does not read, or the member cannot write to it fast enough) is dropped
from the index, its queue freed, and ended with RESOURCE_EXHAUSTED "slow consumer", whose
message and trailing metadata (`concord-watch-resume`) name the first revision it has not been
given: a client resumes from there (the client library does so by itself), or, if that
revision has left the history meanwhile, learns it (OUT_OF_RANGE, compacted).

Start. A watch from revision S joins the index at once with `floor` = the first revision the
hub has not yet fanned out: the hub queues everything from `floor` on, and the stream reads
[S, floor) from the history itself before it drains its queue. So nothing between the start
and the live feed is lost or repeated, however far behind the hub is.

Whole revisions. The queue and the catch-up hand a stream whole revisions (a txn's or a lease
revocation's events together), so "the first revision not given" is always exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from coordinator.fsm import Applied, ErrorCode, Event, FsmError
from coordinator.runtime.view import RaftView

from ._errors import Code, ServiceError
from ._hub import stopping_error
from ._watch_index import KeyRange, WatchIndex

log = logging.getLogger("concord.server")

RESUME_METADATA_KEY = "concord-watch-resume"
"""Trailing metadata of a slow-consumer end: the revision to resume from."""

_FANOUT_SLICE = 512
"""Deliveries per turn of the fan-out task before it lets the event loop run others."""

_PAUSE_MAX_S = 0.5
"""The longest pause between two fan-out passes (see `_run`)."""

_WAKE_SLICE = 64
"""Streams woken per turn of the fan-out task."""

_CATCH_UP_EVENTS = 1000
"""About how many events a catch-up step reads at once."""


def slow_consumer(resume_revision: int, queue_events_max: int) -> ServiceError:
    return ServiceError(
        Code.RESOURCE_EXHAUSTED,
        f"slow consumer: this watch fell more than {queue_events_max} events behind, so the "
        f"member ended it; resume from revision {resume_revision}",
        ((RESUME_METADATA_KEY, str(resume_revision)),),
    )


def compacted(err: FsmError) -> ServiceError:
    return ServiceError(
        Code.OUT_OF_RANGE, f"this watch fell behind the event history: {err.message}"
    )


class WatchEvents(Protocol):
    """Told what the hub does, for metrics (the member's `MemberMetrics`): called on the
    event loop; must neither block nor raise."""

    def watches_changed(self, open_watches: int) -> None:
        """The number of watches the hub feeds changed (one added, removed or ended)."""
        ...

    def watch_ended_slow(self) -> None:
        """A watch was ended as a slow consumer."""
        ...


@dataclass(eq=False, slots=True)
class Watcher:
    """One watch stream's place in the hub. `given` <= `floor` while catching up; afterwards
    everything the hub fans out from `floor` on is queued (or the watcher has ended)."""

    selected: KeyRange
    floor: int
    """The hub queues this watch's events with revision >= floor; the stream reads older
    ones (from its start) from the history itself."""
    given: int
    """The first revision not yet handed to the stream (its resume point)."""
    queue: deque[Event] = field(default_factory=deque)
    ended: ServiceError | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class WatchHub:
    """The `LoopObserver` that fans applied events out to watchers (see the module doc)."""

    def __init__(
        self, view: RaftView, queue_events_max: int, events: WatchEvents | None = None
    ) -> None:
        if queue_events_max < 1:
            raise ValueError("a watch queue must hold at least one event")
        self._view = view
        self.queue_events_max = queue_events_max
        self._index: WatchIndex[Watcher] = WatchIndex()
        self._fanned = view.fsm.revision + 1
        """The first revision not yet fanned out. Only the fan-out task moves it."""
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stopped = view.stopped
        self.delivered = 0
        """Events fanned out so far (a counter for metrics and tests)."""
        self.ended_slow = 0
        """Watches ended as slow consumers so far."""
        self._events = events

    def __len__(self) -> int:
        return len(self._index)

    @property
    def caught_up(self) -> bool:
        """Every applied revision has been fanned out (tests wait on this, not on time)."""
        return self._fanned > self._view.fsm.revision

    # --- streams ---------------------------------------------------------------------------

    def add(self, selected: KeyRange, start_revision: int) -> Watcher:
        """A watcher of `selected` from `start_revision` (>= 1), in the index from now on."""
        if self.stopped:
            raise stopping_error()
        self._ensure_task()
        watcher = Watcher(selected, floor=max(self._fanned, start_revision), given=start_revision)
        self._index.add(watcher, selected)
        self._report_open()
        return watcher

    def remove(self, watcher: Watcher) -> None:
        self._index.remove(watcher)
        watcher.queue.clear()
        self._report_open()

    def catch_up(self, watcher: Watcher) -> list[Event]:
        """The selected events of the next revisions in [given, floor), whole revisions, about
        `_CATCH_UP_EVENTS` at a time ([] once caught up). OUT_OF_RANGE if they left the
        history."""
        if watcher.given >= watcher.floor:
            return []
        try:
            events = self._view.fsm.events_since(watcher.given)
        except FsmError as err:
            if err.code is not ErrorCode.OUT_OF_RANGE:
                raise
            raise compacted(err) from None
        out: list[Event] = []
        given = watcher.floor
        last = 0
        for count, event in enumerate(events):
            if event.revision >= watcher.floor:
                break
            if count >= _CATCH_UP_EVENTS and event.revision != last:
                given = event.revision  # a batch's worth, cut at a revision boundary
                break
            last = event.revision
            if watcher.selected.selects(event.key):
                out.append(event)
        watcher.given = given
        return out

    async def take(self, watcher: Watcher) -> list[Event]:
        """Everything queued for `watcher` (waiting for something if nothing is), whole
        revisions; raises the watcher's end (slow consumer, compacted, stopping)."""
        while not watcher.queue:
            if watcher.ended is not None:
                raise watcher.ended
            watcher.wake.clear()
            await watcher.wake.wait()
        events = list(watcher.queue)
        watcher.queue.clear()
        watcher.given = events[-1].revision + 1
        return events

    # --- LoopObserver ------------------------------------------------------------------------

    def on_applied(self, batch: Sequence[Applied]) -> None:
        if len(self._index):
            self._pending.set()
        else:
            # Nobody to deliver to: keep the boundary current, so the next watcher reads
            # only its own start's backlog and the hub never reads a history it has lost.
            self._fanned = self._view.fsm.revision + 1

    def on_restored(self) -> None:
        self.on_applied([])

    def on_leader(self, leader: int) -> None:
        pass

    def on_stop(self) -> None:
        self.stopped = True
        self._end_all(stopping_error())
        self._pending.set()

    def close(self) -> None:
        """The server is stopping: end every watch (UNAVAILABLE: clients resume elsewhere) and
        the fan-out task."""
        self._end_all(stopping_error())
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # --- fan-out -----------------------------------------------------------------------------

    def _ensure_task(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="concord-watch-fanout"
            )

    async def _run(self) -> None:
        running = asyncio.get_running_loop()
        while not self.stopped:
            await self._pending.wait()
            self._pending.clear()
            started = running.time()
            try:
                await self._fan_out()
                # The streams woken last run their step (take, encode, hand to gRPC) before
                # this task runs again. Then leave the event loop to Raft and the other RPCs
                # for as long as the pass took: watch delivery gets at most about half of
                # the loop, and under load passes come less often and carry more revisions
                # each (coalescing), rather than delaying every write behind the fan-out.
                await asyncio.sleep(0)
                await asyncio.sleep(min(_PAUSE_MAX_S, running.time() - started))
            except Exception:
                log.exception("watch fan-out failed; ending every watch so clients resume")
                self._end_all(
                    ServiceError(Code.UNAVAILABLE, "the member's watch fan-out failed; resume")
                )

    async def _fan_out(self) -> None:
        fsm = self._view.fsm
        if fsm.revision < self._fanned:
            return
        try:
            events = fsm.events_since(self._fanned)
        except FsmError as err:
            if err.code is not ErrorCode.OUT_OF_RANGE:
                raise
            # The history moved past what was not fanned out yet (a snapshot was installed):
            # every watcher's next revision is gone.
            self._fanned = fsm.revision + 1
            self._end_all(compacted(err))
            return
        if not events:
            return
        # Move the boundary before yielding, so a watcher that joins mid-pass reads this
        # pass's revisions from the history (catch-up) instead of missing them.
        self._fanned = events[-1].revision + 1
        touched: dict[Watcher, None] = {}
        budget = _FANOUT_SLICE
        limit = self.queue_events_max
        for event in events:
            for watcher in list(self._index.matching(event.key)):
                if event.revision < watcher.floor or watcher.ended is not None:
                    continue
                queue = watcher.queue
                if len(queue) >= limit and queue[-1].revision != event.revision:
                    self._end(watcher, slow_consumer(watcher.given, limit))
                    self.ended_slow += 1
                    if self._events is not None:
                        self._events.watch_ended_slow()
                    continue
                queue.append(event)
                touched[watcher] = None
                budget -= 1
            if budget <= 0:
                await self._wake(touched)
                touched = {}
                budget = _FANOUT_SLICE
        self.delivered += len(events)
        await self._wake(touched)

    @staticmethod
    async def _wake(touched: dict[Watcher, None]) -> None:
        """Wake the touched streams a slice at a time: woken streams run (and write) in the
        event loop's next iteration, so slices let the Raft loop's own callbacks run between
        them instead of after every stream of a large pass."""
        for i, watcher in enumerate(touched, 1):
            watcher.wake.set()
            if i % _WAKE_SLICE == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _end(self, watcher: Watcher, err: ServiceError) -> None:
        """End `watcher` with `err`; the stream reports it after what it was already given."""
        self._index.remove(watcher)
        watcher.queue.clear()
        watcher.ended = err
        watcher.wake.set()
        self._report_open()

    def _report_open(self) -> None:
        # The count, not +1/-1: a stream removes a watcher the hub already ended, and
        # reporting the index's size keeps the gauge exact whatever the order.
        if self._events is not None:
            self._events.watches_changed(len(self._index))

    def _end_all(self, err: ServiceError) -> None:
        for watcher in list(self._index):
            self._end(watcher, err)
