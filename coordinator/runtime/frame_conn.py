"""The framed peer transport's connection plumbing: TLS contexts for both ends (`peer_ssl`),
reading the hello, the member id a peer's certificate is bound to, TCP keep-alive, and the
byte-for-byte relay of non-Raft callers to the member's gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from coordinator.pki import MemberTls

from .frames import FrameDecoder, FrameError, FrameType, Hello, decode_hello
from .raft_servicer import certified_member_id, peer_refusal

_READ_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class PeerSsl:
    """TLS contexts for both ends: the cluster CA verifies the other side, each presents
    the member certificate. Host names are not checked: the member id in the certificate is
    (see the module docstring)."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def peer_ssl(member: MemberTls) -> PeerSsl:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    # ssl loads a certificate chain from files only: a private directory, gone at once.
    with tempfile.TemporaryDirectory(prefix="concord-peer-") as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_bytes(member.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(member.key_pem)
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=member.ca_pem.decode())
            ctx.load_cert_chain(cert, key)
    return PeerSsl(server, client)


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def _read_hello(
    reader: asyncio.StreamReader, decoder: FrameDecoder
) -> tuple[Hello, list[tuple[FrameType, bytes]]]:
    """Read up to the first frame, which must be a HELLO; also returns the frames that
    arrived with it."""
    frames = decoder.feed(b"")
    while not frames:
        data = await reader.read(_READ_BYTES)
        if not data:
            raise FrameError("the connection closed before a hello")
        frames = decoder.feed(data)
    kind, payload = frames[0]
    if kind is not FrameType.HELLO:
        raise FrameError(f"the first frame is {kind.name}, not HELLO")
    return decode_hello(payload), frames[1:]


async def _watch(reader: asyncio.StreamReader) -> str:
    """Wait for a dialled connection to end (the listener sends nothing after its hello)."""
    data = await reader.read(_READ_BYTES)
    if not data:
        return "the peer closed the connection"
    return "protocol error: the peer sent data after its hello"


def _certified_id(writer: asyncio.StreamWriter) -> int | None:
    """The member id the other side's certificate is bound to (None: an unbound member
    certificate); FrameError for anything but a member certificate of the cluster CA."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise FrameError("no certificate was presented")
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    auth = {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem]}
    refusal = peer_refusal(auth)
    if refusal:
        raise FrameError(refusal)
    return certified_member_id(auth)


def _keep_alive(writer: asyncio.StreamWriter) -> None:
    """Let the kernel notice a peer that vanished without closing (a partition, a powered-off
    host), as gRPC's keepalive pings do: probes after 10 s of silence, and a connection
    whose sent bytes stay unacknowledged for 15 s is dropped (Linux; elsewhere keepalive
    only)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", 10),
            ("TCP_KEEPINTVL", 5),
            ("TCP_KEEPCNT", 2),
            ("TCP_USER_TIMEOUT", 15_000),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _peer_name(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)


def _reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, asyncio.IncompleteReadError):
        return "the connection closed mid-handshake"
    return str(err) or type(err).__name__


async def _relay(
    head: bytes,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    backend: tuple[str, int],
) -> None:
    """Relay a non-Raft connection to the gRPC server, byte for byte, both ways."""
    up_reader, up_writer = await asyncio.open_connection(*backend, limit=_READ_BYTES)
    up_writer.write(head)
    try:
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
    finally:
        up_writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_READ_BYTES):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, ssl.SSLError):
        writer.transport.abort()
