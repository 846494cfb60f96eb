"""FrameTransport: the `Transport` contract over our own framed protocol (`frames.py`) on
asyncio streams with mutual TLS, instead of grpc.aio streams.

Why: a grpc.aio stream write costs 0.3-0.5 ms holding the GIL on a loaded machine, and a
sequential write crosses four of them (docs/latency.md). Here a message is encoded and
appended to its peer's buffer in the Raft loop's own turn, and one callback at the end of
that turn writes everything queued for the peer with a single `transport.write` (TLS
encryption and `send` happen right there, no task hand-off, no per-message await).

**Sending.** `send` encodes the message and appends it to the peer's pending list, bounded
by `queue_max` messages: when full the message is dropped and counted (Raft tolerates loss;
a slow or dead peer must never hold up the loop). The first message of a turn schedules
`_flush` with `call_soon`; later ones in the same turn ride along (explicit batching);
`flush_now` writes them at once instead (the Raft loop does, before it hands a WAL write to
the disk thread, whose sealing would otherwise hold the GIL while the flush waits). A
flush writes only while the connection's write buffer is under `write_buffer_max`; above
it, one task per peer awaits `drain()` (bounded by `write_timeout_s`: a peer that stops
reading is cut off and redialled) and flushes again, so a stalled peer only fills its own
buffer. While a peer is not connected its messages wait in the same bounded list; when a
connection fails they are dropped (stale by the time the peer is back), as on the gRPC
transport. "A quorum first" works as there too: an APP to a follower outside `prompt()`
waits `append_lag_s` with whatever queues behind it.

**Connections.** One task per peer dials, checks and then watches its connection: it sends
`frames.PREFACE` in the clear, waits for the echo, starts TLS, and checks that the
listener's certificate is a member certificate bound to the member it meant to dial (an
unbound certificate, issued before ids were bound, is accepted as on the gRPC transport).
Then each side sends a HELLO (member id, cluster id); the dialler checks the listener's.
Messages flow one way only, dialler to listener (each member dials each peer), so after the
hello the task just waits for the connection to end: when it does, or a dial fails, the
owner hears `lost(peer)` (`RaftLoop.peer_unreachable`) once per run of failures, and the
task redials after a jittered exponential backoff (cut short when the peer dials us: it is
up again).

**Listening.** The listener shares the peer port with gRPC (join services, promotion and
the directory entry call the peer port over gRPC): it reads the first 16 bytes of a new
connection; `PREFACE` makes it a Raft connection, anything else (a TLS ClientHello, the
HTTP/2 preface) is relayed byte for byte to the member's gRPC server on a loopback port, so
TLS stays end to end and the gRPC services still see the caller's certificate. On a Raft
connection the listener requires a member certificate, reads the HELLO, refuses a cluster
id other than its own and a member id other than the certificate's, answers with its own
HELLO, then delivers each message after checking that its sender is the hello's member.
Any protocol error (`FrameError`: a bad header, an oversized frame, a second hello) closes
that connection with a logged reason; nothing escapes into the loop, and other connections
are unaffected. A frame whose payload is not a valid Raft message is dropped and logged,
since the framing itself is intact.

Ownership: everything runs on the member's event loop; `send` must be called from it.

The TLS contexts, the hello, keep-alive and the relay are in `frame_conn.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from coordinator.raft import Message, MessageType

from .clock import Clock
from .frame_conn import (
    _READ_BYTES,
    PeerSsl,
    _certified_id,
    _keep_alive,
    _peer_name,
    _read_hello,
    _reason,
    _relay,
    _watch,
    split_address,
)
from .frames import (
    PREFACE,
    FrameDecoder,
    FrameError,
    FrameType,
    decode_message,
    encode_hello,
    encode_message,
)
from .peer_book import PeerBook, PeerRecord
from .raft_servicer import RaftServicer, add_raft_servicer
from .wire import WireError

log = logging.getLogger("concord.frames")

_NETWORK_ERRORS = (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError, FrameError)


class _Peer(PeerRecord):
    """The frame transport's per-peer state."""

    def __init__(self, peer_id: int, address: str) -> None:
        super().__init__(peer_id, address)
        self.pending: list[bytes] = []
        """Encoded frames not yet written (at most the transport's `queue_max`)."""
        self.writer: asyncio.StreamWriter | None = None
        """Set while the connection is up (hello exchanged)."""
        self.flush: asyncio.Handle | None = None
        self.flush_soon = False
        """`flush` runs at the end of this turn (not after the append lag): `flush_now` may
        write it at once."""
        self.drain: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def is_connected(self) -> bool:
        return self.writer is not None


class FrameTransport(PeerBook[_Peer]):
    """Best-effort delivery to peers over framed TLS connections (see the module docstring).
    `ssl_contexts` None runs without TLS (only for `--insecure` demos and tests)."""

    def __init__(
        self,
        member_id: int,
        cluster_id: str,
        clock: Clock,
        *,
        ssl_contexts: PeerSsl | None = None,
        queue_max: int = 4096,
        write_buffer_max: int = 1024 * 1024,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 0.5,
        connect_timeout_s: float = 5.0,
        write_timeout_s: float = 5.0,
        reachable_window_s: float = 5.0,
        append_lag_s: float = 0.01,
        prompt_window_s: float = 0.5,
        on_round_trip: Callable[[int, float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            member_id,
            cluster_id,
            clock,
            log=log,
            reachable_window_s=reachable_window_s,
            append_lag_s=append_lag_s,
            prompt_window_s=prompt_window_s,
            on_round_trip=on_round_trip,
        )
        if queue_max <= 0:
            raise ValueError("queue_max must be positive")
        self._ssl = ssl_contexts
        self._queue_max = queue_max
        self._write_buffer_max = write_buffer_max
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._connect_timeout_s = connect_timeout_s
        self._write_timeout_s = write_timeout_s
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[Any]] = set()
        """Every task this transport started that may still run (awaited by `close`)."""
        self._server: asyncio.Server | None = None
        self._backend: tuple[str, int] | None = None
        self.refused_connections = 0
        """Inbound connections closed for a protocol or identity error (tests, metrics)."""

    # --- wiring ------------------------------------------------------------------------------

    def peer_dialed_in(self, peer_id: int) -> None:
        peer = self._peers.get(peer_id)
        if peer is not None and peer.writer is None:
            peer.wake.set()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve gRPC Raft streams too (behind the relay): a member still on the gRPC
        transport reaches this one, so a cluster can change transports one member at a
        time (a frames member dialling a gRPC one is refused, so not in both directions)."""
        add_raft_servicer(server, RaftServicer(self))

    async def listen(self, address: str, grpc_backend: tuple[str, int] | None = None) -> int:
        """Listen for peers on `address` (host:port); connections that are not Raft are
        relayed to `grpc_backend`. Returns the port bound."""
        host, port = split_address(address)
        self._backend = grpc_backend
        self._server = await asyncio.start_server(
            self._accept, host or None, port, limit=_READ_BYTES
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    # --- the Transport contract --------------------------------------------------------------

    def send(self, msg: Message) -> None:
        peer = self._peer_to_send_to(msg)
        if peer is None:
            return
        try:
            data = encode_message(msg)
        except (WireError, FrameError) as err:
            log.error("not sending a message to peer %d: %s", msg.to, err)
            return
        if len(peer.pending) >= self._queue_max:
            peer.dropped += 1
            return
        peer.pending.append(data)
        self._note_probe(peer, msg)
        if peer.flush is None and peer.drain is None and peer.writer is not None:
            loop = asyncio.get_running_loop()
            if msg.type is MessageType.APP and peer.id not in self.prompt():
                peer.flush = loop.call_later(self._append_lag_s, self._flush, peer)
            else:
                peer.flush = loop.call_soon(self._flush, peer)
                peer.flush_soon = True

    def flush_now(self) -> None:
        """Write now what would be written at the end of this turn. The Raft loop calls it
        before it hands a WAL write to the disk thread: that thread encodes and seals the
        entries holding the GIL, and a flush left to the end of the turn waited for it, so
        the followers got their appends a few hundred microseconds later than they could."""
        for peer in self._peers.values():
            if peer.flush_soon and peer.flush is not None:
                peer.flush.cancel()
                self._flush(peer)

    def _flush(self, peer: _Peer) -> None:
        """Write what is pending to the peer in one write (see "Sending")."""
        peer.flush = None
        peer.flush_soon = False
        writer = peer.writer
        if writer is None or not peer.pending or peer.drain is not None:
            return
        if writer.transport.get_write_buffer_size() > self._write_buffer_max:
            self._start_drain(peer, writer)
            return
        batch, peer.pending = peer.pending, []
        writer.write(b"".join(batch))
        peer.sent += len(batch)
        peer.last_sent_s = self.clock.monotonic_s()
        if writer.transport.get_write_buffer_size() > self._write_buffer_max:
            self._start_drain(peer, writer)

    def _start_drain(self, peer: _Peer, writer: asyncio.StreamWriter) -> None:
        peer.drain = self._spawn(self._drain(peer, writer), f"raft-drain-{peer.id}")

    async def _drain(self, peer: _Peer, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await writer.drain()
        except TimeoutError:
            peer.last_error = "a write did not finish in time (peer stalled?)"
            writer.transport.abort()  # the peer's task sees the end and redials
            return
        except (OSError, ssl.SSLError):
            return  # the connection broke: the peer's task sees it too
        finally:
            peer.drain = None
        if peer.writer is writer:
            self._flush(peer)

    # --- membership --------------------------------------------------------------------------

    def _start_peer(self, peer_id: int, address: str) -> _Peer:
        peer = _Peer(peer_id, address)
        peer.task = self._spawn(self._run_peer(peer), f"raft-peer-{peer_id}")
        return peer

    def remove_peer(self, peer_id: int) -> None:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        for task in (peer.task, peer.drain):
            if task is not None:
                task.cancel()
        log.info("peer %d at %s removed", peer_id, peer.address)

    async def close(self) -> None:
        """Stop listening, stop every peer task, close every connection."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        self._peers.clear()
        tasks = list(self._tasks)
        await self._stop_tasks(tasks)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- dialling (one task per peer) --------------------------------------------------------

    async def _run_peer(self, peer: _Peer) -> None:
        backoff_s = self._backoff_initial_s
        while True:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await self._dial(peer)
                peer.writer = writer
                backoff_s = self._backoff_initial_s
                self._note_reconnected(peer)
                self._flush(peer)  # what queued while dialling
                reason = await _watch(reader)
            except _NETWORK_ERRORS as err:
                reason = _reason(err)
            except Exception as err:  # a surprise must not end this peer's task for good
                log.exception("unexpected error in the connection to peer %d", peer.id)
                reason = _reason(err)
            finally:
                if peer.writer is not None and peer.writer is writer:
                    peer.writer = None
                if peer.flush is not None:
                    peer.flush.cancel()
                    peer.flush = None
                if writer is not None:
                    writer.transport.abort()
            self._failed(peer, reason)
            await _back_off(peer, backoff_s * self._rng.uniform(0.5, 1.0))
            backoff_s = min(backoff_s * 2, self._backoff_max_s)

    async def _dial(self, peer: _Peer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = split_address(peer.address)
        async with asyncio.timeout(self._connect_timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=_READ_BYTES)
            _keep_alive(writer)
            try:
                writer.write(PREFACE)
                if await reader.readexactly(len(PREFACE)) != PREFACE:
                    raise FrameError(
                        "the peer port did not answer as a Raft listener (a member running "
                        "--peer-transport grpc?)"
                    )
                if self._ssl is not None:
                    await writer.start_tls(self._ssl.client)
                    bound = _certified_id(writer)
                    if bound is not None and bound != peer.id:
                        raise FrameError(
                            f"the certificate at {peer.address} is member {bound}'s, not "
                            f"member {peer.id}'s (a stale address?)"
                        )
                writer.write(encode_hello(self.member_id, self.cluster_id))
                hello, _ = await _read_hello(reader, FrameDecoder())
                if hello.cluster_id != self.cluster_id:
                    raise FrameError(
                        f"the peer at {peer.address} is in cluster {hello.cluster_id!r}, this "
                        f"member in {self.cluster_id!r}"
                    )
                if hello.member_id != peer.id:
                    raise FrameError(
                        f"the peer at {peer.address} is member {hello.member_id}, not "
                        f"member {peer.id}"
                    )
            except BaseException:
                writer.transport.abort()
                raise
        return reader, writer

    def _failed(self, peer: _Peer, reason: str) -> None:
        lost = len(peer.pending)
        peer.pending.clear()
        self._note_failure(peer, reason, lost)

    # --- listening ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        where = _peer_name(writer)
        _keep_alive(writer)
        sender = 0
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                head = await reader.readexactly(len(PREFACE))
            if head != PREFACE:
                if self._backend is not None:
                    await _relay(head, reader, writer, self._backend)
                return
            sender, decoder, frames = await self._greet(reader, writer, where)
            self.peer_dialed_in(sender)
            await self._receive_from(reader, sender, decoder, frames)
        except FrameError as err:
            self.refused_connections += 1
            log.warning("closing the Raft connection from %s: %s", where, err)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as err:
            log.info("the Raft connection from %s ended: %s", where, _reason(err))
        except asyncio.CancelledError:
            # The transport is closing. Not re-raised: asyncio's stream server would log a
            # cancelled connection task as an error.
            pass
        except Exception:
            log.exception("closing the Raft connection from %s", where)
        finally:
            writer.transport.abort()
            if task is not None:
                self._tasks.discard(task)
            if sender:
                self.connection_lost(sender)

    async def _greet(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> tuple[int, FrameDecoder, list[tuple[FrameType, bytes]]]:
        """The listener's half of the handshake: the dialler's member id, the decoder and
        any frames that arrived with the hello. FrameError to refuse."""
        decoder = FrameDecoder()
        async with asyncio.timeout(self._connect_timeout_s):
            writer.write(PREFACE)
            bound: int | None = None
            if self._ssl is not None:
                await writer.start_tls(self._ssl.server)
                bound = _certified_id(writer)
            hello, rest = await _read_hello(reader, decoder)
        if hello.cluster_id != self.cluster_id:
            raise FrameError(
                f"it is for cluster {hello.cluster_id!r}, this member ({self.member_id}) "
                f"belongs to {self.cluster_id!r}"
            )
        if bound is not None and hello.member_id != bound:
            raise FrameError(
                f"the certificate of member {bound} cannot speak as member {hello.member_id}"
            )
        if hello.member_id == self.member_id:
            raise FrameError(f"the hello names this member ({self.member_id})")
        writer.write(encode_hello(self.member_id, self.cluster_id))
        return hello.member_id, decoder, rest

    async def _receive_from(
        self,
        reader: asyncio.StreamReader,
        sender: int,
        decoder: FrameDecoder,
        frames: list[tuple[FrameType, bytes]],
    ) -> None:
        while True:
            for kind, payload in frames:
                if kind is FrameType.HELLO:
                    raise FrameError(f"a second hello from member {sender}")
                try:
                    msg = decode_message(payload)
                except FrameError as err:
                    log.warning("dropping a malformed message from member %d: %s", sender, err)
                    continue
                if msg.frm != sender:
                    raise FrameError(f"member {sender} sent a message as member {msg.frm}")
                if msg.to != self.member_id:
                    log.warning(
                        "dropping a message for member %d from member %d: this is member %d",
                        msg.to,
                        msg.frm,
                        self.member_id,
                    )
                    continue
                self.deliver(msg)
            data = await reader.read(_READ_BYTES)
            if not data:
                return
            frames = decoder.feed(data)


async def _back_off(peer: _Peer, seconds: float) -> None:
    peer.wake.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await peer.wake.wait()
