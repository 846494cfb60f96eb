"""The lock calls of the `Client` on a lease the caller holds: acquire (waiting in line, within
a deadline), release, fencing checks and who holds a lock. `Client.lock()` (`_holds.py`)
builds a held lock on a lease of its own from these."""

from __future__ import annotations

from coordinator.api.v1 import concord_pb2 as pb

from ._calls import Calls
from ._errors import ConcordError
from ._holds import within
from ._types import Lock, LockInfo


class LockCalls(Calls):
    """`acquire`, `release`, `check_fence`, `lock_info`."""

    async def acquire(
        self,
        name: str,
        lease: int,
        *,
        max_holders: int = 1,
        lock_delay_ms: int = 0,
        timeout_s: float | None = None,
    ) -> Lock:
        """Block until `name` is held under `lease`; returns the grant's fencing token.

        `timeout_s` (seconds, None: wait forever) bounds the whole wait, retries included;
        past it `DeadlineExceeded` is raised. On timeout or cancellation the lease leaves the
        queue (Unlock of `(name, lease)`), which also releases a grant that raced with it:
        so do not give a lease that already holds `name` a timeout it might miss. For a
        lease of its own, kept alive and revoked on exit, use `lock()`."""
        # One client id for the acquire (seq n) and its withdrawal (seq n + 1): should the
        # acquire reach the state machine only after the withdrawal, it is a stale request
        # there and is dropped, so it cannot queue or grant behind the withdrawal's back.
        with self._sessions(2) as (session, then):
            req = pb.LockRequest(
                session=session,
                name=name,
                lease=lease,
                max_holders=max_holders,
                lock_delay_ms=lock_delay_ms,
                wait=True,
            )
            unlock = pb.UnlockRequest(session=then, name=name, lease=lease)
            return await within(
                f"lock {name!r}",
                timeout_s,
                lambda: self._wait_for_lock(req),
                lambda: self._small("unlock", unlock, lambda s: s.lock.Unlock),
                self.rpc_timeout_s,
            )

    async def _wait_for_lock(self, req: pb.LockRequest) -> Lock:
        """Acquire, waiting in line for as long as it takes (the caller bounds it)."""
        while True:
            try:
                resp = await self._small("lock", req, lambda s: s.lock.Lock)
            except ConcordError as err:
                if err.waiting:
                    continue  # still in line; the retry keeps our place (same session)
                raise
            if resp.granted:
                return Lock(req.name, req.lease, int(resp.fencing_token))

    async def _try_lock(self, req: pb.LockRequest) -> Lock | None:
        """Acquire without waiting (`req.wait` is False): the grant, or None if taken."""
        resp = await self._small("lock", req, lambda s: s.lock.Lock)
        return Lock(req.name, req.lease, int(resp.fencing_token)) if resp.granted else None

    async def release(self, lock: Lock) -> None:
        with self.session() as session:
            req = pb.UnlockRequest(session=session, name=lock.name, lease=lock.lease)
            await self._small("unlock", req, lambda s: s.lock.Unlock)

    async def check_fence(self, name: str, token: int) -> bool:
        req = pb.CheckFenceRequest(name=name, fencing_token=token)
        resp = await self._small("check_fence", req, lambda s: s.lock.CheckFence)
        return bool(resp.current)

    async def lock_info(self, name: str, *, serializable: bool = False) -> LockInfo:
        """Who holds `name` (fencing tokens, leases) and how many wait. `serializable`: the
        answering member's own view, which works without a quorum (possibly stale)."""
        req = pb.LockInfoRequest(name=name, serializable=serializable)
        resp = await self.call(lambda s: s.lock.Info(req, timeout=self.attempt_timeout_s))
        return LockInfo._from_pb(name, resp)
