"""The workload port: the same API as the client port, for pods that hold a ServiceAccount
token instead of a client certificate.

Why a port of its own. The client port demands a client certificate in the TLS handshake
(`require_client_auth=True`): that is how cluster clients (concordctl, the operator) are
identified, and how Unseal recognises the operator. grpc's Python server offers exactly two
modes, "require and verify a client certificate" and "do not ask for one" (there is no
"ask, verify if given"), so one port cannot take both kinds of caller: with
`require_client_auth=False` every certificate would go unseen and every cluster client would
lose its identity. So a member with workload identity on (`--workload-identity kubernetes`)
listens on a second port (`--workload-listen`), TLS with `require_client_auth=False`, whose
only credential is a token; the client port is exactly what it was.

Each call on this port:

1. must carry `authorization: Bearer <token>` metadata: without it, UNAUTHENTICATED saying
   what to present; the token is verified (`coordinator.runtime.tokenreview`, cached): a
   rejected token is UNAUTHENTICATED naming why (expired, audience, signature, ...), an API
   server that cannot answer is UNAVAILABLE (the client retries; the caller did nothing
   wrong);
2. is checked against the `Policy` (`_policy.py`) before its handler runs: PERMISSION_DENIED
   names the identity, the verb and the object. Streams of requests are checked message by
   message: Lease.KeepAlive here, Pipeline calls in `_pipeline.py`;
3. runs the very handler the client port runs, with the guard in `_caller.WORKLOAD`.

A stream is authenticated when it opens, as gRPC authenticates any call; its later messages
are still checked against the policy. Every refusal is counted (`on_denied(verb, reason)`,
the member's `concord_workload_denied` counter); no token is ever logged or labelled.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from coordinator.runtime.tokenreview import ReviewUnavailable, TokenRejected, WorkloadIdentity

from ._caller import WORKLOAD, Guard
from ._core import Core
from ._errors import Code, ServiceError
from ._gateway import Dispatch
from ._policy import Policy, request_free, verb_of

log = logging.getLogger("concord.workload")

AUTHORIZATION = "authorization"
NEEDS_TOKEN = (
    "this is a member's workload port: every call must carry a pod's ServiceAccount token "
    "for audience 'concord' as metadata 'authorization: Bearer <token>' (concord-sidecar "
    "--token-file, or Client(..., token_file=...)); cluster clients with a client "
    "certificate use the client port instead"
)


class Attachable(Protocol):
    """The part of `server.Gateway` the gate uses: its dispatch table and, once attached,
    its core (for lease owners)."""

    @property
    def dispatch(self) -> Dispatch: ...

    @property
    def core(self) -> Core | None: ...


class Authenticator(Protocol):
    """Verifies a bearer token (`TokenReviewer`; tests may pass a twin)."""

    async def verify(self, token: str) -> WorkloadIdentity: ...


def bearer_token(metadata: Any) -> str | None:  # noqa: ANN401 (grpc's metadata)
    """The token of an `authorization: Bearer ...` entry, or None."""
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class WorkloadGate:
    """The workload port's one generic handler: wraps the gateway's handlers (module doc)."""

    def __init__(
        self,
        gateway: Attachable,
        authenticator: Authenticator,
        policy: Policy,
        on_denied: Callable[[str, str], None],
    ) -> None:
        self._gateway = gateway
        self._dispatch = gateway.dispatch
        self._auth = authenticator
        self._policy = policy
        self._on_denied = on_denied

    def _lease_owner(self, lease_id: int) -> str | None:
        core = self._gateway.core
        return None if core is None else core.fsm.lease_owner(lease_id)

    async def _guard(self, verb: str, token: str | None) -> Guard:
        """The caller's guard; ServiceError (UNAUTHENTICATED or UNAVAILABLE) if none."""
        if token is None:
            self._on_denied(verb, "missing-token")
            raise ServiceError(Code.UNAUTHENTICATED, NEEDS_TOKEN)
        try:
            who = await self._auth.verify(token)
        except TokenRejected as err:
            self._on_denied(verb, err.reason.value)
            raise ServiceError(Code.UNAUTHENTICATED, err.message) from None
        except ReviewUnavailable as err:
            raise ServiceError(
                Code.UNAVAILABLE, f"cannot verify the token now, retry: {err}"
            ) from None
        return Guard(who, self._policy, self._lease_owner, self._on_denied)

    def service(self, details: Any) -> Any:  # noqa: ANN401 (grpc's HandlerCallDetails)
        method: str = details.method
        inner = self._dispatch.service(details)
        if inner is None:
            return None
        return self._wrap(inner, verb_of(method), bearer_token(details.invocation_metadata))

    def _wrap(self, inner: Any, verb: str, token: str | None) -> Any:  # noqa: ANN401
        gate = self

        async def admit(context: Any, request: Any) -> None:  # noqa: ANN401
            """Authenticate, check, and publish the guard for the handler (or abort)."""
            try:
                guard = await gate._guard(verb, token)
                if request is not None or request_free(verb):
                    guard.check(verb, request)  # a stream's messages: `checked`
            except ServiceError as err:
                await context.abort(grpc.StatusCode[err.code.value], err.message)
            WORKLOAD.set(guard)

        def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            """Each message of a request stream checked as its own call (KeepAlive)."""

            async def each() -> AsyncIterator[Any]:
                async for message in requests:
                    guard = WORKLOAD.get()
                    if guard is not None and verb != "Pipeline.Stream":
                        guard.check(verb, message)
                    yield message

            return each()

        shape = (inner.request_streaming, inner.response_streaming)
        if shape == (False, False):
            fn = inner.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:  # noqa: ANN401
                await admit(context, request)
                return await fn(request, context)

            behaviour: Any = unary_unary
            make: Any = grpc.unary_unary_rpc_method_handler
        elif shape == (False, True):
            fn = inner.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: ANN401
                await admit(context, request)
                if inspect.isasyncgenfunction(fn):
                    async for item in fn(request, context):
                        yield item
                else:
                    await fn(request, context)

            behaviour, make = unary_stream, grpc.unary_stream_rpc_method_handler
        elif shape == (True, True):
            fn = inner.stream_stream

            async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:  # noqa: ANN401
                await admit(context, None)
                if inspect.isasyncgenfunction(fn):
                    async for item in fn(checked(requests), context):
                        yield item
                else:
                    await fn(checked(requests), context)

            behaviour, make = stream_stream, grpc.stream_stream_rpc_method_handler
        else:
            fn = inner.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:  # noqa: ANN401
                await admit(context, None)
                return await fn(checked(requests), context)

            behaviour, make = stream_unary, grpc.stream_unary_rpc_method_handler
        return make(
            behaviour,
            request_deserializer=inner.request_deserializer,
            response_serializer=inner.response_serializer,
        )


@dataclass
class WorkloadPort:
    server: grpc.aio.Server
    port: int

    async def stop(self, grace_s: float | None = None) -> None:
        await self.server.stop(grace_s)


async def listen_workload_port(
    gateway: Attachable,
    address: str,
    credentials: grpc.ServerCredentials,
    authenticator: Authenticator,
    options: list[tuple[str, int]],
    *,
    policy: Policy | None = None,
    on_denied: Callable[[str, str], None] | None = None,
) -> WorkloadPort:
    """Listen on `address` with `credentials` (TLS, no client certificate asked) and serve
    `gateway`'s API to workload identities (module doc)."""
    gate = WorkloadGate(
        gateway,
        authenticator,
        policy or Policy(),
        on_denied or (lambda verb, reason: None),
    )
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((gate,))
    port = server.add_secure_port(address, credentials)
    if not port:
        raise OSError(f"cannot listen on {address!r} (in use, or not a host:port)")
    await server.start()
    return WorkloadPort(server, int(port))
