"""GrpcTransport: the `Transport` contract over real gRPC streams between members.

**Sending.** Every peer gets a bounded outbound `asyncio.Queue` and one task that owns the
connection to it. `send` only enqueues (never blocks, never raises): when a peer's queue is
full the message is dropped and counted, because Raft tolerates loss and a slow or dead peer
must never hold up the member's loop. The peer task keeps one client-streaming
`concord.v1.Raft/Stream` RPC open, takes whatever is queued (up to `batch_max` messages and
`batch_bytes_max` bytes), and writes it as one `RaftBatch` stamped with the cluster id. When
the stream breaks (peer down, refused, a write that does not finish within `write_timeout_s`)
the batch in flight and everything still queued are dropped (stale by the time the peer is
back; Raft resends what matters), and the task reconnects with jittered exponential backoff,
each attempt on a fresh channel (so that gRPC's own reconnect backoff never adds to ours).

**Hello.** Each new stream starts with a batch of no messages that names the sender: it
tells the peer that this member is up. A peer whose own stream to this member broke (this
member was down) is backing off before it dials again, up to `backoff_max_s`; on a hello it
dials at once (`peer_dialed_in`). A restarted follower is so back in its leader's
heartbeats within milliseconds of its peer server starting, not half a second later.

**Receiving.** `RaftServicer` (in `raft_servicer.py`) is the server side of the same RPC. Under
TLS only a member certificate may open it (`peer_refusal`), and a certificate bound to a member
id (`tls.member_id_of`) may send only that member's messages: a message that claims another
sender (in a message or a batch's `sender`) aborts the stream with PERMISSION_DENIED, so a
compromised member certificate cannot cast another member's vote. Each batch's cluster id is
checked first: a mismatch (a stale address after a cluster was rebuilt, a member of another
cluster) aborts the stream with PERMISSION_DENIED and a message that says which ids clashed.
Each message is converted with `from_wire`; a malformed one (`WireError`) or one addressed to
another member is dropped and logged, the rest go to the owner's `receive`
(`RaftLoop.receive`), in order.

**A quorum first.** A leader needs a majority's acknowledgement to commit, not everyone's,
and on a small machine every stream write and every follower's fsync is CPU taken from
the others. So appends go out at once only to the followers a commit needs (`prompt`: the
lowest-id voters, as many as make a majority with the leader, among those whose stream is
up and who were heard from within `prompt_window_s`); to the other followers an APP waits
`append_lag_s` before it goes, together with whatever was queued behind it, so that they
write, fsync and answer once for several appends. Lowest id first because that is also the
order in which followers campaign when the leader's connection drops (`report_unreachable`):
the first to campaign is then the one with the newest log. A prompt follower that stops
answering or whose stream breaks is replaced at the next send; until then commits proceed
at the lagged followers' pace. Only APPs wait (votes, heartbeats, snapshots, TIMEOUT_NOW go
at once), and only until `set_voters` has told the transport the configuration's voters;
`append_lag_s=0` turns it off. Cost: a lagged follower's state machine, and so its
serializable reads and watches, trail by up to `append_lag_s`.

**Lost connections.** When a peer's inbound stream ends, however it ends, or our stream to
it starts failing, the owner hears `lost(peer)` (`RaftLoop.peer_unreachable`). It is only a
hint: a follower whose leader's process died learns it here within milliseconds (the kernel
closes a dead process's sockets), instead of after a whole election timeout of silence.

**Observation.** Per peer the transport records when it last sent to and last heard from
it, what it sent, dropped and received, and a round-trip estimate: the time from enqueueing
an APP or HEARTBEAT (when no probe is outstanding) to the next APP_RESP or HEARTBEAT_RESP
from that peer. Only a member that sends those (the leader) measures round trips, and a lost
probe makes the next sample at most one heartbeat too long (and a lagged follower's, see "A
quorum first", includes the wait). A peer is *reachable* when it
was heard from within `reachable_window_s`: from the leader this is the Leader / Reachable /
Unreachable view of `concordctl member list`; followers hear only from the leader.

**Membership.** `set_peers` (level-based), `add_peer` and `remove_peer` change the peer set
at run time; changing a peer's address restarts its connection.

Ownership: everything here runs on the member's event loop; `send` must be called from it
(RaftLoop does). The grpc module is untyped; its objects stay inside this module's typed
methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from coordinator.api.v1 import raft_pb2 as pb
from coordinator.api.v1 import raft_pb2_grpc as pb_grpc
from coordinator.raft import Message

from .clock import Clock
from .peer_book import PeerBook, PeerRecord
from .raft_servicer import RaftServicer, add_raft_servicer
from .wire import WireError, to_wire

log = logging.getLogger("concord.transport")

# The generated service module is untyped; this is its client entry point, typed here once
# (raft_servicer.py types the server's).
_raft_stub: Callable[[grpc.aio.Channel], Any] = pb_grpc.RaftStub

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""gRPC message size limit on both ends of the peer stream (a batch, or a snapshot chunk)."""


def channel_options() -> list[tuple[str, int]]:
    """Options for peer channels: keepalive pings that notice a silently dead connection.
    (Reconnecting is the peer task's: every attempt gets a fresh channel, and a local
    subchannel pool, because channels to one address otherwise share gRPC's global
    subchannel: a fresh channel would then fail at once with the previous attempt's
    "connection refused" for as long as gRPC's own reconnect backoff runs.)"""
    return [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options() -> list[tuple[str, int]]:
    """Options for the peer server, matching `channel_options` (it must accept the pings)."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


class _Peer(PeerRecord):
    """The gRPC transport's per-peer state."""

    def __init__(self, peer_id: int, address: str, queue_max: int) -> None:
        super().__init__(peer_id, address)
        self.queue: asyncio.Queue[pb.RaftMessage] = asyncio.Queue(maxsize=queue_max)
        """Already in wire form: a message that cannot be converted is refused by `send`."""
        self.task: asyncio.Task[None] | None = None
        self.connected = False

    def is_connected(self) -> bool:
        return self.connected


class GrpcTransport(PeerBook[_Peer]):
    """Best-effort delivery to peers over gRPC streams (see the module docstring).

    `credentials` are grpc channel credentials (`tls.channel_credentials`); None dials
    without TLS (only for `--insecure` demos and tests). `on_round_trip(peer, seconds)` is
    called with every round-trip sample (the metrics histogram)."""

    def __init__(
        self,
        member_id: int,
        cluster_id: str,
        clock: Clock,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        queue_max: int = 4096,
        batch_max: int = 512,
        batch_bytes_max: int = 4 * 1024 * 1024,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 0.5,
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
        if queue_max <= 0 or batch_max <= 0:
            raise ValueError("queue_max and batch_max must be positive")
        self._credentials = credentials
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._batch_bytes_max = batch_bytes_max
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._write_timeout_s = write_timeout_s
        self._rng = rng or random.Random()
        self._retiring: set[asyncio.Task[None]] = set()
        """Tasks of removed peers, still closing their channels (awaited by `close`)."""

    # --- wiring ------------------------------------------------------------------------------

    def peer_dialed_in(self, peer_id: int) -> None:
        """`peer_id` opened a stream to us, so it is up: if our stream to it is down, dial it
        now rather than when the backoff runs out."""
        peer = self._peers.get(peer_id)
        if peer is not None and not peer.connected:
            peer.wake.set()

    def servicer(self) -> RaftServicer:
        return RaftServicer(self)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register the Raft peer service on a `grpc.aio.Server`."""
        add_raft_servicer(server, self.servicer())

    # --- the Transport contract --------------------------------------------------------------

    def send(self, msg: Message) -> None:
        peer = self._peer_to_send_to(msg)
        if peer is None:
            return
        try:
            wire = to_wire(msg)
        except WireError as err:
            log.error("not sending a message to peer %d: %s", msg.to, err)
            return
        try:
            peer.queue.put_nowait(wire)
        except asyncio.QueueFull:
            peer.dropped += 1
            return
        self._note_probe(peer, msg)

    # --- membership --------------------------------------------------------------------------

    def _start_peer(self, peer_id: int, address: str) -> _Peer:
        peer = _Peer(peer_id, address, self._queue_max)
        peer.task = asyncio.get_running_loop().create_task(
            self._run_peer(peer), name=f"raft-peer-{peer_id}"
        )
        return peer

    def remove_peer(self, peer_id: int) -> None:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        if peer.task is not None:
            peer.task.cancel()
            self._retiring.add(peer.task)
            peer.task.add_done_callback(self._retiring.discard)
        log.info("peer %d at %s removed", peer_id, peer.address)

    async def close(self) -> None:
        """Stop every peer task and close its stream and channel."""
        self._closed = True
        tasks = [p.task for p in self._peers.values() if p.task is not None]
        tasks += self._retiring
        self._peers.clear()
        await self._stop_tasks(tasks)

    # --- sending (one task per peer) ---------------------------------------------------------

    async def _run_peer(self, peer: _Peer) -> None:
        channel: grpc.aio.Channel | None = None
        call: grpc.aio.StreamUnaryCall | None = None
        backoff_s = self._backoff_initial_s
        try:
            while True:
                # A new stream starts with a hello (no messages), then carries what is queued.
                batch = [] if call is None else await self._next_batch(peer)
                try:
                    if call is None:
                        # From here on a hello from the peer cuts the backoff after a failure
                        # short, also one that arrives while the failure is being handled.
                        peer.wake.clear()
                        if channel is None:
                            channel = self._open_channel(peer.address)
                        call = _raft_stub(channel).Stream()
                    request = pb.RaftBatch(
                        cluster_id=self.cluster_id, sender=self.member_id, messages=batch
                    )
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that races with the write finishing, and close() would wait.
                    async with asyncio.timeout(self._write_timeout_s):
                        await call.write(request)
                except Exception as err:
                    # AioRpcError, InvalidStateError (the call already ended), TimeoutError;
                    # anything else is a surprise, but must not end this peer's task for good.
                    if not isinstance(
                        err, grpc.aio.AioRpcError | asyncio.InvalidStateError | TimeoutError
                    ):
                        log.exception("unexpected error in the stream to peer %d", peer.id)
                    reason = await _failure_reason(call, err)
                    call = None
                    self._stream_failed(peer, batch, reason)
                    if channel is not None:
                        await channel.close(None)
                        channel = None
                    await self._back_off(peer, backoff_s * self._rng.uniform(0.5, 1.0))
                    backoff_s = min(backoff_s * 2, self._backoff_max_s)
                    continue
                peer.sent += len(batch)
                peer.last_sent_s = self.clock.monotonic_s()
                backoff_s = self._backoff_initial_s
                if not peer.connected:
                    peer.connected = True
                    self._note_reconnected(peer)
        finally:
            peer.connected = False
            if call is not None:
                call.cancel()
            if channel is not None:
                await channel.close(None)

    @staticmethod
    async def _back_off(peer: _Peer, seconds: float) -> None:
        """Wait `seconds`, or less if the peer dialled in since the failed attempt began
        (`wake` is cleared when an attempt starts, not here: a hello that arrived while the
        failure was being handled would otherwise be forgotten)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await peer.wake.wait()

    async def _next_batch(self, peer: _Peer) -> list[pb.RaftMessage]:
        batch = [await peer.queue.get()]
        if batch[0].type == pb.APP and peer.id not in self.prompt():
            await asyncio.sleep(self._append_lag_s)  # gather more (see "A quorum first")
        size = _payload_bytes(batch[0])
        while len(batch) < self._batch_max and size < self._batch_bytes_max:
            try:
                msg = peer.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            batch.append(msg)
            size += _payload_bytes(msg)
        return batch

    def _stream_failed(self, peer: _Peer, batch: Sequence[pb.RaftMessage], reason: str) -> None:
        lost = len(batch)
        while not peer.queue.empty():
            peer.queue.get_nowait()
            lost += 1
        peer.connected = False
        level = logging.ERROR if reason.startswith("PERMISSION_DENIED") else logging.WARNING
        self._note_failure(peer, reason, lost, level)

    def _open_channel(self, address: str) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(address, options=channel_options())
        return grpc.aio.secure_channel(address, self._credentials, options=channel_options())


def _payload_bytes(msg: pb.RaftMessage) -> int:
    """Roughly what a message weighs on the wire (its entries' and snapshot chunk's data)."""
    return len(msg.data) + sum(len(e.data) for e in msg.entries)


async def _failure_reason(call: grpc.aio.StreamUnaryCall | None, err: BaseException) -> str:
    """A one-line "CODE: details" for a failed stream."""
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    if isinstance(err, TimeoutError):
        if call is not None:
            call.cancel()
        return "DEADLINE_EXCEEDED: a write did not finish in time (peer stalled?)"
    if call is not None and call.done() and not call.cancelled():
        # The call has finished, so its status is there: these awaits do not suspend (and a
        # cancellation of this task is never swallowed here).
        code = await call.code()
        details = await call.details()
        return f"{code.name}: {details}"
    return f"stream failed: {str(err) or type(err).__name__}"
