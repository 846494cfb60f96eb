"""PeerBook: the peer set and what a peer transport has learnt about each peer, kept the same
way whatever carries the messages (`GrpcTransport`, `FrameTransport`).

Per peer: when it was last sent to and heard from, what was sent, dropped and received,
why the last connection failed, and a round-trip estimate: the time from sending an APP or
HEARTBEAT (when no probe is outstanding) to the next APP_RESP or HEARTBEAT_RESP from that
peer. A peer is *reachable* when heard from within `reachable_window_s`. From these the
book answers `stats`, `reachable` and `prompt` (which followers get appends at once, see
"A quorum first" in `grpc_transport.py`), and `deliver` notes each message heard before it
hands it to the owner.

A transport subclasses `PeerBook` with its own per-peer state (a `PeerRecord` subclass
that says whether its connection is up) and supplies `_start_peer` and `remove_peer`.
Ownership: everything here runs on the member's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from coordinator.raft import Message, MessageType

from .clock import Clock

_PROBES = frozenset({MessageType.APP, MessageType.HEARTBEAT})
_PROBE_ANSWERS = frozenset({MessageType.APP_RESP, MessageType.HEARTBEAT_RESP})
_PROBE_STALE_S = 10.0
"""A probe unanswered this long is forgotten rather than turned into a huge sample."""


@dataclass(frozen=True, slots=True)
class PeerStats:
    """One peer as this member sees it. Times are `Clock.monotonic_s` values; None: never."""

    id: int
    address: str
    connected: bool
    """A connection to the peer is open and its last write went through."""
    reachable: bool
    """Heard from within the transport's `reachable_window_s`."""
    last_sent_s: float | None
    last_heard_s: float | None
    round_trip_s: float | None
    """The latest round-trip sample (leader only; see the module docstring)."""
    sent: int
    """Messages written to the connection."""
    dropped: int
    """Messages dropped: queue full, or lost with a broken connection."""
    received: int
    last_error: str
    """Why the last connection failed ('' if none has)."""


class PeerRecord:
    """Mutable per-peer state both transports keep; owned by the transport, touched only on
    the event loop."""

    def __init__(self, peer_id: int, address: str) -> None:
        self.id = peer_id
        self.address = address
        self.wake = asyncio.Event()
        """Set when the peer dialled in: cut the backoff short."""
        self.failing = False
        """The last attempt failed and the failure was logged (to log changes, not spam)."""
        self.last_sent_s: float | None = None
        self.last_heard_s: float | None = None
        self.round_trip_s: float | None = None
        self.probe_s: float | None = None
        self.sent = 0
        self.dropped = 0
        self.received = 0
        self.last_error = ""

    def is_connected(self) -> bool:
        """The connection to the peer is up (each transport knows how it tells)."""
        raise NotImplementedError


P = TypeVar("P", bound=PeerRecord)


class PeerBook(Generic[P]):
    """The peer set of a transport and its bookkeeping (see the module docstring)."""

    def __init__(
        self,
        member_id: int,
        cluster_id: str,
        clock: Clock,
        *,
        log: logging.Logger,
        reachable_window_s: float,
        append_lag_s: float,
        prompt_window_s: float,
        on_round_trip: Callable[[int, float], None] | None,
    ) -> None:
        if member_id <= 0:
            raise ValueError("member id must be a positive integer")
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.clock = clock
        self._log = log
        self.reachable_window_s = reachable_window_s
        self._append_lag_s = append_lag_s
        self._prompt_window_s = prompt_window_s
        self._voters: frozenset[int] = frozenset()
        self._on_round_trip = on_round_trip
        self._peers: dict[int, P] = {}
        self._receive: Callable[[Message], None] | None = None
        self._lost: Callable[[int], None] | None = None
        self._closed = False
        self.dropped_unknown_peer = 0
        """Messages for an id that is not a peer (yet, or any more)."""

    # --- wiring ------------------------------------------------------------------------------

    def bind(
        self, receive: Callable[[Message], None], lost: Callable[[int], None] | None = None
    ) -> None:
        """Where incoming messages go (`RaftLoop.receive`); until bound they are dropped.
        `lost(peer)` hears that a connection with `peer` broke (`RaftLoop.peer_unreachable`)."""
        self._receive = receive
        self._lost = lost

    def connection_lost(self, peer_id: int) -> None:
        """A connection with `peer_id` ended or failed: tell the owner (a hint that the peer
        may be down; a crashed process's connections close at once, long before an election
        timeout of silence)."""
        if self._lost is not None and not self._closed:
            self._lost(peer_id)

    # --- membership --------------------------------------------------------------------------

    def set_peers(self, peers: Mapping[int, str]) -> None:
        """Make the peer set exactly `peers` (id -> host:port); this member's id is ignored."""
        wanted = {i: a for i, a in peers.items() if i != self.member_id}
        for peer_id in [i for i in self._peers if i not in wanted]:
            self.remove_peer(peer_id)
        for peer_id, address in wanted.items():
            self.add_peer(peer_id, address)

    def add_peer(self, peer_id: int, address: str) -> None:
        """Start talking to `peer_id` at `address`; a known peer with a new address is
        reconnected, one with the same address is left alone."""
        if peer_id == self.member_id:
            raise ValueError(f"member {peer_id} is this member, not a peer")
        if self._closed:
            raise RuntimeError("the transport is closed")
        old = self._peers.get(peer_id)
        if old is not None:
            if old.address == address:
                return
            self.remove_peer(peer_id)
        self._peers[peer_id] = self._start_peer(peer_id, address)
        self._log.info("peer %d at %s added", peer_id, address)

    def _start_peer(self, peer_id: int, address: str) -> P:
        """A new peer's state, with its connection task started."""
        raise NotImplementedError

    def remove_peer(self, peer_id: int) -> None:
        raise NotImplementedError

    def peers(self) -> dict[int, str]:
        return {i: p.address for i, p in self._peers.items()}

    def set_voters(self, voters: frozenset[int]) -> None:
        """The configuration's voters (this member included or not), for choosing which
        followers get appends at once (see `prompt`)."""
        self._voters = frozenset(voters)

    def prompt(self) -> frozenset[int]:
        """The peers an APP goes to at once: the lowest-id healthy voters (connected, heard
        from within `prompt_window_s`), as many as make a majority of the voters with this
        member; every peer while the voters are unknown, the lag is off, or too few are
        healthy for a majority."""
        voters = self._voters
        if not voters or self._append_lag_s <= 0 or self.member_id not in voters:
            return frozenset(self._peers)
        need = len(voters) // 2  # followers that make a majority with this member
        now = self.clock.monotonic_s()
        healthy = [
            i
            for i in sorted(voters)
            if (p := self._peers.get(i)) is not None
            and p.is_connected()
            and self._heard_recently(p, now, self._prompt_window_s)
        ]
        if len(healthy) < need:
            return frozenset(self._peers)
        return frozenset(healthy[:need])

    async def _stop_tasks(self, tasks: Collection[asyncio.Task[Any]]) -> None:
        """Cancel the transport's tasks and wait (bounded) until they have ended."""
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=5.0)
            if stuck:
                self._log.error("%d peer task(s) did not stop within 5 s", len(stuck))

    # --- bookkeeping -------------------------------------------------------------------------

    def _peer_to_send_to(self, msg: Message) -> P | None:
        """The peer `msg` goes to; None (counted) for an unknown one or a closed transport."""
        peer = self._peers.get(msg.to)
        if peer is None or self._closed:
            self.dropped_unknown_peer += 1
            return None
        return peer

    def _note_probe(self, peer: P, msg: Message) -> None:
        """`msg` was queued for `peer`: start timing a round trip if it asks for an answer
        and no probe is outstanding (or the outstanding one is stale)."""
        if msg.type in _PROBES:
            now = self.clock.monotonic_s()
            if peer.probe_s is None or now - peer.probe_s > _PROBE_STALE_S:
                peer.probe_s = now

    def _note_reconnected(self, peer: P) -> None:
        if peer.failing:
            self._log.info("peer %d at %s is reachable again", peer.id, peer.address)
        peer.failing = False

    def _note_failure(self, peer: P, reason: str, lost: int, level: int = logging.WARNING) -> None:
        """The connection to `peer` failed and `lost` queued messages went with it: count
        them, and tell the owner and the log once per run of failures."""
        peer.dropped += lost
        peer.last_error = reason
        if not peer.failing:
            peer.failing = True
            self.connection_lost(peer.id)
            self._log.log(
                level,
                "peer %d at %s is unreachable (%s); %d message(s) dropped, retrying",
                peer.id,
                peer.address,
                reason,
                lost,
            )

    def deliver(self, msg: Message) -> None:
        """A checked message from a peer: note what it tells us, then hand it to the owner."""
        peer = self._peers.get(msg.frm)
        if peer is not None:
            now = self.clock.monotonic_s()
            peer.last_heard_s = now
            peer.received += 1
            if msg.type in _PROBE_ANSWERS and peer.probe_s is not None:
                sample = now - peer.probe_s
                peer.probe_s = None
                peer.round_trip_s = sample
                if self._on_round_trip is not None:
                    self._on_round_trip(peer.id, sample)
        if self._receive is not None:
            self._receive(msg)

    # --- observation -------------------------------------------------------------------------

    def stats(self) -> dict[int, PeerStats]:
        now = self.clock.monotonic_s()
        return {
            i: PeerStats(
                id=p.id,
                address=p.address,
                connected=p.is_connected(),
                reachable=self._heard_recently(p, now),
                last_sent_s=p.last_sent_s,
                last_heard_s=p.last_heard_s,
                round_trip_s=p.round_trip_s,
                sent=p.sent,
                dropped=p.dropped,
                received=p.received,
                last_error=p.last_error,
            )
            for i, p in sorted(self._peers.items())
        }

    def reachable(self, peer_id: int) -> bool:
        peer = self._peers.get(peer_id)
        return peer is not None and self._heard_recently(peer, self.clock.monotonic_s())

    def _heard_recently(self, peer: P, now: float, window_s: float | None = None) -> bool:
        """Heard from within `window_s` (default: `reachable_window_s`)."""
        heard = peer.last_heard_s
        window = self.reachable_window_s if window_s is None else window_s
        return heard is not None and now - heard <= window
