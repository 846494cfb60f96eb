"""concord.v1.Election: Campaign (blocks until elected), Proclaim, Leader, Observe, Resign.

An election is a mutex whose holder publishes a value (`coordinator.fsm.elections`). Campaign
shares Lock's blocking machinery (`_acquire.py`); cancelling a campaign withdraws it (Resign).

Proclaim and Resign take the `LeaderKey` that Campaign returned. A non-zero fencing_token in
it must be the current leadership's: a leader that lost and won again under the same lease
holds a new token, and a request carrying the old one is refused (FAILED_PRECONDITION).

Observe streams the election's leadership: the first message is the current state, then one
message per change, read from the replicated event history (ELECTION_LEADER: a new leader or
a proclaimed value; ELECTION_VACANT: a message without `leader`). A stream that falls behind
the bounded history resynchronises from the current state instead of failing: Observe is about
the latest leader, not every step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import (
    Campaign,
    ErrorCode,
    EventKind,
    FsmError,
    Proclaim,
    ReleaseResult,
    Resign,
    RevisionResult,
)

from . import _validate as v
from ._acquire import Acquirer, AcquireSpec
from ._core import Core
from ._errors import Code, ServiceError, invalid
from ._hub import WaitKind, stopping_error
from ._rpc import Call, Servicer, blocking, streaming, unary


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
        hub, fsm = self.core.hub, self.core.fsm
        async with asyncio.timeout(call.bound_s()):
            await self.core.read(request.serializable)
        generation = hub.generation
        next_revision = fsm.revision + 1
        yield self._current(name)
        key = name.encode()
        while True:
            await hub.applied_since(generation)
            if hub.stopped:
                raise stopping_error()
            generation = hub.generation
            try:
                events = fsm.events_since(next_revision)
            except FsmError as err:
                if err.code is not ErrorCode.OUT_OF_RANGE:
                    raise
                next_revision = fsm.revision + 1
                yield self._current(name)
                continue
            if events:
                next_revision = events[-1].revision + 1
            for e in events:
                if e.key != key:
                    continue
                if e.kind is EventKind.ELECTION_LEADER:
                    yield pb.LeaderResponse(
                        header=self.core.header(e.revision),
                        leader=pb.LeaderKey(election=name, lease=e.lease, fencing_token=e.number),
                        value=e.value,
                    )
                elif e.kind is EventKind.ELECTION_VACANT:
                    yield pb.LeaderResponse(header=self.core.header(e.revision))
