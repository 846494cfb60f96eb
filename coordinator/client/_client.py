"""The asyncio client: finds the leader, retries safely, and offers locks as context managers.

Leader discovery. Any member answers reads; mutations need the leader. A member that is not
the leader answers UNAVAILABLE with trailing metadata `concord-leader` naming it; the client
switches to that endpoint (or, with no hint, tries the next one) and retries.

Exactly once. A mutation runs under a session: a random 64-bit client id and the next
sequence number of that id. A retry (after a timeout, a redirect, a lost leader) reuses the
SAME (client id, seq), so the state machine answers a duplicate from its session table
instead of running it twice: a retried sequence `next` never burns a block, a retried put
never overwrites a later one. The state machine keeps one answer per client id and expects
one request at a time per id, so a `Client` shared by many tasks keeps a pool of ids: each
call borrows an idle one (or makes a new one) for its whole life, retries included, and
returns it with its sequence advanced. The pool grows to the client's peak concurrency.

Errors. Every failure is a `ConcordError` of the status's own type (`_errors.py`:
`NotFound`, `InvalidArgument`, `Unavailable`, `DeadlineExceeded`...); no grpc type escapes.
Statuses a person must act on (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
OUT_OF_RANGE, PERMISSION_DENIED) are raised at once with the server's message; UNAVAILABLE,
DEADLINE_EXCEEDED and a transport's INTERNAL or CANCELLED (a reset stream) are retried until
`timeout_s` runs out, which ends in `DeadlineExceeded` naming that budget.

Deadlines. Each attempt against one member is bounded by `attempt_timeout_s` (much shorter
than `timeout_s`), and a stopped member is detected by keepalive pings, so a leader that
stops answering is left within about an election timeout (`_transport.py`). A wrong endpoint
(a metrics or peer port, TLS against plaintext or the reverse, nothing listening) is
recognised from the transport's error and reported with what to do, within
`connect_timeout_s`, instead of being retried for `timeout_s`.

Locked members. A member with autolock on that has not been given its unlock key answers
UNAVAILABLE with trailing metadata `concord-locked`: the client moves on to the next endpoint,
and gives up at once (UNAVAILABLE, "member is locked: run concordctl unlock") when every
endpoint it knows is locked, instead of retrying for `timeout_s`.

Per-member calls. Key management (`unlock_member`, `autolock_status`, `set_autolock`,
`rotate_unlock_key`) acts on one member's own key ring, so these calls go to the endpoint
named, are never redirected, and are retried there only while it is unreachable or starting.

Streams. `watch` and `observe` are async iterators that reconnect (to the next endpoint, if
need be) after a broken stream and resume where they were, so a consumer sees every change
once, in order; they give up after `timeout_s` without any member answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as rpc
from coordinator.sealing import Reason

from ._config import (
    ca_credentials,
    credentials_from_tls_dir,
    parse_endpoints,
    settings_from_env,
    token_credentials,
)
from ._errors import (
    Cancelled,
    ConcordError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
    error_for,
)
from ._keepalive import KeptLease, Renewer
from ._pipe import WATCH_RESUME_METADATA_KEY, CallFailed, Pipe, format_s
from ._secrets import (
    SEAL_FAILURE_METADATA_KEY,
    ReEncrypted,
    SealedCheck,
    SealFailed,
    SealingKeyInfo,
    SealingKeys,
    Unsealed,
    sealed_value,
    sealing_key,
)
from ._transport import Failure, channel_options, silent
from ._types import (
    AutolockChange,
    AutolockStatus,
    Compare,
    DataKeyRotation,
    Event,
    JoinTokenInfo,
    KeyValue,
    Leadership,
    LeaseInfo,
    Lock,
    LockInfo,
    MemberList,
    NewJoinToken,
    Put,
    SequenceInfo,
    Status,
    TxnOp,
    TxnResult,
    UnlockKeyRotation,
)

if TYPE_CHECKING:
    from ._holds import HeldLeadership, HeldLock

T = TypeVar("T")

BLOCKING_KINDS = frozenset({"lock", "campaign"})
"""Pipelined calls the member holds while the caller waits in line: bounded by
`rpc_timeout_s` (the member answers "still queued" before it), not by `attempt_timeout_s`."""


class _Stubs:
    def __init__(self, channel: grpc.aio.Channel, endpoint: str) -> None:
        self.channel = channel
        self.endpoint = endpoint
        # The generated stubs are untyped; the typed surface is this client's own methods.
        stubs: Any = rpc
        self.kv = stubs.KVStub(channel)
        self.lease = stubs.LeaseStub(channel)
        self.lock = stubs.LockStub(channel)
        self.election = stubs.ElectionStub(channel)
        self.sequence = stubs.SequenceStub(channel)
        self.watch = stubs.WatchStub(channel)
        self.cluster = stubs.ClusterStub(channel)
        self.maintenance = stubs.MaintenanceStub(channel)
        self._pipeline = stubs.PipelineStub(channel)
        self._pipe: Pipe | None = None
        self.secrets = stubs.SecretsStub(channel)

    def pipe(self) -> Pipe:
        """The Pipeline stream to this endpoint (a new one if the last one broke)."""
        if self._pipe is None or self._pipe.broken is not None:
            self._pipe = Pipe(self._pipeline, self.endpoint)
        return self._pipe

    async def close(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()
        await self.channel.close()


def _slow_consumer(exc: grpc.RpcError) -> bool:
    """A watch stream ended by the member because the consumer fell behind (it names the
    revision to resume from; `Client.watch` tracks its own)."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    return any(key == WATCH_RESUME_METADATA_KEY for key, _ in exc.trailing_metadata() or ())


class Client:
    """The asyncio client (see the module doc). Build it from endpoints and credentials, or
    with `from_tls_dir` / `from_env`; use it as an `async with` block, or `close()` it."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token_file: str | os.PathLike[str] | None = None,
        timeout_s: float = 10.0,
        rpc_timeout_s: float = 3.0,
        attempt_timeout_s: float = 1.0,
        connect_timeout_s: float = 2.0,
        pipeline: bool = True,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        """host:port of the members to try, checked (InvalidArgument names a bad one)."""
        if token_file is not None:
            if credentials is None:
                raise InvalidArgument(
                    "a workload token is only sent over TLS: give credentials that trust the "
                    "cluster CA (Client.with_token(endpoints, token_file, ca_file))"
                )
            credentials = token_credentials(credentials, token_file)
        self.token_file = None if token_file is None else str(token_file)
        """A pod's ServiceAccount token, sent on every call (the members' workload ports),
        re-read when the file changes; None: the credentials alone identify the client."""
        self.credentials = credentials
        self.timeout_s = timeout_s
        """The whole call's budget, retries included."""
        self.rpc_timeout_s = rpc_timeout_s
        """One wait of a blocking call (a lock or campaign in line; a maintenance call)."""
        self.attempt_timeout_s = min(attempt_timeout_s, rpc_timeout_s)
        """One attempt of an ordinary call against one member; then the next member. Never
        more than `rpc_timeout_s`, which bounds every single RPC."""
        self.connect_timeout_s = connect_timeout_s
        """How long every endpoint may refuse connections or fail handshakes before a call
        gives up (a member restarting is back within it; a wrong port never is)."""
        self.pipeline = pipeline
        """Send the small calls (KV, CAS, sequences, leases, locks) on one multiplexed
        Pipeline stream per member rather than one unary RPC each (see the module doc)."""
        self._idle_sessions: list[list[int]] = []
        """Sessions no call is using: [client id, last seq used]; most recently used last."""
        self._current = 0
        self._stubs: dict[str, _Stubs] = {}
        self._suspect_until: dict[str, float] = {}
        """Endpoints whose last attempt timed out, until when (the loop's clock): redirects
        naming them are not followed meanwhile (see `_transport.py`)."""
        self._closed = False
        self._keepalive: Renewer | None = None

    @classmethod
    def from_tls_dir(
        cls,
        endpoints: str | Sequence[str],
        tls_dir: str | os.PathLike[str],
        **options: Any,  # noqa: ANN401 (the constructor's keyword options)
    ) -> Client:
        """A client with mutual TLS from a directory holding ca.pem and client.pem +
        client-key.pem (or member.pem + member-key.pem), as `concordctl cluster init`
        writes it. InvalidArgument (a ValueError) names a missing file or bad endpoint."""
        return cls(endpoints, credentials=credentials_from_tls_dir(tls_dir), **options)

    @classmethod
    def with_token(
        cls,
        endpoints: str | Sequence[str],
        token_file: str | os.PathLike[str],
        ca_file: str | os.PathLike[str],
        **options: Any,  # noqa: ANN401 (the constructor's keyword options)
    ) -> Client:
        """A client of members' workload ports: TLS trusting the cluster CA in `ca_file`,
        no client certificate, and the pod's ServiceAccount token from `token_file` (audience
        concord) on every call. The members scope it to `k8s/<its namespace>/`."""
        return cls(endpoints, credentials=ca_credentials(ca_file), token_file=token_file, **options)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        **options: Any,  # noqa: ANN401 (the constructor's keyword options)
    ) -> Client:
        """A client of CONCORD_ENDPOINTS (comma-separated host:port, required) with the TLS
        directory CONCORD_TLS_DIR (unset: plaintext, for --insecure members)."""
        endpoints, credentials = settings_from_env(env)
        return cls(endpoints, credentials=credentials, **options)

    async def close(self) -> None:
        self._closed = True
        if self._keepalive is not None:
            await self._keepalive.close()
        for stubs in self._stubs.values():
            await stubs.close()
        self._stubs.clear()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _stubs_for(self, endpoint: str) -> _Stubs:
        if self._closed:
            raise Cancelled("the client is closed")
        stubs = self._stubs.get(endpoint)
        if stubs is None:
            options = channel_options()
            if self.credentials is None:
                channel = grpc.aio.insecure_channel(endpoint, options=options)
            else:
                channel = grpc.aio.secure_channel(endpoint, self.credentials, options=options)
            stubs = self._stubs[endpoint] = _Stubs(channel, endpoint)
        return stubs

    def _failure(self, exc: Exception, endpoint: str) -> Failure:
        """What a failed attempt on `endpoint` means; a timed-out attempt makes it suspect."""
        err = Failure.of(exc, endpoint, tls=self.credentials is not None)
        if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            loop = asyncio.get_running_loop()
            self._suspect_until[endpoint] = loop.time() + 2 * self.attempt_timeout_s
            stubs = self._stubs.get(endpoint)
            if stubs is not None and stubs.channel.get_state() != grpc.ChannelConnectivity.READY:
                return dataclasses.replace(err, unreachable=silent(endpoint))
        return err

    def _hint(self, leader: str) -> str:
        """Where to follow a redirect. A redirect names the leader's client port, which asks
        for a client certificate: a client with a workload token goes to the endpoint it
        was given on the same host instead (the leader's workload port) if exactly one is
        there, else nowhere: the client then tries its endpoints in turn."""
        if not leader or self.token_file is None:
            return leader
        host = leader.rpartition(":")[0]
        same = [e for e in self.endpoints if e.rpartition(":")[0] == host]
        return same[0] if len(same) == 1 else ""

    def _suspect(self, endpoint: str) -> bool:
        until = self._suspect_until.get(endpoint)
        return until is not None and asyncio.get_running_loop().time() < until

    def _heard_from(self, endpoint: str) -> None:
        self._suspect_until.pop(endpoint, None)

    async def call_endpoint(self, endpoint: str, fn: Callable[[_Stubs], Awaitable[T]]) -> T:
        """Run one RPC against `endpoint` itself (no redirect): retried there while it is
        unreachable or starting, up to `timeout_s`; a locked member's refusal is final."""
        endpoint = parse_endpoints([endpoint])[0]
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout_s
        delay_s = 0.05
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    result = await fn(self._stubs_for(endpoint))
                self._heard_from(endpoint)
                return result
            except TimeoutError:
                raise DeadlineExceeded(
                    f"{endpoint} did not answer within {format_s(self.timeout_s)}"
                ) from None
            except (grpc.RpcError, CallFailed, asyncio.InvalidStateError) as exc:
                err = self._failure(exc, endpoint)
                if err.wrong:
                    raise Unavailable(err.wrong) from None
                if not err.retryable or err.locked:
                    raise error_for(err.code.name, err.details, locked=err.locked) from None
                if err.unreachable and loop.time() - started >= self.connect_timeout_s:
                    raise Unavailable(err.unreachable) from None
                if loop.time() + delay_s >= deadline:
                    raise error_for(
                        err.code.name,
                        f"{endpoint} did not answer within {format_s(self.timeout_s)}: "
                        f"{err.details}",
                    ) from None
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 0.5)

    def _move_past(self, endpoint: str) -> None:
        """Try the next endpoint after `endpoint` failed, unless a concurrent call already
        moved on: calls failing together on one dead member must advance once, not once
        each (with as many calls as endpoints they would cycle back to the dead one).
        Suspect endpoints are passed over while another one is not suspect."""
        n = len(self.endpoints)
        if self.endpoints[self._current % n] != endpoint:
            return
        for step in range(1, n + 1):
            if not self._suspect(self.endpoints[(self._current + step) % n]):
                self._current += step
                return
        self._current += 1

    @contextlib.contextmanager
    def session(self) -> Iterator[pb.Session]:
        """A session for one call, retries included (see the module doc). Given back with its
        sequence advanced whatever the outcome: if an abandoned attempt still applies later,
        the state machine sees an old sequence and ignores it."""
        held = self._idle_sessions.pop() if self._idle_sessions else [secrets.randbits(63) | 1, 0]
        held[1] += 1
        try:
            yield pb.Session(client_id=held[0], seq=held[1])
        finally:
            self._idle_sessions.append(held)

    @contextlib.contextmanager
    def _sessions(self, count: int) -> Iterator[list[pb.Session]]:
        """`count` consecutive sessions of ONE client id, for a call and its follow-ups (a
        blocked acquire and its withdrawal): whichever of them the state machine applies
        later than a higher-numbered one is a stale duplicate it drops. Same rules as
        `session()` otherwise."""
        held = self._idle_sessions.pop() if self._idle_sessions else [secrets.randbits(63) | 1, 0]
        first = held[1] + 1
        held[1] += count
        try:
            yield [pb.Session(client_id=held[0], seq=first + i) for i in range(count)]
        finally:
            self._idle_sessions.append(held)

    async def call(
        self, fn: Callable[[_Stubs], Awaitable[T]], *, budget_s: float | None = None
    ) -> T:
        """Run one RPC against the leader, following redirects and retrying what is safe,
        within `budget_s` in all (default `timeout_s`; each attempt has its own, shorter,
        bound: see `_small`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        total_s = self.timeout_s if budget_s is None else budget_s
        deadline = started + total_s
        delay_s = 0.02
        last: Failure | None = None
        locked: set[str] = set()
        wrong: dict[str, str] = {}
        unreachable: dict[str, str] = {}
        while loop.time() < deadline:
            endpoint = self.endpoints[self._current % len(self.endpoints)]
            try:
                async with asyncio.timeout(deadline - loop.time()):
                    result = await fn(self._stubs_for(endpoint))
                self._heard_from(endpoint)
                return result
            except TimeoutError:
                break
            except (grpc.RpcError, CallFailed, asyncio.InvalidStateError) as exc:
                err = self._failure(exc, endpoint)
                if not err.retryable:
                    self._heard_from(endpoint)
                    raise error_for(err.code.name, err.details) from None
                if err.queued:
                    # Still in line on this very member: the blocking caller re-issues it
                    # here at once (moving on or backing off would only delay the grant).
                    raise error_for(err.code.name, err.details) from None
                last = err
                if err.locked:
                    locked.add(endpoint)
                    if locked.issuperset(self.endpoints):
                        message = _every_locked(self.endpoints, err.details)
                        raise Unavailable(message, locked=True) from None
                    self._move_past(endpoint)
                    continue
                if err.wrong:
                    wrong[endpoint] = err.wrong
                if err.unreachable:
                    unreachable[endpoint] = err.unreachable
                if not err.wrong and not err.unreachable:
                    wrong.pop(endpoint, None)
                    unreachable.pop(endpoint, None)
                if set(wrong).issuperset(self.endpoints):
                    raise Unavailable(_advice(wrong)) from None
                if set(wrong).union(unreachable).issuperset(self.endpoints) and (
                    loop.time() - started >= self.connect_timeout_s
                ):
                    raise Unavailable(_advice({**unreachable, **wrong})) from None
                hint = self._hint(err.leader)
                if hint and hint != endpoint and not self._suspect(hint):
                    if hint not in self.endpoints:
                        self.endpoints.append(hint)
                    self._current = self.endpoints.index(hint)
                    continue
                self._move_past(endpoint)
                await asyncio.sleep(min(delay_s, max(0.0, deadline - loop.time())))
                delay_s = min(delay_s * 2, 0.25)
        if set(wrong).union(unreachable).issuperset(self.endpoints):
            raise Unavailable(_advice({**unreachable, **wrong}))
        advice = f" ({_advice({**unreachable, **wrong})})" if wrong or unreachable else ""
        if last is not None and last.code == grpc.StatusCode.UNAVAILABLE:
            # Members answered, but none could serve (no leader, unreachable): still
            # UNAVAILABLE, which a blocking caller may keep waiting through.
            raise Unavailable(f"gave up after {format_s(total_s)}: {last.details}{advice}")
        detail = f": last: {last.code.name}: {last.details}" if last is not None else ""
        raise DeadlineExceeded(f"no answer within {format_s(total_s)}{detail}{advice}")

    async def _small(
        self,
        kind: str,
        request: Any,  # noqa: ANN401 (a generated message)
        unary: Callable[[_Stubs], Callable[..., Awaitable[Any]]],
    ) -> Any:  # noqa: ANN401
        """One small call, through `call` (redirects, retries): on the member's Pipeline
        stream as a `kind` call, or as its unary RPC when `pipeline` is off. Each attempt is
        bounded by `attempt_timeout_s` (`rpc_timeout_s` for a blocking lock or campaign)."""
        if kind in BLOCKING_KINDS:
            timeout_s, budget_s = self.rpc_timeout_s, self._blocking_budget_s()
        else:
            timeout_s, budget_s = self.attempt_timeout_s, None
        if self.pipeline:
            return await self.call(
                lambda s: s.pipe().send(kind, request, timeout_s), budget_s=budget_s
            )
        return await self.call(lambda s: unary(s)(request, timeout=timeout_s), budget_s=budget_s)

    def _blocking_budget_s(self) -> float:
        """The budget of one round of a blocking lock or campaign. The member answers "still
        queued" just before the request's own deadline (`rpc_timeout_s`) and the caller asks
        again; a round cut short before that answer would be a cancellation, which the member
        takes as the caller giving up, withdrawing its place in line. So the round outlasts
        the request's deadline, whatever `timeout_s` is; the caller's own deadline (the
        `timeout_s` of `acquire` or `campaign`) still bounds the whole wait."""
        return max(self.timeout_s, self.rpc_timeout_s + 1.0)

    # --- KV ------------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        with self.session() as session:
            req = pb.PutRequest(session=session, key=key, value=value, lease=lease)
            resp = await self._small("put", req, lambda s: s.kv.Put)
            return int(resp.header.revision)

    async def get(self, key: bytes, *, serializable: bool = False) -> KeyValue | None:
        """`key`'s value, or None if absent. Linearizable, unless `serializable` (the
        answering member's own state: may be stale, works without a quorum)."""
        kvs = await self.get_range(key, serializable=serializable)
        return kvs[0] if kvs else None

    async def get_range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        limit: int = 0,
        serializable: bool = False,
    ) -> list[KeyValue]:
        """The keys in [key, range_end) in key order (range_end b"": just `key`; b"\\0":
        every key >= key), at most `limit` of them (0: all), read at one revision."""
        req = pb.RangeRequest(key=key, range_end=range_end, limit=limit, serializable=serializable)
        resp = await self._small("range", req, lambda s: s.kv.Range)
        return [KeyValue._from_pb(kv) for kv in resp.kvs]

    async def get_prefix(
        self, prefix: bytes, *, limit: int = 0, serializable: bool = False
    ) -> list[KeyValue]:
        """Every key that starts with `prefix` (b"": every key), in key order."""
        return await self.get_range(
            prefix or b"\0", prefix_end(prefix), limit=limit, serializable=serializable
        )

    async def get_many(
        self, keys: Sequence[bytes], *, serializable: bool = False
    ) -> list[KeyValue | None]:
        """Each key's value (None if absent), in the order given. The reads go out together
        (one batch on the Pipeline stream), each linearizable, but not all at one revision:
        for a consistent view of related keys, keep them under a prefix and `get_prefix`."""
        return list(await asyncio.gather(*(self.get(k, serializable=serializable) for k in keys)))

    async def delete(self, key: bytes, range_end: bytes = b"") -> int:
        with self.session() as session:
            req = pb.DeleteRequest(session=session, key=key, range_end=range_end)
            resp = await self._small("delete", req, lambda s: s.kv.Delete)
            return int(resp.deleted)

    async def cas(self, key: bytes, expected: bytes | None, new: bytes) -> bool:
        """Set `key` to `new` iff its value is `expected` (None: iff it does not exist)."""
        if expected is None:
            cmp = Compare(key, "version", "=", 0)
        else:
            cmp = Compare(key, "value", "=", expected)
        return (await self.txn([cmp], [Put(key, new)])).succeeded

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """If every compare holds, run `success`, else `failure`, atomically (exactly once);
        both see one revision."""
        with self.session() as session:
            req = pb.TxnRequest(
                session=session,
                compares=[c._to_pb() for c in compares],
                success=[op._to_pb() for op in success],
                failure=[op._to_pb() for op in failure],
            )
            resp = await self._small("txn", req, lambda s: s.kv.Txn)
            return TxnResult._from_pb(resp)

    # --- leases and locks ----------------------------------------------------------------------

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
                await call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError) as exc:
                # The stream may have ended (its deadline, the member going away) before a
                # write or read: grpc then raises InvalidStateError, not its status. Report
                # the stream's own status, as a unary call would.
                raise await _stream_failure(call, exc, s.endpoint) from None
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
        from ._holds import within  # noqa: PLC0415 (_holds builds on this module)

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

    @contextlib.asynccontextmanager
    async def lock(
        self,
        name: str,
        *,
        ttl_ms: int = 10_000,
        timeout_s: float | None = None,
        max_holders: int = 1,
        lock_delay_ms: int = 0,
        wait: bool = True,
    ) -> AsyncIterator[HeldLock]:
        """Hold `name` for the body of an `async with`, on a lease of its own kept alive in
        the background. The `HeldLock` yielded carries the fencing token and says at once
        when the lock is lost (`lost`, `wait_lost()`, `add_lost_callback()`, `check()`).
        `timeout_s` (seconds, None: forever) bounds the wait (`DeadlineExceeded`). The lease
        is revoked on exit (releasing the lock) however the body ends, without ever
        replacing its exception or result. `wait=False`: do not queue; `LockBusy` at once if
        the lock is taken. See `_holds.py`."""
        from ._holds import hold_lock  # noqa: PLC0415 (_holds builds on this module)

        async with hold_lock(
            self,
            name,
            ttl_ms=ttl_ms,
            timeout_s=timeout_s,
            max_holders=max_holders,
            lock_delay_ms=lock_delay_ms,
            wait=wait,
        ) as held:
            yield held

    # --- sequences -----------------------------------------------------------------------------

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

    # --- elections -----------------------------------------------------------------------------

    async def campaign(
        self, election: str, lease: int, value: bytes, *, timeout_s: float | None = None
    ) -> Leadership:
        """Block until `lease` leads `election`, publishing `value`; returns the leadership
        (its fencing token strictly increases across all leaderships of the election).

        `timeout_s` as for `acquire`: on timeout (`DeadlineExceeded`) or cancellation the
        campaign is withdrawn (Resign), which also resigns a win that raced with it."""
        from ._holds import within  # noqa: PLC0415 (_holds builds on this module)

        # One client id for the campaign and its withdrawal, as in `acquire`.
        with self._sessions(2) as (session, then):
            req = pb.CampaignRequest(session=session, election=election, lease=lease, value=value)
            resign = pb.ResignRequest(
                session=then, leader=pb.LeaderKey(election=election, lease=lease)
            )
            return await within(
                f"the leadership of election {election!r}",
                timeout_s,
                lambda: self._wait_for_leadership(req),
                lambda: self.call(lambda s: s.election.Resign(resign, timeout=self.rpc_timeout_s)),
                self.rpc_timeout_s,
            )

    async def _wait_for_leadership(self, req: pb.CampaignRequest) -> Leadership:
        """Campaign, waiting in line for as long as it takes (the caller bounds it)."""
        while True:
            try:
                resp = await self.call(
                    lambda s: s.election.Campaign(req, timeout=self.rpc_timeout_s),
                    budget_s=self._blocking_budget_s(),
                )
            except ConcordError as err:
                if err.waiting:
                    continue  # still in line; the retry keeps our place (same session)
                raise
            key = resp.leader
            return Leadership(key.election, int(key.lease), int(key.fencing_token), req.value)

    @contextlib.asynccontextmanager
    async def leadership(
        self,
        election: str,
        value: bytes,
        *,
        ttl_ms: int = 10_000,
        timeout_s: float | None = None,
    ) -> AsyncIterator[HeldLeadership]:
        """Lead `election` (publishing `value`) for the body of an `async with`, on a lease
        of its own kept alive in the background; the `HeldLeadership` says at once when the
        leadership is lost, as `lock()`'s handle does. `timeout_s` bounds the campaign
        (`DeadlineExceeded`). Resigns (revokes the lease) on exit, however the body ends."""
        from ._holds import hold_leadership  # noqa: PLC0415 (_holds builds on this module)

        async with hold_leadership(
            self, election, value, ttl_ms=ttl_ms, timeout_s=timeout_s
        ) as held:
            yield held

    async def proclaim(self, leadership: Leadership, value: bytes) -> Leadership:
        """Publish a new value as the current leader (FAILED_PRECONDITION if no longer)."""
        with self.session() as session:
            req = pb.ProclaimRequest(session=session, leader=_leader_key(leadership), value=value)
            await self.call(lambda s: s.election.Proclaim(req, timeout=self.attempt_timeout_s))
            return Leadership(
                leadership.election, leadership.lease, leadership.fencing_token, value
            )

    async def resign(self, leadership: Leadership) -> None:
        """Give up the leadership (or a queued campaign) of `leadership.lease`."""
        with self.session() as session:
            req = pb.ResignRequest(session=session, leader=_leader_key(leadership))
            await self.call(lambda s: s.election.Resign(req, timeout=self.attempt_timeout_s))

    async def leader(self, election: str, *, serializable: bool = False) -> Leadership | None:
        """The election's current leader, or None if it has none."""
        req = pb.LeaderRequest(election=election, serializable=serializable)
        resp = await self.call(lambda s: s.election.Leader(req, timeout=self.attempt_timeout_s))
        return _leadership(resp)

    # --- watch ---------------------------------------------------------------------------------

    async def watch(
        self, key: bytes, range_end: bytes = b"", *, start_revision: int = 0
    ) -> AsyncGenerator[Event, None]:
        """Every change to `key` (or to [key, range_end); b"\\0" = every key >= key) from
        `start_revision` (0: from now on), in revision order, until the caller stops
        iterating. Whenever a stream ends without a final answer (a member stops or is
        unreachable, a transport reset, or the member ended it because this consumer fell
        behind: RESOURCE_EXHAUSTED "slow consumer") the watch resumes, on this or another
        member, from the revision after the last event seen, so every event is seen once, in
        order. `OutOfRange` (final) means the history no longer reaches back that far: the
        events in between were compacted while the watch was away; read the current state
        and watch again from the revision the message names."""
        next_revision = start_revision
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout_s
        delay_s = 0.02
        locked: set[str] = set()
        wrong: dict[str, str] = {}
        while True:
            endpoint = self.endpoints[self._current % len(self.endpoints)]
            req = pb.WatchRequest(key=key, range_end=range_end, start_revision=next_revision)
            stream = self._stubs_for(endpoint).watch.Watch(req)
            try:
                async for resp in stream:
                    deadline = loop.time() + self.timeout_s
                    delay_s = 0.02
                    wrong.clear()
                    if next_revision == 0:
                        next_revision = int(resp.header.revision) + 1
                    for event in resp.events:
                        next_revision = int(event.revision) + 1
                        yield Event._from_pb(event)
            except grpc.RpcError as exc:
                err = self._failure(exc, endpoint)
                if _slow_consumer(exc):
                    # The member ended this stream because it fell behind; everything before
                    # `next_revision` was seen, so resume from there (on the same member).
                    delay_s = 0.02
                    continue
                if not err.retryable:
                    raise error_for(err.code.name, err.details) from None
                if err.locked:
                    locked.add(endpoint)
                    if locked.issuperset(self.endpoints):
                        message = _every_locked(self.endpoints, err.details)
                        raise Unavailable(message, locked=True) from None
                if err.wrong or err.unreachable:
                    wrong[endpoint] = err.wrong or err.unreachable
                    if set(wrong).issuperset(self.endpoints) and (
                        err.wrong or loop.time() - started >= self.connect_timeout_s
                    ):
                        raise Unavailable(_advice(wrong)) from None
                if loop.time() >= deadline:
                    raise error_for(
                        err.code.name,
                        f"the watch stream broke and no member resumed it within "
                        f"{format_s(self.timeout_s)}: {err.details}",
                    ) from None
            finally:
                stream.cancel()
            if loop.time() >= deadline:
                raise Unavailable(
                    f"the watch stream keeps ending and no member resumed it within "
                    f"{format_s(self.timeout_s)}"
                )
            self._move_past(endpoint)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)

    # --- cluster -------------------------------------------------------------------------------

    async def members(self, *, serializable: bool = False) -> MemberList:
        """The member directory with each member's reachability. `serializable`: the
        answering member's own view, which works without a quorum (possibly stale)."""
        req = pb.MemberListRequest(serializable=serializable)
        resp = await self.call(lambda s: s.cluster.MemberList(req, timeout=self.attempt_timeout_s))
        return MemberList._from_pb(resp)

    async def status(self) -> Status:
        """The answering member's view (any member answers: not redirected to the leader)."""
        req = pb.StatusRequest()
        resp = await self.call(lambda s: s.cluster.Status(req, timeout=self.attempt_timeout_s))
        return Status._from_pb(resp)

    async def member_add_learner(
        self, member: int, name: str, peer_url: str, client_url: str, *, readmit: bool = False
    ) -> None:
        """Add a non-voting learner (it catches up before `member_promote`); a no-op if it
        already is one. `readmit`: the id was removed earlier and this is that member coming
        back, its earlier process gone (else a removed id is FAILED_PRECONDITION)."""
        req = pb.MemberAddLearnerRequest(
            id=member, name=name, peer_url=peer_url, client_url=client_url, readmit=readmit
        )
        await self.call(lambda s: s.cluster.MemberAddLearner(req, timeout=self.rpc_timeout_s))

    async def member_promote(self, member: int) -> None:
        """Make a caught-up learner a voter (FAILED_PRECONDITION while it lags)."""
        req = pb.MemberIdRequest(id=member)
        await self.call(lambda s: s.cluster.MemberPromote(req, timeout=self.rpc_timeout_s))

    async def member_remove(self, member: int) -> None:
        req = pb.MemberIdRequest(id=member)
        await self.call(lambda s: s.cluster.MemberRemove(req, timeout=self.rpc_timeout_s))

    async def transfer_leader(self, member: int) -> None:
        """Hand leadership to voter `member`; returns once it leads."""
        req = pb.MemberIdRequest(id=member)
        await self.call(lambda s: s.cluster.TransferLeader(req, timeout=self.timeout_s))

    # --- join tokens ---------------------------------------------------------------------------

    async def join_token_create(self) -> NewJoinToken:
        """A new join token: `.token` is shown this once (the cluster keeps its hash only).
        Not exactly-once: a retry after an unknown outcome may leave an unseen extra token."""
        req = pb.JoinTokenCreateRequest()
        resp = await self.call(
            lambda s: s.cluster.JoinTokenCreate(req, timeout=self.attempt_timeout_s)
        )
        return NewJoinToken(str(resp.token), JoinTokenInfo._from_pb(resp.info))

    async def join_token_list(self) -> list[JoinTokenInfo]:
        """Every join token's id and times (revoked ones included), oldest first."""
        req = pb.JoinTokenListRequest()
        resp = await self.call(
            lambda s: s.cluster.JoinTokenList(req, timeout=self.attempt_timeout_s)
        )
        return [JoinTokenInfo._from_pb(t) for t in resp.tokens]

    async def join_token_revoke(self, token_or_id: str) -> JoinTokenInfo:
        """Revoke a join token, given as its id or the token itself (idempotent)."""
        req = pb.JoinTokenRevokeRequest(id=token_or_id)
        resp = await self.call(
            lambda s: s.cluster.JoinTokenRevoke(req, timeout=self.attempt_timeout_s)
        )
        return JoinTokenInfo._from_pb(resp.info)

    # --- one member's keys (per endpoint, never redirected) --------------------------------------

    async def unlock_member(self, endpoint: str, unlock_key: str) -> int:
        """Give a locked member its unlock key; returns its member id."""
        req = pb.UnlockMemberRequest(unlock_key=unlock_key)
        resp = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.Unlock(req, timeout=self.rpc_timeout_s)
        )
        return int(resp.member_id)

    async def autolock_status(self, endpoint: str) -> AutolockStatus:
        req = pb.AutolockStatusRequest()
        st = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.AutolockStatus(req, timeout=self.rpc_timeout_s)
        )
        return AutolockStatus(
            int(st.member_id),
            str(st.member_name),
            str(st.phase),
            bool(st.locked),
            bool(st.autolock),
        )

    async def set_autolock(self, endpoint: str, enabled: bool) -> AutolockChange:
        """Turn the member's autolock on (the result carries its new unlock key, once) or
        off; `changed` is False if it already was so."""
        req = pb.SetAutolockRequest(enabled=enabled)
        resp = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.SetAutolock(req, timeout=self.rpc_timeout_s)
        )
        return AutolockChange(
            int(resp.member_id), bool(resp.autolock), bool(resp.changed), str(resp.unlock_key)
        )

    async def rotate_unlock_key(self, endpoint: str) -> UnlockKeyRotation:
        req = pb.RotateUnlockKeyRequest()
        resp = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.RotateUnlockKey(req, timeout=self.rpc_timeout_s)
        )
        return UnlockKeyRotation(int(resp.member_id), str(resp.unlock_key))

    async def rotate_data_key(self, endpoint: str) -> DataKeyRotation:
        """A new data key for the member at `endpoint`, and its data re-encrypted under it
        through a snapshot (the snapshot is written within the call: up to `rpc_timeout_s`)."""
        req = pb.RotateDataKeyRequest()
        resp = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.RotateDataKey(req, timeout=self.rpc_timeout_s)
        )
        return DataKeyRotation(
            int(resp.member_id),
            int(resp.key_id),
            int(resp.snapshot_index),
            tuple(int(k) for k in resp.retired_key_ids),
        )

    # --- sealed secrets (concord.v1.Secrets; coordinator/sealing) --------------------------------

    async def _secrets_call(self, fn: Callable[[_Stubs], Awaitable[T]]) -> T:
        """`call`, but a value that does not unseal raises `SealFailed` with its reason."""

        async def attempt(s: _Stubs) -> T:
            try:
                return await fn(s)
            except grpc.aio.AioRpcError as err:
                metadata = dict(err.trailing_metadata() or ())
                reason = str(metadata.get(SEAL_FAILURE_METADATA_KEY, ""))
                if reason in Reason.__members__:
                    code = err.code()
                    raise SealFailed(code.name, err.details() or "", Reason[reason]) from None
                raise

        return await self.call(attempt)

    async def sealing_certificate(self) -> SealingKeys:
        """The current sealing certificate and every key's public part (the first call on a
        new cluster makes the first key: allow a few seconds)."""
        req = pb.GetSealingCertificateRequest()
        resp = await self.call(
            lambda s: s.secrets.GetSealingCertificate(req, timeout=self.timeout_s)
        )
        return SealingKeys(sealing_key(resp.current), tuple(map(sealing_key, resp.keys)))

    async def renew_sealing_key(self) -> SealingKeyInfo:
        """Make a new sealing key current (older ones keep unsealing); returns it."""
        req = pb.RenewSealingKeyRequest()
        resp = await self.call(lambda s: s.secrets.RenewSealingKey(req, timeout=self.timeout_s))
        return sealing_key(resp.current)

    async def unseal(self, ciphertext: bytes, namespace: str, name: str) -> Unsealed:
        """The plaintext of one sealed value, as the Secret namespace/name. Only for the
        operator's certificate (PERMISSION_DENIED otherwise); `SealFailed` if it does not
        unseal."""
        req = pb.UnsealRequest(value=sealed_value(ciphertext, namespace, name))
        resp = await self._secrets_call(lambda s: s.secrets.Unseal(req, timeout=self.rpc_timeout_s))
        return Unsealed(bytes(resp.plaintext), str(resp.key_id), str(resp.scope))

    async def re_encrypt(self, ciphertext: bytes, namespace: str, name: str) -> ReEncrypted:
        """The same value sealed again to the newest key, inside the coordinator."""
        req = pb.ReEncryptRequest(value=sealed_value(ciphertext, namespace, name))
        resp = await self._secrets_call(
            lambda s: s.secrets.ReEncrypt(req, timeout=self.rpc_timeout_s)
        )
        return ReEncrypted(bytes(resp.ciphertext), str(resp.key_id), str(resp.previous_key_id))

    async def validate_sealed(self, values: Sequence[tuple[bytes, str, str]]) -> list[SealedCheck]:
        """Whether each (ciphertext, namespace, name) would unseal; no plaintext returned."""
        req = pb.ValidateSealedRequest(values=[sealed_value(*v) for v in values])
        resp = await self.call(lambda s: s.secrets.ValidateSealed(req, timeout=self.timeout_s))
        return [
            SealedCheck(Reason(c.failure) if c.failure else None, str(c.message), str(c.key_id))
            for c in resp.checks
        ]


def _leader_key(leadership: Leadership) -> pb.LeaderKey:
    """The wire form of a leadership, for Proclaim and Resign."""
    return pb.LeaderKey(
        election=leadership.election, lease=leadership.lease, fencing_token=leadership.fencing_token
    )


def _leadership(resp: pb.LeaderResponse) -> Leadership | None:
    if not resp.HasField("leader"):
        return None
    key = resp.leader
    return Leadership(key.election, int(key.lease), int(key.fencing_token), bytes(resp.value))


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


def prefix_end(prefix: bytes) -> bytes:
    """The end of the range of keys starting with `prefix` (b"\\0": every key)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _every_locked(endpoints: Sequence[str], details: str) -> str:
    if len(endpoints) == 1:
        return details or "member is locked: run concordctl unlock"
    return (
        f"member is locked: run concordctl unlock (every endpoint given is locked: "
        f"{', '.join(endpoints)})"
    )


def _advice(by_endpoint: dict[str, str]) -> str:
    """One line of advice for the endpoints that could not be used (each says why)."""
    return "; ".join(dict.fromkeys(by_endpoint.values()))
