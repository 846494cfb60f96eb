"""The asyncio client: finds the leader, retries safely, and offers locks as context managers.

Leader discovery. Any member answers reads; mutations need the leader. A member that is not
the leader answers UNAVAILABLE with trailing metadata `concord-leader` naming it; the client
switches to that endpoint (or, with no hint, tries the next one) and retries.

Exactly once. Every client has a random 64-bit session id, and every mutation takes the
next sequence number. A retry (after a timeout, a redirect, a lost leader) reuses the SAME
(client id, seq), so the state machine answers a duplicate from its session table instead
of running it twice: a retried sequence `next` never burns a block, a retried put never
overwrites a later one.

Errors. gRPC statuses a person must act on (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, OUT_OF_RANGE, PERMISSION_DENIED) surface as `ConcordError` with the
server's message; UNAVAILABLE and DEADLINE_EXCEEDED are retried until `timeout_s` runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as rpc

T = TypeVar("T")

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class ConcordError(Exception):
    """The service refused a request; `code` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Lock:
    name: str
    lease: int
    fencing_token: int


class _Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        # The generated stubs are untyped; the typed surface is this client's own methods.
        stubs: Any = rpc
        self.kv = stubs.KVStub(channel)
        self.lease = stubs.LeaseStub(channel)
        self.lock = stubs.LockStub(channel)
        self.election = stubs.ElectionStub(channel)
        self.sequence = stubs.SequenceStub(channel)
        self.watch = stubs.WatchStub(channel)
        self.cluster = stubs.ClusterStub(channel)


class Client:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float = 10.0,
        rpc_timeout_s: float = 3.0,
    ) -> None:
        if not endpoints:
            raise ValueError("give at least one endpoint (host:port)")
        self.endpoints = list(endpoints)
        self.credentials = credentials
        self.timeout_s = timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.client_id = secrets.randbits(63) | 1
        self._seq = itertools.count(1)
        self._current = 0
        self._stubs: dict[str, _Stubs] = {}

    async def close(self) -> None:
        for stubs in self._stubs.values():
            await stubs.channel.close()
        self._stubs.clear()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _stubs_for(self, endpoint: str) -> _Stubs:
        stubs = self._stubs.get(endpoint)
        if stubs is None:
            if self.credentials is None:
                channel = grpc.aio.insecure_channel(endpoint)
            else:
                channel = grpc.aio.secure_channel(endpoint, self.credentials)
            stubs = self._stubs[endpoint] = _Stubs(channel)
        return stubs

    def session(self) -> pb.Session:
        return pb.Session(client_id=self.client_id, seq=next(self._seq))

    async def call(self, fn: Callable[[_Stubs], Awaitable[T]]) -> T:
        """Run one RPC against the leader, following redirects and retrying what is safe."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        delay_s = 0.02
        last: grpc.aio.AioRpcError | None = None
        while loop.time() < deadline:
            endpoint = self.endpoints[self._current % len(self.endpoints)]
            try:
                return await fn(self._stubs_for(endpoint))
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE:
                    raise ConcordError(err.code().name, err.details() or "") from None
                last = err
                hint = _leader_hint(err)
                if hint and hint != endpoint:
                    if hint not in self.endpoints:
                        self.endpoints.append(hint)
                    self._current = self.endpoints.index(hint)
                    continue
                self._current += 1
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 0.5)
        detail = last.details() if last is not None else "no endpoint answered"
        raise ConcordError("UNAVAILABLE", f"gave up after {self.timeout_s:.0f} s: {detail}")

    # --- KV ------------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        req = pb.PutRequest(session=self.session(), key=key, value=value, lease=lease)
        resp = await self.call(lambda s: s.kv.Put(req, timeout=self.rpc_timeout_s))
        return int(resp.header.revision)

    async def get(self, key: bytes, *, serializable: bool = False) -> pb.KeyValue | None:
        req = pb.RangeRequest(key=key, serializable=serializable)
        resp = await self.call(lambda s: s.kv.Range(req, timeout=self.rpc_timeout_s))
        return resp.kvs[0] if resp.kvs else None

    async def delete(self, key: bytes, range_end: bytes = b"") -> int:
        req = pb.DeleteRequest(session=self.session(), key=key, range_end=range_end)
        resp = await self.call(lambda s: s.kv.Delete(req, timeout=self.rpc_timeout_s))
        return int(resp.deleted)

    async def cas(self, key: bytes, expected: bytes | None, new: bytes) -> bool:
        """Set `key` to `new` iff its value is `expected` (None: iff it does not exist)."""
        if expected is None:
            cmp = pb.Compare(key=key, target=pb.Compare.VERSION, op=pb.Compare.EQUAL, number=0)
        else:
            cmp = pb.Compare(key=key, target=pb.Compare.VALUE, op=pb.Compare.EQUAL, value=expected)
        req = pb.TxnRequest(
            session=self.session(),
            compares=[cmp],
            success=[pb.TxnOp(put=pb.PutRequest(key=key, value=new))],
        )
        resp = await self.call(lambda s: s.kv.Txn(req, timeout=self.rpc_timeout_s))
        return bool(resp.succeeded)

    # --- leases and locks ----------------------------------------------------------------------

    async def lease_grant(self, ttl_ms: int) -> int:
        req = pb.LeaseGrantRequest(session=self.session(), ttl_ms=ttl_ms)
        resp = await self.call(lambda s: s.lease.Grant(req, timeout=self.rpc_timeout_s))
        return int(resp.id)

    async def lease_revoke(self, lease: int) -> None:
        req = pb.LeaseRevokeRequest(session=self.session(), id=lease)
        await self.call(lambda s: s.lease.Revoke(req, timeout=self.rpc_timeout_s))

    async def lease_keepalive_once(self, lease: int) -> int:
        """Renew once; returns the TTL granted again (ms)."""

        async def once(s: _Stubs) -> Any:  # noqa: ANN401 (a generated, untyped message)
            call = s.lease.KeepAlive(timeout=self.rpc_timeout_s)
            await call.write(pb.LeaseKeepAliveRequest(id=lease))
            resp = await call.read()
            await call.done_writing()
            return resp

        resp = await self.call(once)
        if resp is grpc.aio.EOF or resp.ttl_ms == 0:
            raise ConcordError("NOT_FOUND", f"lease {lease} has ended")
        return int(resp.ttl_ms)

    async def acquire(
        self, name: str, lease: int, *, max_holders: int = 1, lock_delay_ms: int = 0
    ) -> Lock:
        """Block until `name` is held under `lease`; returns the grant's fencing token."""
        req = pb.LockRequest(
            session=self.session(),
            name=name,
            lease=lease,
            max_holders=max_holders,
            lock_delay_ms=lock_delay_ms,
            wait=True,
        )
        while True:
            try:
                resp = await self.call(lambda s: s.lock.Lock(req, timeout=self.rpc_timeout_s))
            except ConcordError as err:
                if err.code == "UNAVAILABLE":
                    continue  # still waiting in line; the retry keeps our place (same session)
                raise
            if resp.granted:
                return Lock(name, lease, int(resp.fencing_token))

    async def release(self, lock: Lock) -> None:
        req = pb.UnlockRequest(session=self.session(), name=lock.name, lease=lock.lease)
        await self.call(lambda s: s.lock.Unlock(req, timeout=self.rpc_timeout_s))

    async def check_fence(self, name: str, token: int) -> bool:
        req = pb.CheckFenceRequest(name=name, fencing_token=token)
        resp = await self.call(lambda s: s.lock.CheckFence(req, timeout=self.rpc_timeout_s))
        return bool(resp.current)

    @contextlib.asynccontextmanager
    async def lock(self, name: str, *, ttl_ms: int = 10_000) -> AsyncIterator[Lock]:
        """Hold `name` for the body of an `async with`, yielding the grant (with its fencing
        token). A lease is kept alive meanwhile; the lock is released (and the lease revoked)
        on exit, even on error."""
        lease = await self.lease_grant(ttl_ms)
        keeper = asyncio.create_task(self._keep_alive(lease, ttl_ms))
        try:
            held = await self.acquire(name, lease)
            yield held
            await self.release(held)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(ConcordError):
                await self.lease_revoke(lease)

    async def _keep_alive(self, lease: int, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            await self.lease_keepalive_once(lease)

    # --- sequences -----------------------------------------------------------------------------

    async def sequence_create(self, name: str, start: int = 1, increment: int = 1) -> None:
        req = pb.SequenceCreateRequest(
            session=self.session(), name=name, start=start, increment=increment
        )
        await self.call(lambda s: s.sequence.Create(req, timeout=self.rpc_timeout_s))

    async def sequence_next(self, name: str, count: int = 1) -> list[int]:
        req = pb.SequenceNextRequest(session=self.session(), name=name, count=count)
        resp = await self.call(lambda s: s.sequence.Next(req, timeout=self.rpc_timeout_s))
        return [int(resp.first) + i * int(resp.increment) for i in range(int(resp.count))]

    # --- cluster -------------------------------------------------------------------------------

    async def members(self) -> pb.MemberListResponse:
        req = pb.MemberListRequest()
        return await self.call(lambda s: s.cluster.MemberList(req, timeout=self.rpc_timeout_s))

    async def status(self) -> pb.StatusResponse:
        req = pb.StatusRequest()
        return await self.call(lambda s: s.cluster.Status(req, timeout=self.rpc_timeout_s))


def _leader_hint(err: grpc.aio.AioRpcError) -> str:
    """The leader's host:port from a redirect, or "" (the hint may be a bare member id when
    the member directory has no address for the leader: then we just try the next one)."""
    for key, value in err.trailing_metadata() or ():
        if key == "concord-leader":
            text = str(value)
            if "://" in text:
                text = text.split("://", 1)[1]
            return text.rstrip("/") if ":" in text else ""
    return ""
