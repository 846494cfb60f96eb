"""What every call of the `Client` goes through, whatever it asks: a channel and stubs per
member, leader discovery and redirects, retries within the call's budget, exactly-once
sessions, and the choice of the Pipeline stream or a unary RPC for a small call. The
behaviour is described in `_client.py`'s module doc.

`Calls` holds that machinery and the client's settings; each group of calls is a subclass of
it in a module of its own (`_kv.py`, `_watch.py`, `_leases.py`, `_locks.py`,
`_elections.py`, `_sequences.py`, `_cluster.py`, `_secrets.py`), and `Client` (`_client.py`)
combines them into the one class users see. The groups call these methods directly, with
no layer in between: one call is one RPC (or one Pipeline entry) per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as rpc

from ._config import parse_endpoints, token_credentials
from ._errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    Unavailable,
    error_for,
)
from ._pipe import CallFailed, Pipe, format_s
from ._transport import Failure, channel_options, silent

if TYPE_CHECKING:
    from ._keepalive import Renewer

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


class Calls:
    """The client's settings and the machinery its calls share (see the module doc); the
    base of every group of calls, never used alone."""

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
        Pipeline stream per member rather than one unary RPC each (`_pipe.py`)."""
        self._idle_sessions: list[list[int]] = []
        """Sessions no call is using: [client id, last seq used]; most recently used last."""
        self._current = 0
        self._stubs: dict[str, _Stubs] = {}
        self._suspect_until: dict[str, float] = {}
        """Endpoints whose last attempt timed out, until when (the loop's clock): redirects
        naming them are not followed meanwhile (see `_transport.py`)."""
        self._closed = False
        self._keepalive: Renewer | None = None

    async def close(self) -> None:
        self._closed = True
        if self._keepalive is not None:
            await self._keepalive.close()
        for stubs in self._stubs.values():
            await stubs.close()
        self._stubs.clear()

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
        """What a failed attempt on `endpoint` means; a timed-out attempt makes it suspect,
        unless the member was heard from meanwhile: a leader that is alive but slower than
        one attempt (a few hundred lease grants in one Raft round on a loaded machine) is
        still the leader, and the retries must follow the followers' redirects back to it
        rather than wait out the suspicion on members that cannot serve them."""
        err = Failure.of(exc, endpoint, tls=self.credentials is not None)
        if err.code == grpc.StatusCode.DEADLINE_EXCEEDED and not err.answering:
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
        """A session for one call, retries included (`_client.py`'s module doc). Given back with its
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
                        message = every_locked(self.endpoints, err.details)
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
                    raise Unavailable(unusable_advice(wrong)) from None
                if set(wrong).union(unreachable).issuperset(self.endpoints) and (
                    loop.time() - started >= self.connect_timeout_s
                ):
                    raise Unavailable(unusable_advice({**unreachable, **wrong})) from None
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
            raise Unavailable(unusable_advice({**unreachable, **wrong}))
        advice = f" ({unusable_advice({**unreachable, **wrong})})" if wrong or unreachable else ""
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


def every_locked(endpoints: Sequence[str], details: str) -> str:
    if len(endpoints) == 1:
        return details or "member is locked: run concordctl unlock"
    return (
        f"member is locked: run concordctl unlock (every endpoint given is locked: "
        f"{', '.join(endpoints)})"
    )


def unusable_advice(by_endpoint: dict[str, str]) -> str:
    """One line of advice for the endpoints that could not be used (each says why)."""
    return "; ".join(dict.fromkeys(by_endpoint.values()))
