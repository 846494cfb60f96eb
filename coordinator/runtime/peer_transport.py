"""Choosing the peer transport (`--peer-transport`) and serving the peer port with it.

Two transports keep the same contract (`Transport.send`, `bind`, `set_peers`, `set_voters`,
`peers`, `stats`, `close`): `GrpcTransport` (grpc.aio streams) and `FrameTransport` (our own
frames over asyncio TLS streams, `frame_transport.py`). Either way the peer port is one
port, because the join services, promotion and the directory entry call it over gRPC: with
gRPC the gRPC server listens on it; with frames the frame listener does, and relays
connections that are not Raft to the gRPC server on a loopback port. So no launcher, chart
or address book changes with the choice. A frames member also serves gRPC Raft streams
(behind the relay), so a member still on gRPC reaches it; a frames member dialling a gRPC
one is refused (logged as such). A cluster changes transports by restarting its members one
at a time, and until the last one has changed the gRPC members do not hear from the frames
ones, so do it one member per election timeout with a quorum on one side, or all at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import grpc

from coordinator.pki import MemberTls

from .clock import Clock
from .frame_conn import peer_ssl
from .frame_transport import FrameTransport
from .grpc_transport import GrpcTransport
from .tls import member_channel_credentials

PeerTransport = GrpcTransport | FrameTransport
TransportKind = Literal["grpc", "frames"]
TRANSPORT_KINDS: tuple[TransportKind, ...] = ("grpc", "frames")
DEFAULT_TRANSPORT: TransportKind = "frames"


def make_transport(
    kind: TransportKind,
    member_id: int,
    cluster_id: str,
    clock: Clock,
    tls: MemberTls | None,
    *,
    reachable_window_s: float,
    on_round_trip: Callable[[int, float], None] | None = None,
) -> PeerTransport:
    if kind == "frames":
        return FrameTransport(
            member_id,
            cluster_id,
            clock,
            ssl_contexts=peer_ssl(tls) if tls is not None else None,
            reachable_window_s=reachable_window_s,
            on_round_trip=on_round_trip,
        )
    return GrpcTransport(
        member_id,
        cluster_id,
        clock,
        credentials=member_channel_credentials(tls) if tls is not None else None,
        reachable_window_s=reachable_window_s,
        on_round_trip=on_round_trip,
    )


async def serve_peers(
    server: grpc.aio.Server,
    transport: PeerTransport,
    address: str,
    bind: Callable[[str], int],
) -> int:
    """Start the peer port on `address` (see the module docstring); `bind(address)` adds a
    listening port to the gRPC server. Returns the peer port bound."""
    if isinstance(transport, FrameTransport):
        backend = bind("127.0.0.1:0")
        await server.start()
        return await transport.listen(address, ("127.0.0.1", backend))
    port = bind(address)
    await server.start()
    return port
