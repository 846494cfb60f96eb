"""concord.v1.Pipeline: many calls multiplexed on one stream, answered out of order.

Why. A grpc.aio unary call costs the member a few hundred microseconds of CPU, more than
the put it carries; a client with 64 requests in flight spends the member's CPU on RPC
plumbing. On one stream, the client sends whatever it has queued as one message and the
member answers in batches, so the per-call cost is what the call itself needs.

How. Each call is routed to the very handler its unary RPC runs (the function under the
`@unary`/`@blocking` decorator), with a `Call` whose deadline is the call's own
`timeout_ms`, so validation, sessions, redirects and errors are the unary ones by
construction. Every call runs as its own task; a single writer task sends the results that
are ready whenever the previous write has finished, so answers batch up under load and go
out at once when idle. A failed call becomes a `PipelineError` result (status name, message,
leader hint); the stream itself ends only with the client, or when the member stops.

Acknowledgement. A batch of calls that has had no answer written after it for `ACK_AFTER_S`
is acknowledged by an empty response. A call can take longer than the client's attempt
timeout on a member that is alive (a Raft round of a few hundred lease grants on a loaded
machine): the acknowledgement tells the client that the member is reading the stream, so it
does not take the slow call for a stopped member and break the stream, which would fail
every call in flight on it (a whole wave of grants) and send them all again elsewhere, to
members that cannot serve them. Batches answered sooner cost no extra message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from coordinator.api.v1 import concord_pb2 as pb

from ._caller import workload
from ._core import Core
from ._errors import LEADER_METADATA_KEY, QUEUED_METADATA_KEY, ServiceError, invalid
from ._policy import PIPELINE_VERBS
from ._rpc import Call, Metadata, deadline_error, to_service_error

log = logging.getLogger("concord.server")

ACK_AFTER_S = 0.1
"""How long a batch of calls may go without anything written after it before the member
acknowledges it with an empty response: well inside a client's attempt timeout (1 s by
default), long enough that a batch answered promptly needs none."""


class _Deadline:
    """The `RawContext` of one pipelined call: its own deadline, no abort (errors become
    results, see `PipelineService._run`)."""

    __slots__ = ("_at",)

    def __init__(self, at: float | None) -> None:
        self._at = at

    def time_remaining(self) -> float | None:
        if self._at is None:
            return None
        return max(0.0, self._at - asyncio.get_running_loop().time())

    async def abort(
        self, code: object, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn:
        raise AssertionError("a pipelined call never aborts the stream")  # pragma: no cover


Handler = Callable[[Any, Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Route:
    handler: Handler
    blocking: bool
    """Bounded only by the call's own timeout (as the unary `@blocking` RPCs)."""


def _inner(servicer: object, method: str) -> Handler:
    """The undecorated handler of `servicer.method`, bound to the servicer."""
    decorated = getattr(type(servicer), method)
    fn: Callable[..., Awaitable[Any]] = decorated.__wrapped__

    async def handler(request: Any, call: Call) -> Any:  # noqa: ANN401 (generated messages)
        return await fn(servicer, request, call)

    return handler


class PipelineService:
    def __init__(self, core: Core, services: dict[str, object]) -> None:
        """`services`: the attached servicers by name ("KV", "Lease", "Lock", "Sequence")."""
        self.core = core
        self.deadline_s = core.cfg.deadline_s
        kv, lease, lock, seq = (services[n] for n in ("KV", "Lease", "Lock", "Sequence"))
        self._routes: dict[str, _Route] = {
            "range": _Route(_inner(kv, "Range"), False),
            "put": _Route(_inner(kv, "Put"), False),
            "delete": _Route(_inner(kv, "Delete"), False),
            "txn": _Route(_inner(kv, "Txn"), False),
            "sequence_next": _Route(_inner(seq, "Next"), False),
            "lease_grant": _Route(_inner(lease, "Grant"), False),
            "lease_revoke": _Route(_inner(lease, "Revoke"), False),
            "lock": _Route(_inner(lock, "Lock"), True),
            "unlock": _Route(_inner(lock, "Unlock"), False),
            "check_fence": _Route(_inner(lock, "CheckFence"), False),
        }

    async def Stream(
        self,
        requests: AsyncIterator[pb.PipelineRequest],
        context: Any,  # noqa: ANN401 (grpc's servicer context)
    ) -> None:
        out = _Outbox(context)
        writer = asyncio.ensure_future(out.run())
        running: dict[int, asyncio.Task[None]] = {}
        try:
            async for batch in requests:
                for c in batch.calls:
                    if c.id in running:
                        out.put(_error(c.id, invalid(f"call id {c.id} is already in flight")))
                        continue
                    task = asyncio.ensure_future(self._run(c, out))
                    running[c.id] = task
                    task.add_done_callback(functools.partial(_forget, running, c.id))
                out.acknowledge_later()
                if writer.done():
                    break  # the client is gone (a write failed)
            # The client finished sending: answer what is in flight, then end the stream.
            if running:
                await asyncio.wait(list(running.values()))
            await out.drain()
        finally:
            for task in list(running.values()):
                task.cancel()
            writer.cancel()

    async def _run(self, c: pb.PipelineCall, out: _Outbox) -> None:
        kind = c.WhichOneof("request")
        route = self._routes.get(kind) if kind is not None else None
        if route is None:
            out.put(_error(c.id, invalid("the call carries no request: set one of its fields")))
            return
        running = asyncio.get_running_loop()
        timeout_s = c.timeout_ms / 1000 if c.timeout_ms else None
        if timeout_s is None and not route.blocking:
            timeout_s = self.deadline_s
        at = None if timeout_s is None else running.time() + timeout_s
        call = Call(_Deadline(at), self.deadline_s)
        try:
            guard = workload()
            if guard is not None:  # a workload's call: checked as the RPC it stands for
                guard.check(PIPELINE_VERBS[kind], getattr(c, kind))
            if route.blocking:
                response = await route.handler(getattr(c, kind), call)
            else:
                bound = call.bound_s()
                try:
                    async with asyncio.timeout(bound):
                        response = await route.handler(getattr(c, kind), call)
                except TimeoutError:
                    raise deadline_error(bound) from None
        except TimeoutError:
            # A blocking call (lock, campaign) that ran out of time: name the caller's own
            # deadline (timeout_ms), not the service's default.
            out.put(_error(c.id, deadline_error(timeout_s or self.deadline_s)))
        except Exception as exc:
            out.put(_error(c.id, to_service_error(exc)))
        else:
            out.put(pb.PipelineResult(id=c.id, **{kind: response}))


def _forget(running: dict[int, asyncio.Task[None]], call_id: int, _: object) -> None:
    running.pop(call_id, None)


def _error(call_id: int, err: ServiceError) -> pb.PipelineResult:
    leader = next((v for k, v in err.metadata if k == LEADER_METADATA_KEY), "")
    queued = any(k == QUEUED_METADATA_KEY for k, _ in err.metadata)
    return pb.PipelineResult(
        id=call_id,
        error=pb.PipelineError(
            code=err.code.value, message=err.message, leader=leader, queued=queued
        ),
    )


class _Outbox:
    """Results waiting to be written; one writer, so at most one write in flight."""

    def __init__(self, context: Any) -> None:  # noqa: ANN401 (grpc's servicer context)
        self._context = context
        self._pending: list[pb.PipelineResult] = []
        self._ack = False
        """Write even with no result ready: a batch waited `ACK_AFTER_S` without an answer."""
        self._writes = 0
        """Writes started so far (a batch is acknowledged only if none started after it)."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, result: pb.PipelineResult) -> None:
        self._pending.append(result)
        self._idle.clear()
        self._wake.set()

    def acknowledge_later(self) -> None:
        """A batch of calls was received: acknowledge it after `ACK_AFTER_S` unless a write
        starts meanwhile (see the module doc)."""
        asyncio.get_running_loop().call_later(ACK_AFTER_S, self._acknowledge, self._writes)

    def _acknowledge(self, writes_before: int) -> None:
        if self._writes == writes_before:
            self._ack = True
            self._idle.clear()
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending or self._ack:
                self._ack = False
                self._writes += 1
                batch, self._pending = self._pending, []
                await self._context.write(pb.PipelineResponse(results=batch))
            self._idle.set()

    async def drain(self) -> None:
        """Wait until everything put so far is written."""
        await self._idle.wait()
