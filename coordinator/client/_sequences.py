"""The sequence calls of the `Client`: create a sequence, draw blocks of numbers from it
(exactly once: a retried draw never burns a block), read where it stands."""

from __future__ import annotations

from coordinator.api.v1 import concord_pb2 as pb

from ._calls import Calls
from ._types import SequenceInfo


class SequenceCalls(Calls):
    """`sequence_create`, `sequence_next`, `sequence_get`."""

    async def sequence_create(self, name: str, start: int = 1, increment: int = 1) -> None:
        with self.session() as session:
            req = pb.SequenceCreateRequest(
                session=session, name=name, start=start, increment=increment
            )
            await self.call(lambda s: s.sequence.Create(req, timeout=self.attempt_timeout_s))

    async def sequence_next(self, name: str, count: int = 1) -> list[int]:
        with self.session() as session:
            req = pb.SequenceNextRequest(session=session, name=name, count=count)
            resp = await self._small("sequence_next", req, lambda s: s.sequence.Next)
            return [int(resp.first) + i * int(resp.increment) for i in range(int(resp.count))]

    async def sequence_get(self, name: str, *, serializable: bool = False) -> SequenceInfo:
        """The sequence's next value and increment, without drawing (NOT_FOUND: no such
        sequence; create it with `sequence_create`)."""
        req = pb.SequenceGetRequest(name=name, serializable=serializable)
        resp = await self.call(lambda s: s.sequence.Get(req, timeout=self.attempt_timeout_s))
        return SequenceInfo(name, int(resp.next), int(resp.increment))
