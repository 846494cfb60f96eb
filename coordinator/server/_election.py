"""concord.v1.Election: Campaign (blocks until elected), Proclaim, Leader, Observe, Resign.

An election is a mutex whose holder publishes a value (`coordinator.fsm.elections`). Campaign
shares Lock's blocking machinery (`_acquire.py`); cancelling a campaign withdraws it (Resign).

Proclaim and Resign take the `LeaderKey` that Campaign returned. A non-zero fencing_token in
it must be the current leadership's: a leader that lost and won again under the same lease
holds a new token, and a request carrying the old one is refused (FAILED_PRECONDITION).

Observe streams the election's leadership: the first message is the current state, then one
message per change, in revision order (ELECTION_LEADER: a new leader or a proclaimed value;
ELECTION_VACANT: a message without `leader`). The changes come through the watch hub
(`_watchers.py`) as a watch of the election's name: a stream wakes only when its election
changed (or a key of the same name, whose events it skips), not on every applied batch. A
stream that falls behind (the hub ends it as a slow consumer, or the bounded history moved
past it) resynchronises from the current state instead of failing: Observe is about the
latest leader, not every step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import (
    Campaign,
    EventKind,
    Proclaim,
    ReleaseResult,
    Resign,
    RevisionResult,
)

from . import _validate as v
from ._acquire import Acquirer, AcquireSpec
from ._core import Core
from ._errors import Code, ServiceError, invalid
from ._hub import WaitKind
from ._rpc import Call, Servicer, blocking, streaming, unary
from ._watch_index import KeyRange
from ._watchers import Watcher


class ElectionService(Servicer):
    def __init__(self, core: Core) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core
        self.acquirer = Acquirer(core)

    @blocking
    async def Campaign(self, request: pb.CampaignRequest, call: Call) -> pb.CampaignResponse:
        name = v.name(request.election, "election")
        lease = v.lease_id(request.lease)
        cmd = Campaign(name, lease, v.value(request.value))
        spec = AcquireSpec(WaitKind.ELECTION, name, lease, cmd, Resign(name, lease))
        got = await self.acquirer.acquire(spec, v.session(request.session), call, wait=True)
        return pb.CampaignResponse(
            header=self.core.header(None, got.applied.index),
            leader=pb.LeaderKey(election=name, lease=lease, fencing_token=got.token),
        )

    def _leader_key(self, key: pb.LeaderKey, what: str) -> tuple[str, int]:
        name = v.name(key.election, "election")
        lease = v.lease_id(key.lease, "leader.lease")
        current = self.core.fsm.election_leader(name)
        if (
            key.fencing_token
            and current is not None
            and current.lease == lease
            and current.token != key.fencing_token
        ):
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"the leadership of election {name!r} with token {key.fencing_token} is over "
                f"(lease {lease} now leads with token {current.token}); {what} with the "
                "leadership the latest campaign returned (`concordctl elect` holds its own)",
            )
        return name, lease

    @unary
    async def Proclaim(self, request: pb.ProclaimRequest, call: Call) -> pb.ProclaimResponse:
        if not request.HasField("leader"):
            raise invalid("leader is unset: pass the leadership that a campaign returned")
        name, lease = self._leader_key(request.leader, "proclaim")
        cmd = Proclaim(name, lease, v.value(request.value))
        applied = await self.core.propose(cmd, v.session(request.session))
        res = self.core.expect(applied, RevisionResult)
        return pb.ProclaimResponse(header=self.core.header(res.revision, applied.index))

    @unary
    async def Resign(self, request: pb.ResignRequest, call: Call) -> pb.ResignResponse:
        if not request.HasField("leader"):
            raise invalid("leader is unset: pass the leadership that a campaign returned")
        name, lease = self._leader_key(request.leader, "resign")
        applied = await self.core.propose(Resign(name, lease), v.session(request.session))
        res = self.core.expect(applied, ReleaseResult)
        return pb.ResignResponse(header=self.core.header(res.revision, applied.index))

    def _current(self, name: str) -> pb.LeaderResponse:
        leader = self.core.fsm.election_leader(name)
        if leader is None:
            return pb.LeaderResponse(header=self.core.header())
        return pb.LeaderResponse(
            header=self.core.header(),
            leader=pb.LeaderKey(election=name, lease=leader.lease, fencing_token=leader.token),
            value=leader.value,
        )

    @unary
    async def Leader(self, request: pb.LeaderRequest, call: Call) -> pb.LeaderResponse:
        name = v.name(request.election, "election")
        await self.core.read(request.serializable)
        return self._current(name)

    @streaming
    async def Observe(
        self, request: pb.LeaderRequest, call: Call
    ) -> AsyncIterator[pb.LeaderResponse]:
        name = v.name(request.election, "election")
        core, watchers = self.core, self.core.watchers
        async with asyncio.timeout(call.bound_s()):
            await core.read(request.serializable)
        selected = KeyRange(name.encode(), None)
        while True:
            # The state at revision R and a watcher from R + 1, in one turn of the event loop:
            # nothing between them is missed or repeated.
            watcher = watchers.add(selected, core.fsm.revision + 1)
            try:
                yield self._current(name)
                async for response in self._changes(name, watcher):
                    yield response
            except ServiceError as err:
                # Fell behind (slow consumer, or the history moved past it): Observe is about
                # the latest leader, so start again from the current state.
                if err.code not in _RESYNC or watchers.stopped:
                    raise
            finally:
                watchers.remove(watcher)

    async def _changes(self, name: str, watcher: Watcher) -> AsyncIterator[pb.LeaderResponse]:
        """The election's changes as the watch hub hands them to `watcher`, in revision order;
        the stream wakes only when an event on the election's key was applied."""
        watchers = self.core.watchers
        while True:
            events = watchers.catch_up(watcher)
            if not events and watcher.given >= watcher.floor:
                events = await watchers.take(watcher)
            for e in events:
                if e.kind is EventKind.ELECTION_LEADER:
                    yield pb.LeaderResponse(
                        header=self.core.header(e.revision),
                        leader=pb.LeaderKey(election=name, lease=e.lease, fencing_token=e.number),
                        value=e.value,
                    )
                elif e.kind is EventKind.ELECTION_VACANT:
                    yield pb.LeaderResponse(header=self.core.header(e.revision))


_RESYNC = (Code.RESOURCE_EXHAUSTED, Code.OUT_OF_RANGE)
"""The ends of a watcher after which Observe resynchronises instead of failing."""
