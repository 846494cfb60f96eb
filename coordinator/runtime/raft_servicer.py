"""The receiving end of Raft traffic over gRPC: `RaftServicer`, which checks that a caller's
certificate names the member it claims to be before handing its messages to the transport
(`GrpcTransport`, or `FrameTransport` for relayed callers), and the peer-certificate checks
the join service shares (`peer_refusal`, `certified_member_id`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from coordinator.api.v1 import raft_pb2 as pb
from coordinator.api.v1 import raft_pb2_grpc as pb_grpc
from coordinator.pki import TlsError, member_id_of
from coordinator.raft import Message

from .wire import WireError, from_wire

log = logging.getLogger("concord.transport")

# The generated service module is untyped; this is its server entry point, typed here once.
_add_raft_servicer: Callable[[Any, grpc.aio.Server], None] = pb_grpc.add_RaftServicer_to_server


class PeerInbox(Protocol):
    """What the servicer needs of a transport: `GrpcTransport`, or `FrameTransport`, which
    serves gRPC Raft streams too (from members still on the gRPC transport)."""

    member_id: int
    cluster_id: str

    def deliver(self, msg: Message) -> None: ...
    def peer_dialed_in(self, peer_id: int) -> None: ...
    def connection_lost(self, peer_id: int) -> None: ...


class RaftServicer:
    """The server side of `concord.v1.Raft/Stream` (see the module docstring)."""

    def __init__(self, transport: PeerInbox) -> None:
        self._transport = transport

    async def Stream(  # the gRPC method's name
        self, request_iterator: AsyncIterator[pb.RaftBatch], context: grpc.aio.ServicerContext
    ) -> pb.RaftAck:
        t = self._transport
        auth = context.auth_context()
        refusal = peer_refusal(auth)
        if refusal:
            log.error("refusing peer stream from %s: %s", context.peer(), refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        bound = certified_member_id(auth)
        sender = 0
        try:
            async for batch in request_iterator:
                if batch.cluster_id != t.cluster_id:
                    log.error(
                        "refusing peer stream from %s: it is for cluster %r, this member (%d) "
                        "belongs to cluster %r",
                        context.peer(),
                        batch.cluster_id,
                        t.member_id,
                        t.cluster_id,
                    )
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"cluster id mismatch: member {t.member_id} belongs to cluster "
                        f"{t.cluster_id!r} but the sender is in cluster {batch.cluster_id!r}; "
                        "check --cluster-id and the peer addresses (a stale address after a "
                        "rebuild?)",
                    )
                if batch.sender and batch.sender != sender:
                    if bound is not None and batch.sender != bound:
                        why = _impersonation(bound, batch.sender)
                        log.error("refusing peer stream from %s: %s", context.peer(), why)
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
                    sender = batch.sender
                    t.peer_dialed_in(sender)
                for wire in batch.messages:
                    try:
                        msg = from_wire(wire)
                    except WireError as err:
                        log.warning("dropping a malformed message from %s: %s", context.peer(), err)
                        continue
                    if bound is not None and msg.frm != bound:
                        why = _impersonation(bound, msg.frm)
                        log.error("refusing peer stream from %s: %s", context.peer(), why)
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
                    if msg.to != t.member_id:
                        log.warning(
                            "dropping a message for member %d from member %d: this is member %d",
                            msg.to,
                            msg.frm,
                            t.member_id,
                        )
                        continue
                    t.deliver(msg)
                    sender = msg.frm
        finally:
            # However it ended (the peer closed it, crashed, or the network dropped it), the
            # sender's connection is gone: a crashed leader's followers hear it here first.
            if sender:
                t.connection_lost(sender)
        return pb.RaftAck()


def _impersonation(bound: int, claimed: int) -> str:
    return (
        f"the certificate of member {bound} cannot send messages as member {claimed}: each "
        "member speaks for itself only"
    )


def peer_refusal(auth: Mapping[str, Sequence[bytes]]) -> str:
    """Why a caller may not speak Raft to us ("" if it may). Under TLS every caller holds a
    certificate from the cluster CA, clients included; only a member certificate (issued
    for serverAuth) may open the peer stream, or any client could forge votes and
    TimeoutNow messages. Without TLS (an explicit --insecure demo) nobody is checked."""
    kind = b"".join(auth.get("transport_security_type", ()))
    if kind != b"ssl":
        return ""
    pems = auth.get("x509_pem_cert", ())
    if not pems:
        return "the peer port needs a member certificate; none was presented"
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, x509.ExtensionNotFound):
        return "the peer port needs a member certificate; this one has no key usages"
    if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        return (
            "the peer port accepts member certificates only; this is a client certificate "
            "(clients use the client port)"
        )
    try:
        member_id_of(cert)
    except TlsError as err:
        return f"the peer port needs a well-formed member certificate: {err}"
    return ""


def certified_member_id(auth: Mapping[str, Sequence[bytes]]) -> int | None:
    """The member id the caller's certificate is bound to; None without TLS, without a
    certificate, or for a certificate that names no id (issued before ids were bound). Call
    after `peer_refusal` has accepted the caller."""
    pems = auth.get("x509_pem_cert", ())
    if b"".join(auth.get("transport_security_type", ())) != b"ssl" or not pems:
        return None
    try:
        return member_id_of(x509.load_pem_x509_certificate(pems[0]))
    except (ValueError, TlsError):
        return None


def add_raft_servicer(server: grpc.aio.Server, servicer: RaftServicer) -> None:
    """Register `servicer` on a `grpc.aio.Server` (the generated helper is untyped)."""
    _add_raft_servicer(servicer, server)
