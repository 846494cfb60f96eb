"""concord.v1.Watch: a stream of changes from a revision, for keys, locks, elections,
sequences and members.

Source. Every change the state machine makes is an event in its replicated, bounded history
(`coordinator.fsm.kv.History`), stamped with the global revision. A watch reads that history
from `start_revision` (0: from the next change) and then follows it as this member applies
entries; it never buffers on its own, so a slow client costs nothing, and a client that falls
further behind than the history reaches gets OUT_OF_RANGE, whose message names the revision
to resume from after re-reading the current state. The same happens at once if
`start_revision` is already compacted. Any member serves a watch from its own history; events
arrive in revision order, as that member applies them.

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

from collections.abc import AsyncIterator, Callable

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import ErrorCode, Event, EventKind, FsmError

from . import _validate as v
from ._core import Core
from ._errors import Code, ServiceError, invalid
from ._hub import stopping_error
from ._rpc import Call, Servicer, streaming

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


def selector(key: bytes, range_end: bytes) -> Callable[[bytes], bool]:
    if not key:
        if range_end not in (b"", b"\0"):
            raise invalid(
                "key is empty but range_end is set: to watch everything leave both empty, "
                "otherwise set key to the start of the range"
            )
        return lambda _k: True
    end = v.range_end(key, range_end)
    if end is None:
        return lambda k: k == key
    if end == b"\0":
        return lambda k: k >= key
    return lambda k: key <= k < end


class WatchService(Servicer):
    def __init__(self, core: Core) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core

    @streaming
    async def Watch(self, request: pb.WatchRequest, call: Call) -> AsyncIterator[pb.WatchResponse]:
        selected = selector(request.key, request.range_end)
        hub, fsm = self.core.hub, self.core.fsm
        batch_max = self.core.cfg.watch_batch_max
        generation = hub.generation
        next_revision = request.start_revision or fsm.revision + 1
        events = fsm.events_since(next_revision)  # OUT_OF_RANGE if compacted already
        yield pb.WatchResponse(header=self.core.header())
        while True:
            if events:
                next_revision = events[-1].revision + 1
            chosen = [event_pb(e) for e in events if selected(e.key)]
            for i in range(0, len(chosen), batch_max):
                part = chosen[i : i + batch_max]
                yield pb.WatchResponse(header=self.core.header(part[-1].revision), events=part)
            await hub.applied_since(generation)
            if hub.stopped:
                raise stopping_error()
            generation = hub.generation
            try:
                events = fsm.events_since(next_revision)
            except FsmError as err:
                if err.code is not ErrorCode.OUT_OF_RANGE:
                    raise
                raise ServiceError(
                    Code.OUT_OF_RANGE, f"this watch fell behind the event history: {err.message}"
                ) from None
