"""Start the client-facing gRPC server (`concord.v1`) for one member.

`serve(loop, address, credentials)` wires every service to a `RaftLoop` that the caller runs
(`loop.run()` in its own task, on the same event loop) and starts listening. With
`credentials` None it listens without TLS (tests, local development); the member process
passes TLS server credentials. `start_server` is the same with the bound port (for
"host:0") and a `stop` that also detaches the services from the loop.

Everything runs on the caller's event loop: handlers read the state machine between the
loop's applies, so they never need a lock (see `coordinator.runtime.loop`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.runtime.loop import RaftLoop

from ._cluster import ClusterService
from ._core import Core, ServiceConfig
from ._election import ElectionService
from ._kv import KVService
from ._lease import LeaseService
from ._lock import LockService
from ._sequence import SequenceService
from ._watch import WatchService

_Register = Callable[[object, object], None]
"""The generated (untyped) `add_XServicer_to_server(servicer, server)` functions."""

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Requests and responses (a 1 MiB value, a txn of 128 ops) fit well inside."""


@dataclass(frozen=True, slots=True)
class RunningServer:
    server: grpc.aio.Server
    port: int
    """The port actually bound (useful with "host:0")."""
    core: Core

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop listening, end the open RPCs (after `grace_s`) and detach from the loop."""
        await self.server.stop(grace_s)
        self.core.close()


async def start_server(
    loop: RaftLoop,
    address: str,
    credentials: grpc.ServerCredentials | None,
    *,
    config: ServiceConfig | None = None,
) -> RunningServer:
    core = Core(loop, config or ServiceConfig())
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    services: list[tuple[_Register, object]] = [
        (pb_grpc.add_KVServicer_to_server, KVService(core)),
        (pb_grpc.add_LeaseServicer_to_server, LeaseService(core)),
        (pb_grpc.add_LockServicer_to_server, LockService(core)),
        (pb_grpc.add_ElectionServicer_to_server, ElectionService(core)),
        (pb_grpc.add_SequenceServicer_to_server, SequenceService(core)),
        (pb_grpc.add_WatchServicer_to_server, WatchService(core)),
        (pb_grpc.add_ClusterServicer_to_server, ClusterService(core)),
    ]
    for register, service in services:
        register(service, server)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if not port:
        core.close()
        raise OSError(f"cannot listen on {address!r} (in use, or not a host:port)")
    await server.start()
    return RunningServer(server, int(port), core)


async def serve(
    loop: RaftLoop, address: str, credentials: grpc.ServerCredentials | None
) -> grpc.aio.Server:
    """Serve `concord.v1` for `loop` on `address`; TLS iff `credentials` is given."""
    return (await start_server(loop, address, credentials)).server
