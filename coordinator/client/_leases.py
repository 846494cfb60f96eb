"""The lease calls of the `Client`: grant, revoke, time to live, one renewal, and keeping a
lease alive in the background on the client's one keep-alive stream (`_keepalive.py`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from coordinator.api.v1 import concord_pb2 as pb

from ._calls import Calls, _Stubs
from ._errors import NotFound
from ._keepalive import KeptLease, Renewer
from ._pipe import CallFailed
from ._types import LeaseInfo


class LeaseCalls(Calls):
    """`lease_grant`, `lease_revoke`, `lease_time_to_live`, `lease_keepalive_once`,
    `keep_alive`."""

    async def lease_grant(self, ttl_ms: int) -> int:
        with self.session() as session:
            req = pb.LeaseGrantRequest(session=session, ttl_ms=ttl_ms)
            resp = await self._small("lease_grant", req, lambda s: s.lease.Grant)
            return int(resp.id)

    async def lease_revoke(self, lease: int) -> None:
        with self.session() as session:
            req = pb.LeaseRevokeRequest(session=session, id=lease)
            await self._small("lease_revoke", req, lambda s: s.lease.Revoke)

    async def lease_time_to_live(self, lease: int) -> LeaseInfo:
        """The lease's TTL and what is left of it (NOT_FOUND once it has ended)."""
        req = pb.LeaseTimeToLiveRequest(id=lease)
        resp = await self.call(lambda s: s.lease.TimeToLive(req, timeout=self.attempt_timeout_s))
        return LeaseInfo(int(resp.id), int(resp.ttl_ms), int(resp.remaining_ms))

    async def lease_keepalive_once(self, lease: int) -> int:
        """Renew once; returns the TTL granted again (ms). NotFound once the lease has
        ended."""

        async def once(s: _Stubs) -> Any:  # noqa: ANN401 (a generated, untyped message)
            call = s.lease.KeepAlive(timeout=self.attempt_timeout_s)
            try:
                await call.write(pb.LeaseKeepAliveRequest(id=lease))
                resp = await call.read()
            except (grpc.RpcError, asyncio.InvalidStateError) as exc:
                # The stream may have ended (its deadline, the member going away) before a
                # write or read: grpc then raises InvalidStateError, not its status. Report
                # the stream's own status, as a unary call would.
                raise await _stream_failure(call, exc, s.endpoint) from None
            # The half-close is a courtesy once the answer (or the end) is read: a stream that
            # ended meanwhile, its deadline passed, refuses it with grpc's internal
            # ExecuteBatchError, which says nothing about the answer in hand.
            with contextlib.suppress(Exception):
                await call.done_writing()
            if resp is grpc.aio.EOF:
                raise CallFailed(
                    grpc.StatusCode.UNAVAILABLE, f"{s.endpoint} ended the keep-alive stream"
                )
            return resp

        resp = await self.call(once)
        if resp.ttl_ms == 0:
            raise NotFound(f"lease {lease} has ended (expired or revoked)")
        return int(resp.ttl_ms)

    def keep_alive(self, lease: int, ttl_ms: int, *, sent_at: float | None = None) -> KeptLease:
        """Keep `lease` (granted with `ttl_ms`) alive in the background, on the client's one
        keep-alive stream shared by all its leases (`_keepalive.py`), until the handle's
        `stop()` or the lease's loss, which sets its `lost` event and runs its callbacks.
        `sent_at`: the loop time its grant was sent (default now; earlier is safer), from
        which its TTL is counted until the first renewal is acknowledged."""
        if self._keepalive is None:
            self._keepalive = Renewer(self)
        when = asyncio.get_running_loop().time() if sent_at is None else sent_at
        return self._keepalive.keep(lease, ttl_ms, when)

    @property
    def keepalive_streams_opened(self) -> int:
        """How many KeepAlive streams `keep_alive` has opened (one at a time)."""
        return 0 if self._keepalive is None else self._keepalive.streams_opened


async def _stream_failure(
    call: Any,  # noqa: ANN401 (a grpc.aio stream call)
    exc: BaseException,
    endpoint: str,
) -> grpc.RpcError | CallFailed:
    """The status a stream call ended with, for an error raised while using it."""
    if isinstance(exc, grpc.RpcError):
        return exc
    try:
        async with asyncio.timeout(1.0):
            code = await call.code()
            details = await call.details()
    except (TimeoutError, grpc.RpcError):
        code, details = None, ""
    if code is None or code == grpc.StatusCode.OK:
        return CallFailed(grpc.StatusCode.UNAVAILABLE, f"the stream to {endpoint} ended early")
    return CallFailed(code, details or f"the stream to {endpoint} ended")
