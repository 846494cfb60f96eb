"""concord.v1.Lease: Grant, KeepAlive (a bidirectional stream), Revoke, TimeToLive.

KeepAlive proposes one `LeaseKeepAlive` per request message, without a session (a repeated
keep-alive is harmless), and answers each with the lease's TTL. Each one is bounded by the
service's deadline. A lease that no longer exists ends the stream with NOT_FOUND: the client
has lost everything that hung on it and must grant a new lease. A follower ends the stream
with UNAVAILABLE and the leader in `concord-leader`; keep-alives go to the leader.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import (
    LeaseGrant,
    LeaseKeepAlive,
    LeaseResult,
    LeaseRevoke,
    OwnedLeaseGrant,
    RevisionResult,
)

from . import _validate as v
from ._caller import workload
from ._core import Core
from ._rpc import Call, Servicer, streaming, unary


class LeaseService(Servicer):
    def __init__(self, core: Core) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core

    @unary
    async def Grant(self, request: pb.LeaseGrantRequest, call: Call) -> pb.LeaseGrantResponse:
        ttl_ms, lease_id = v.ttl_ms(request.ttl_ms), v.lease_id(request.id, required=False)
        guard = workload()
        # A workload's lease records its namespace, so no other namespace can use it.
        cmd: LeaseGrant | OwnedLeaseGrant = (
            LeaseGrant(ttl_ms, lease_id)
            if guard is None
            else OwnedLeaseGrant(ttl_ms, lease_id, guard.who.namespace)
        )
        applied = await self.core.propose(cmd, v.session(request.session))
        res = self.core.expect(applied, LeaseResult)
        return pb.LeaseGrantResponse(
            header=self.core.header(None, applied.index), id=res.id, ttl_ms=res.ttl_ms
        )

    @streaming
    async def KeepAlive(
        self, request: AsyncIterator[pb.LeaseKeepAliveRequest], call: Call
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        async for message in request:
            lease = v.lease_id(message.id, "id")
            async with asyncio.timeout(call.bound_s()):
                applied = await self.core.propose(LeaseKeepAlive(lease))
            res = self.core.expect(applied, LeaseResult)
            yield pb.LeaseKeepAliveResponse(
                header=self.core.header(None, applied.index), id=res.id, ttl_ms=res.ttl_ms
            )

    @unary
    async def Revoke(self, request: pb.LeaseRevokeRequest, call: Call) -> pb.LeaseRevokeResponse:
        cmd = LeaseRevoke(v.lease_id(request.id, "id"))
        applied = await self.core.propose(cmd, v.session(request.session))
        res = self.core.expect(applied, RevisionResult)
        return pb.LeaseRevokeResponse(header=self.core.header(res.revision, applied.index))

    @unary
    async def TimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, call: Call
    ) -> pb.LeaseTimeToLiveResponse:
        lease = v.lease_id(request.id, "id")
        await self.core.read(False)
        info = self.core.fsm.lease_ttl(lease)
        return pb.LeaseTimeToLiveResponse(
            header=self.core.header(),
            id=info.id,
            ttl_ms=info.ttl_ms,
            remaining_ms=info.remaining_ms,
        )
