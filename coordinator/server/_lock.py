"""concord.v1.Lock: Lock (mutex or semaphore, try or blocking), Unlock, CheckFence, Info.

Blocking semantics are in `_acquire.py`. Fencing tokens are revisions of the global KV
revision, so they strictly increase across all grants of a name; CheckFence answers whether a
token is still a current holder's (Chubby's sequencer check), linearizably.
"""

from __future__ import annotations

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import LockAcquire, LockRelease, ReleaseResult

from . import _validate as v
from ._acquire import Acquirer, AcquireSpec, new_waiter_id
from ._core import Core
from ._errors import invalid
from ._hub import WaitKind
from ._rpc import Call, Servicer, blocking, unary


class LockService(Servicer):
    def __init__(self, core: Core) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core
        self.acquirer = Acquirer(core)

    @blocking
    async def Lock(self, request: pb.LockRequest, call: Call) -> pb.LockResponse:
        name = v.name(request.name, "lock")
        lease = v.lease_id(request.lease)
        cmd = LockAcquire(
            name,
            lease,
            max_holders=v.max_holders(request.max_holders),
            lock_delay_ms=v.lock_delay_ms(request.lock_delay_ms),
            waiter_id=new_waiter_id(),
        )
        spec = AcquireSpec(WaitKind.LOCK, name, lease, cmd, LockRelease(name, lease))
        got = await self.acquirer.acquire(spec, v.session(request.session), call, wait=request.wait)
        return pb.LockResponse(
            header=self.core.header(None, got.applied.index),
            granted=got.token != 0,
            fencing_token=got.token,
            waiters_ahead=0 if got.token else got.result.waiting_ahead,
        )

    @unary
    async def Unlock(self, request: pb.UnlockRequest, call: Call) -> pb.UnlockResponse:
        cmd = LockRelease(v.name(request.name, "lock"), v.lease_id(request.lease))
        applied = await self.core.propose(cmd, v.session(request.session))
        res = self.core.expect(applied, ReleaseResult)
        return pb.UnlockResponse(
            header=self.core.header(res.revision, applied.index), held=res.held
        )

    @unary
    async def CheckFence(self, request: pb.CheckFenceRequest, call: Call) -> pb.CheckFenceResponse:
        name = v.name(request.name, "lock")
        if request.fencing_token == 0:
            raise invalid(
                "fencing_token is 0, which no grant ever has: pass the token the lock was granted "
                "with (`concordctl lock` gives it to its command as CONCORD_FENCING_TOKEN)"
            )
        await self.core.read(False)
        return pb.CheckFenceResponse(
            header=self.core.header(),
            current=self.core.fsm.check_fence(name, request.fencing_token),
        )

    @unary
    async def Info(self, request: pb.LockInfoRequest, call: Call) -> pb.LockInfoResponse:
        name = v.name(request.name, "lock")
        await self.core.read(request.serializable)
        fsm = self.core.fsm
        return pb.LockInfoResponse(
            header=self.core.header(),
            holders=[
                pb.LockHolder(lease=h.lease, fencing_token=h.token, acquired_ms=h.acquired_ms)
                for h in fsm.lock_holders(name)
            ],
            waiters=len(fsm.lock_waiters(name)),
        )
