"""The framed peer protocol's codec: bytes in, frames out, and nothing else (no I/O).

A connection (see `frame_transport.py`) opens with `PREFACE` in the clear, answered with the
same bytes, which tells the listener that this is a Raft connection rather than gRPC sharing
the peer port; then TLS, then frames. Every frame is a 7-byte header and a payload:

    magic (1 byte, 0xC5) | version (1 byte, 1) | type (1 byte) | length (4 bytes, big endian)

`HELLO` comes first from each side and names the sender: member id (8 bytes, big endian)
and cluster id (UTF-8, the rest of the payload). `RAFT` carries one `concord.v1.RaftMessage`
(protobuf, explicit field numbers, the same form as the gRPC transport's); several frames
written together make a batch, so there is no batch frame. A frame over `MAX_FRAME_BYTES`,
a wrong magic, version or type is a protocol error (`FrameError`): the reader closes the
connection, because after a bad header it cannot find the next frame's start.

The magic byte is not a printable character and not 0x16 (a TLS record), so a frame header
is never mistaken for either; the version lets a later change of the header or payloads be
refused by name rather than misread.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from coordinator.api.v1 import raft_pb2 as pb
from coordinator.raft import Message

from .wire import WireError, from_wire, to_wire

PREFACE = b"CONCORD-RAFT/1\r\n"
"""Sent in the clear by a dialler, echoed by the listener. 16 bytes: shorter than a TLS
ClientHello and HTTP/2's preface, so the listener can read this many before it decides."""

MAGIC = 0xC5
VERSION = 1
_HEADER = struct.Struct(">BBBI")
HEADER_BYTES = _HEADER.size
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""The largest payload accepted (a snapshot chunk's bound, as on the gRPC transport)."""
MAX_CLUSTER_ID_BYTES = 256
_MEMBER_ID = struct.Struct(">Q")


class FrameType(enum.IntEnum):
    HELLO = 1
    RAFT = 2


class FrameError(ValueError):
    """The peer broke the protocol; the message says how. The connection must close."""


@dataclass(frozen=True, slots=True)
class Hello:
    member_id: int
    cluster_id: str


def frame(kind: FrameType, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameError(f"a {kind.name} frame of {len(payload)} bytes is over the limit")
    return _HEADER.pack(MAGIC, VERSION, kind, len(payload)) + payload


def encode_hello(member_id: int, cluster_id: str) -> bytes:
    cid = cluster_id.encode()
    if not 0 < member_id < 2**63 or len(cid) > MAX_CLUSTER_ID_BYTES:
        raise FrameError("a hello needs a member id in 1..2^63-1 and a short cluster id")
    return frame(FrameType.HELLO, _MEMBER_ID.pack(member_id) + cid)


def encode_message(msg: Message) -> bytes:
    """WireError for a message type that never leaves a member."""
    return frame(FrameType.RAFT, to_wire(msg).SerializeToString())


def decode_hello(payload: bytes) -> Hello:
    if len(payload) < _MEMBER_ID.size or len(payload) > _MEMBER_ID.size + MAX_CLUSTER_ID_BYTES:
        raise FrameError(f"a hello of {len(payload)} bytes")
    (member_id,) = _MEMBER_ID.unpack_from(payload)
    if not 0 < member_id < 2**63:
        raise FrameError(f"a hello naming member {member_id}")
    try:
        cluster_id = payload[_MEMBER_ID.size :].decode()
    except UnicodeDecodeError:
        raise FrameError("a hello whose cluster id is not UTF-8") from None
    return Hello(member_id, cluster_id)


def decode_message(payload: bytes) -> Message:
    """FrameError for bytes that are not a valid Raft message."""
    wire = pb.RaftMessage()
    try:
        wire.ParseFromString(payload)
        return from_wire(wire)
    except (DecodeError, WireError) as err:
        raise FrameError(f"not a Raft message: {err}") from None


class FrameDecoder:
    """Cuts a byte stream into frames. `feed` returns every frame completed by the bytes
    given, in order, and keeps a partial one for the next call; it raises FrameError at the
    first bad header (what follows cannot be trusted)."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[FrameType, bytes]]:
        self._buf += data
        out: list[tuple[FrameType, bytes]] = []
        start = 0
        buf = self._buf
        while len(buf) > start:
            # A header is checked byte by byte as it arrives, so that garbage shorter than a
            # header is refused at once rather than waited on.
            _check_start(buf[start : start + 3])
            if len(buf) - start < HEADER_BYTES:
                break
            _, _, kind, length = _HEADER.unpack_from(buf, start)
            if length > self._max:
                raise FrameError(f"a frame of {length} bytes is over the {self._max} limit")
            end = start + HEADER_BYTES + length
            if len(buf) < end:
                break
            out.append((FrameType(kind), bytes(buf[start + HEADER_BYTES : end])))
            start = end
        if start:
            del buf[:start]
        return out


_KINDS = frozenset(int(k) for k in FrameType)


def _check_start(head: bytes | bytearray) -> None:
    """The first bytes (up to 3) of a header: magic, version, type."""
    if head[0] != MAGIC:
        raise FrameError(f"bad magic byte 0x{head[0]:02x}: not a Concord Raft frame")
    if len(head) > 1 and head[1] != VERSION:
        raise FrameError(f"frame version {head[1]}; this member speaks {VERSION}")
    if len(head) > 2 and head[2] not in _KINDS:
        raise FrameError(f"unknown frame type {head[2]}")
