"""One gRPC server per member whose set of live services changes once: at `attach`.

A member listens on its client port from the start, before it has opened its data directory,
so that a locked member (autolock on, no unlock key yet) can be unlocked through the API. But
the services over the Raft loop cannot exist before the loop does, and grpc.aio accepts no
new services once a server has started. So the server gets a single generic handler, a
`Dispatch`, that looks each call up in a table it may swap:

- before `attach`: the Maintenance service answers; every other method of `concord.v1`
  answers the member's phase as UNAVAILABLE ("member is locked: run concordctl unlock ...",
  or "member is starting ..."), see `_maintenance.phase_error`;
- after `attach`: every service answers as usual.

The tables are built by running the generated `add_XServicer_to_server` functions against a
`_Capture` in place of a server: it records the method handlers they register, keyed by the
full method name ("/concord.v1.KV/Put"). The refusing handlers before `attach` copy each
method's streaming shape from the generated (unimplemented) base servicers, and are plain
coroutines: grpc.aio lets a streaming handler be a coroutine that writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc

from coordinator.api.v1 import concord_pb2_grpc as pb_grpc

from ._errors import ServiceError

MAINTENANCE_PREFIX = "/concord.v1.Maintenance/"

_Register = Callable[[object, object], None]
"""The generated (untyped) `add_XServicer_to_server(servicer, server)` functions."""

_generated: Any = pb_grpc  # untyped generated module

REGISTRARS: dict[str, tuple[_Register, Callable[[], object]]] = {
    name: (
        getattr(_generated, f"add_{name}Servicer_to_server"),
        getattr(_generated, f"{name}Servicer"),
    )
    for name in (
        "KV",
        "Lease",
        "Lock",
        "Election",
        "Sequence",
        "Watch",
        "Cluster",
        "Maintenance",
        "Pipeline",
        "Secrets",
    )
}
"""Every service of concord.v1: its registration function and its generated base class."""


class _Capture:
    """Stands in for a server while the generated code registers a servicer."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[object]) -> None:
        pass  # the same handlers arrive, by name, through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update({f"/{service}/{m}": h for m, h in handlers.items()})


PRESERIALIZED = frozenset({"/concord.v1.Watch/Watch"})
"""Methods whose handler may yield a response already serialized (bytes): a watch event
fanned out to many streams is encoded once, not once per stream (see `_watch.py`)."""


def method_handlers(services: Iterable[tuple[str, object]]) -> dict[str, Any]:
    """{"/concord.v1.Svc/Method": handler} for the given (service name, servicer) pairs."""
    capture = _Capture()
    for name, servicer in services:
        register, _ = REGISTRARS[name]
        register(servicer, capture)
    if not capture.handlers:
        raise RuntimeError(
            "the generated gRPC code registered no method handlers by name; regenerate it "
            "with the pinned grpcio-tools (python scripts/gen_protos.py)"
        )
    for method in PRESERIALIZED & capture.handlers.keys():
        capture.handlers[method] = _passing_bytes(capture.handlers[method])
    return capture.handlers


def _passing_bytes(handler: Any) -> Any:  # noqa: ANN401 (grpc's RpcMethodHandler)
    """`handler`, whose responses may also be bytes, sent as they are."""
    serialize = handler.response_serializer

    def serialize_or_pass(response: object) -> bytes:
        return response if isinstance(response, bytes) else bytes(serialize(response))

    return handler._replace(response_serializer=serialize_or_pass)


def _refusing(template: Any, refusal: Callable[[], ServiceError]) -> Any:  # noqa: ANN401
    """A handler of `template`'s shape that ends the call with `refusal()`."""

    async def refuse(request: object, context: Any) -> None:  # noqa: ANN401 (grpc's context)
        err = refusal()
        await context.abort(grpc.StatusCode[err.code.value], err.message, err.metadata)

    streams = (template.request_streaming, template.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[streams]
    return make(
        refuse,
        request_deserializer=template.request_deserializer,
        response_serializer=template.response_serializer,
    )


class Dispatch:
    """The server's one generic handler (duck-typed `grpc.GenericRpcHandler`)."""

    def __init__(self, maintenance: object, refusal: Callable[[], ServiceError]) -> None:
        self._maintenance = method_handlers([("Maintenance", maintenance)])
        templates = method_handlers(
            (name, base()) for name, (_, base) in REGISTRARS.items() if name != "Maintenance"
        )
        self._refusals = {m: _refusing(h, refusal) for m, h in templates.items()}
        self._live: dict[str, Any] | None = None

    @property
    def attached(self) -> bool:
        return self._live is not None

    def attach(self, services: Iterable[tuple[str, object]]) -> None:
        """From now on, serve these services (the Maintenance service stays as it is)."""
        self._live = method_handlers(services)

    def service(self, details: Any) -> Any:  # noqa: ANN401 (grpc's HandlerCallDetails)
        method: str = details.method
        if method.startswith(MAINTENANCE_PREFIX):
            return self._maintenance.get(method)
        if self._live is not None:
            return self._live.get(method)
        return self._refusals.get(method)
