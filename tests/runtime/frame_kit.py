"""Shared pieces of the framed-transport tests: certificates, a transport pair on real
loopback sockets with real TLS, and a raw TLS client that speaks (or breaks) the protocol."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

from coordinator import pki
from coordinator.raft import Message, MessageType
from coordinator.runtime.clock import SystemClock
from coordinator.runtime.frame_conn import PeerSsl, peer_ssl
from coordinator.runtime.frame_transport import FrameTransport
from coordinator.runtime.frames import PREFACE

CLUSTER = "frames-test"
CA = pki.create_ca(CLUSTER)
_SSL: dict[int | None, PeerSsl] = {}


def member_ssl(member_id: int, *, bound: bool = True) -> PeerSsl:
    """TLS contexts of a member certificate bound to `member_id` (or unbound)."""
    key = member_id if bound else -member_id
    if key not in _SSL:
        cert = pki.issue_member_cert(
            CA, f"member-{member_id}", member_id=member_id if bound else None
        )
        member = pki.MemberTls(CA.cert_pem, cert.cert_pem, cert.key_pem, dt.datetime.max, member_id)
        _SSL[key] = peer_ssl(member)
    return _SSL[key]


def heartbeat(frm: int, to: int, n: int) -> Message:
    """A message whose `commit` numbers it, to check order."""
    return Message(MessageType.HEARTBEAT, to=to, frm=frm, term=1, commit=n)


async def wait_for(cond: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async def poll() -> None:
        # The transport exposes no change notifications; a short poll bounded by the timeout.
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


class Member:
    """A FrameTransport with a listener; what it receives goes to `inbox`."""

    def __init__(self, member_id: int, **kwargs: object) -> None:
        self.id = member_id
        self.inbox: list[Message] = []
        self.lost: list[int] = []
        self.transport = FrameTransport(
            member_id,
            CLUSTER,
            SystemClock(),
            ssl_contexts=member_ssl(member_id),
            backoff_initial_s=0.02,
            backoff_max_s=0.1,
            **kwargs,  # type: ignore[arg-type]
        )
        self.transport.bind(self.inbox.append, self.lost.append)
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def listen(self, port: int = 0) -> None:
        self.port = await self.transport.listen(f"127.0.0.1:{port}")

    async def close(self) -> None:
        await self.transport.close()


async def raw_client(
    port: int, ssl_contexts: PeerSsl | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to a frame listener, past the preface, before any frame."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE)
    assert await reader.readexactly(len(PREFACE)) == PREFACE
    if ssl_contexts is not None:
        await writer.start_tls(ssl_contexts.client)
    return reader, writer


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 10.0) -> bool:
    """Read until the other side closes; True if it did within the timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, OSError):
        return True
    return True
