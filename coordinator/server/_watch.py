"""concord.v1.Watch: a stream of changes from a revision, for keys, locks, elections,
sequences and members.

Source. Every change the state machine makes is an event in its replicated, bounded history
(`coordinator.fsm.kv.History`), stamped with the global revision. A watch joins the member's
`WatchHub` (`_watchers.py`, docs/watches.md), which fans new events out to the watches that
select them, through a bounded queue per watch, off the Raft loop's turn. A watch from an
earlier `start_revision` (0: from the next change) first reads the gap from the history. A
stream that falls more than `watch_queue_events_max` events behind is ended with
RESOURCE_EXHAUSTED "slow consumer ... resume from revision R" (trailing metadata
`concord-watch-resume`); a start (or resume) already compacted out of the history gets
OUT_OF_RANGE, whose message names the revision to resume from after re-reading the current
state. Any member serves a watch, followers included; unless the request says
`serializable`, the member passes a read barrier first, so the start is linearizable. Events
arrive in revision order, as that member applies them, a revision never split across two
messages (unless it alone holds more than `watch_batch_max` events).

Protocol. The first message has no events: it confirms the watch and its header.revision is
the member's revision at that moment. Each later message holds the events of one or more
revisions (at most `watch_batch_max` events), in order.

Selection. `key` alone: events whose key (or name) is exactly `key`; `key` + `range_end`:
[key, range_end), range_end b"\\0" meaning every key >= key; both empty: every event. Locks,
elections, sequences and members are selected by their name's UTF-8 bytes, in the same byte
space as keys.

Event mapping (the proto's Event has no field of its own for every detail, so `kv` carries
them; `name` is set for every non-KV event):

| state machine event  | Event.type | kv fields                                                    |
| -------------------- | ---------- | ------------------------------------------------------------ |
| PUT                  | PUT        | the key-value after the put (mod_revision = revision)        |
| DELETE               | DELETE     | key; mod_revision = revision; version 0                      |
| LOCK_GRANTED         | LOCK       | key = name; lease = holder; version = fencing token          |
| LOCK_RELEASED        | UNLOCK     | key = name; lease = former holder; version = its token       |
| ELECTION_LEADER      | ELECTION   | key = name; lease = leader; value; version = fencing token   |
| ELECTION_VACANT      | ELECTION   | key = name; lease = former leader; version 0 (= vacant)      |
| SEQUENCE             | SEQUENCE   | key = name; value = next value, decimal ASCII                |
| MEMBER_UPSERTED      | MEMBER     | key = name; version = member id; value b"upserted"           |
| MEMBER_REMOVED       | MEMBER     | key = name; version = member id; value b"removed"            |
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import Event, EventKind

from . import _validate as v
from ._core import Core
from ._errors import invalid
from ._rpc import Call, Servicer, streaming
from ._watch_index import KeyRange

_TYPES = {
    EventKind.PUT: pb.Event.PUT,
    EventKind.DELETE: pb.Event.DELETE,
    EventKind.LOCK_GRANTED: pb.Event.LOCK,
    EventKind.LOCK_RELEASED: pb.Event.UNLOCK,
    EventKind.ELECTION_LEADER: pb.Event.ELECTION,
    EventKind.ELECTION_VACANT: pb.Event.ELECTION,
    EventKind.SEQUENCE: pb.Event.SEQUENCE,
    EventKind.MEMBER_UPSERTED: pb.Event.MEMBER,
    EventKind.MEMBER_REMOVED: pb.Event.MEMBER,
}


def event_pb(e: Event) -> pb.Event:
    kv = pb.KeyValue(key=e.key, mod_revision=e.revision, lease=e.lease)
    match e.kind:
        case EventKind.PUT:
            kv.value, kv.version, kv.create_revision = e.value, e.number, e.create_revision
        case EventKind.DELETE:
            pass
        case EventKind.LOCK_GRANTED | EventKind.LOCK_RELEASED | EventKind.ELECTION_LEADER:
            kv.value, kv.version = e.value, e.number
        case EventKind.ELECTION_VACANT:
            pass
        case EventKind.SEQUENCE:
            kv.value = str(e.number).encode()
        case EventKind.MEMBER_UPSERTED:
            kv.version, kv.value = e.number, b"upserted"
        case EventKind.MEMBER_REMOVED:
            kv.version, kv.value = e.number, b"removed"
    out = pb.Event(type=_TYPES[e.kind], kv=kv, revision=e.revision)
    if e.kind not in (EventKind.PUT, EventKind.DELETE):
        out.name = e.key.decode("utf-8", errors="replace")
    return out


def key_range(key: bytes, range_end: bytes) -> KeyRange:
    """What a WatchRequest selects (see the module doc)."""
    if not key:
        if range_end not in (b"", b"\0"):
            raise invalid(
                "key is empty but range_end is set: to watch everything leave both empty, "
                "otherwise set key to the start of the range"
            )
        return KeyRange(b"", b"\0")
    return KeyRange(key, v.range_end(key, range_end))


class WatchService(Servicer):
    def __init__(self, core: Core) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core
        self._encoded = EncodedResponses()
        self._barrier = SharedBarrier(core)

    @streaming
    async def Watch(
        self, request: pb.WatchRequest, call: Call
    ) -> AsyncIterator[pb.WatchResponse | bytes]:
        selected = key_range(request.key, request.range_end)
        core, fsm, watchers = self.core, self.core.fsm, self.core.watchers
        if not request.serializable:
            await self._barrier.wait()  # the start is linearizable (see the proto)
        start = request.start_revision or fsm.revision + 1
        fsm.events_since(start)  # OUT_OF_RANGE at once if compacted already
        watcher = watchers.add(selected, start)
        batch_max = core.cfg.watch_batch_max
        try:
            yield pb.WatchResponse(header=core.header())
            while True:
                events = watchers.catch_up(watcher)
                if events:
                    for part in _responses(events, batch_max):
                        yield pb.WatchResponse(header=core.header(part[-1].revision), events=part)
                elif watcher.given >= watcher.floor:
                    events = await watchers.take(watcher)
                    for encoded in self._encoded.get(core, selected, events, batch_max):
                        yield encoded
        finally:
            watchers.remove(watcher)


class SharedBarrier:
    """Read barriers shared by the watches that open together.

    A linearizable start needs a barrier asked *after* the request arrived; any such barrier
    will do. So a watch that arrives while one is in flight waits for the next one, which
    starts when the current one ends: a burst of N opens (informers restarting) costs about
    two barriers, not N ReadIndex rounds."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._task: asyncio.Task[None] | None = None
        self._started = 0
        """How many barriers were started; the one in `_task` is number `_started`."""

    async def wait(self) -> None:
        wanted = self._started + 1  # the first barrier started from now on
        while True:
            if self._task is None or self._task.done():
                self._started += 1
                self._task = asyncio.ensure_future(self._core.read(serializable=False))
                self._task.add_done_callback(_retrieved)
            task, number = self._task, self._started
            await asyncio.wait([task])  # shared: a caller that goes away never cancels it
            if number >= wanted:
                task.result()  # its error, if it failed, is this caller's too
                return


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: callers that left must not leave it "never retrieved"


class EncodedResponses:
    """Live watch responses, serialized once for every stream that sends the same ones.

    Streams of the same range woken by the same fan-out pass take the same events from
    their queues, so their responses are byte-identical (the header names this member, its
    term and the last revision): N streams on one prefix cost one encoding per pass instead
    of N. Keyed by (range, first and last revision, count, term): for one range these fix
    the events, since a queue holds every selected event from its first revision on. A few
    recent entries are kept (passes are short-lived)."""

    ENTRIES_MAX = 64

    def __init__(self) -> None:
        self._cache: dict[tuple[KeyRange, int, int, int, int], list[bytes]] = {}

    def get(
        self, core: Core, selected: KeyRange, events: list[Event], batch_max: int
    ) -> list[bytes]:
        term = core.view.term
        key = (selected, events[0].revision, events[-1].revision, len(events), term)
        found = self._cache.get(key)
        if found is None:
            found = [
                pb.WatchResponse(
                    header=core.header(part[-1].revision), events=part
                ).SerializeToString()
                for part in _responses(events, batch_max)
            ]
            if len(self._cache) >= self.ENTRIES_MAX:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = found
        return found


RESPONSE_BYTES_MAX = 2 * 1024 * 1024
"""A WatchResponse stays well under the 4 MiB message limit (coalesced events add up)."""


def _responses(events: list[Event], batch_max: int) -> list[list[pb.Event]]:
    """`events` in messages of at most `batch_max` events and about `RESPONSE_BYTES_MAX`
    bytes, never splitting a revision unless one revision alone is larger (so a resume after
    any message's last revision is exact)."""
    out: list[list[pb.Event]] = []
    part: list[pb.Event] = []
    size = 0
    for i, event in enumerate(events):
        full = len(part) >= batch_max or size + event.size_bytes() > RESPONSE_BYTES_MAX
        if (
            part
            and full
            and (events[i - 1].revision != event.revision or size > RESPONSE_BYTES_MAX)
        ):
            out.append(part)
            part, size = [], 0
        part.append(event_pb(event))
        size += event.size_bytes()
    if part:
        out.append(part)
    return out
