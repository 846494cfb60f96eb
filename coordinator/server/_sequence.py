"""concord.v1.Sequence: Create, Next (a contiguous block, never reissued), Get.

Next is committed before it is answered, and a retry with the same session gets the same
block back from the session table; a new request always gets a later block, even after a
leader crash.
"""

from __future__ import annotations

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import SequenceBlock, SequenceCreate, SequenceInfo, SequenceNext

from . import _validate as v
from ._core import Core
from ._rpc import Call, Servicer, unary


class SequenceService(Servicer):
    def __init__(self, core: Core) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core

    @unary
    async def Create(
        self, request: pb.SequenceCreateRequest, call: Call
    ) -> pb.SequenceCreateResponse:
        cmd = SequenceCreate(
            v.name(request.name, "sequence"), request.start, v.increment(request.increment)
        )
        applied = await self.core.propose(cmd, v.session(request.session))
        res = self.core.expect(applied, SequenceInfo)
        return pb.SequenceCreateResponse(header=self.core.header(res.revision, applied.index))

    @unary
    async def Next(self, request: pb.SequenceNextRequest, call: Call) -> pb.SequenceNextResponse:
        cmd = SequenceNext(v.name(request.name, "sequence"), v.count(request.count))
        applied = await self.core.propose(cmd, v.session(request.session))
        res = self.core.expect(applied, SequenceBlock)
        return pb.SequenceNextResponse(
            header=self.core.header(res.revision, applied.index),
            first=res.first,
            count=res.count,
            increment=res.increment,
        )

    @unary
    async def Get(self, request: pb.SequenceGetRequest, call: Call) -> pb.SequenceGetResponse:
        name = v.name(request.name, "sequence")
        await self.core.read(request.serializable)
        info = self.core.fsm.sequence_current(name)
        return pb.SequenceGetResponse(
            header=self.core.header(), next=info.next_value, increment=info.increment
        )
