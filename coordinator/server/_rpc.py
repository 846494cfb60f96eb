"""The thin typed edge over grpc.aio's untyped servicer surface.

grpc ships no type information, so everything it hands a handler is `Any` to mypy. This module
keeps that surface to one place: handlers are written against `Call` (typed) and raise
`ServiceError`/`FsmError`; the decorators below adapt them to grpc.aio's calling convention
`(self, request, context)`, apply the per-request deadline and turn every outcome into a
status.

- `@unary`: a request/response RPC, bounded by min(client deadline, the service's default
  deadline): nothing a handler awaits can hang past it (DEADLINE_EXCEEDED).
- `@blocking`: a request/response RPC that may legitimately wait for a long time (Lock with
  wait, Campaign). Only the client's deadline bounds it; the handler bounds its own steps.
- `@streaming`: a server-streaming (or bidirectional) RPC; it lasts until the client goes or
  the handler ends. The handler bounds each step it waits on.

grpc.aio decides whether a handler is asynchronous by inspecting it, so each wrapper is itself
an `async def` (or async generator) function.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, Protocol, TypeVar

import grpc

from coordinator.fsm import FsmError

from ._errors import Code, ServiceError, from_fsm

log = logging.getLogger("concord.server")

Metadata = tuple[tuple[str, str], ...]


class RawContext(Protocol):
    """The part of `grpc.aio.ServicerContext` the service uses."""

    def time_remaining(self) -> float | None: ...

    async def abort(
        self, code: object, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn: ...


class Call:
    """One RPC as a handler sees it: its deadlines."""

    def __init__(self, raw: RawContext, default_deadline_s: float) -> None:
        self._raw = raw
        self.default_deadline_s = default_deadline_s
        """The service's bound on one step (a whole unary RPC, or one wait of a stream)."""

    def client_remaining_s(self) -> float | None:
        """What is left of the client's own deadline (None: the client set none)."""
        return self._raw.time_remaining()

    def bound_s(self) -> float:
        """min(client deadline, default deadline): how long one step may take."""
        remaining = self.client_remaining_s()
        if remaining is None:
            return self.default_deadline_s
        return max(0.0, min(remaining, self.default_deadline_s))

    def budget_s(self) -> float:
        """The caller's deadline if it set one, else the service's default: what a
        DEADLINE_EXCEEDED message should name (read at the start of the call)."""
        remaining = self.client_remaining_s()
        return self.default_deadline_s if remaining is None else max(0.0, remaining)

    async def abort(self, err: ServiceError) -> NoReturn:
        await self._raw.abort(grpc.StatusCode[err.code.value], err.message, err.metadata)
        raise AssertionError("grpc's abort returned")  # pragma: no cover


class Servicer:
    """Base of the service classes: the default per-request deadline."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s


S = TypeVar("S", bound=Servicer)
Req = TypeVar("Req")
Resp = TypeVar("Resp")

UnaryFn = Callable[[S, Req, Call], Awaitable[Resp]]
UnaryHandler = Callable[[S, Req, RawContext], Awaitable[Resp]]
StreamFn = Callable[[S, Req, Call], AsyncIterator[Resp]]
StreamHandler = Callable[[S, Req, RawContext], AsyncIterator[Resp]]


def deadline_error(seconds: float) -> ServiceError:
    """DEADLINE_EXCEEDED after `seconds`: the caller's own deadline when it set one."""
    within = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
    return ServiceError(
        Code.DEADLINE_EXCEEDED,
        f"no answer within {within}; if this was a write, its outcome is unknown: retry "
        "it with the same session (a duplicate is answered, not executed twice)",
    )


def to_service_error(exc: Exception) -> ServiceError:
    """The status for anything a handler let escape (grpc's own abort is re-raised)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, FsmError):
        return from_fsm(exc)
    log.exception("request failed unexpectedly")
    return ServiceError(
        Code.INTERNAL,
        f"internal error ({type(exc).__name__}: {exc}); this is a bug in the member: please "
        "report it with the member's log",
    )


def unary(fn: UnaryFn[S, Req, Resp]) -> UnaryHandler[S, Req, Resp]:
    @functools.wraps(fn)
    async def handler(self: S, request: Req, context: RawContext) -> Resp:
        call = Call(context, self.deadline_s)
        bound = call.bound_s()
        try:
            async with asyncio.timeout(bound):
                return await fn(self, request, call)
        except TimeoutError:
            await call.abort(deadline_error(bound))
        except Exception as exc:
            await call.abort(to_service_error(exc))

    return handler


def blocking(fn: UnaryFn[S, Req, Resp]) -> UnaryHandler[S, Req, Resp]:
    @functools.wraps(fn)
    async def handler(self: S, request: Req, context: RawContext) -> Resp:
        call = Call(context, self.deadline_s)
        budget = call.budget_s()
        try:
            return await fn(self, request, call)
        except TimeoutError:
            await call.abort(deadline_error(budget))
        except Exception as exc:
            await call.abort(to_service_error(exc))

    return handler


def streaming(fn: StreamFn[S, Req, Resp]) -> StreamHandler[S, Req, Resp]:
    @functools.wraps(fn)
    async def handler(self: S, request: Req, context: RawContext) -> AsyncIterator[Resp]:
        call = Call(context, self.deadline_s)
        budget = call.budget_s()
        try:
            async for item in fn(self, request, call):
                yield item
        except TimeoutError:
            await call.abort(deadline_error(budget))
        except Exception as exc:
            await call.abort(to_service_error(exc))

    return handler
