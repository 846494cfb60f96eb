"""The network between members: one TCP gate in front of each member's peer port.

Every member dials every peer at the address `--initial-cluster` (or the replicated member
table) gives it. The nemesis cluster gives each member a *gate* address instead of its real
peer port: a TCP proxy in the test process that forwards bytes to the member's peer port.
TLS goes through untouched (the gate never reads a byte of it), and the member's own code is
not told about any fault: it sees only what a real network would show it.

Who is calling. A gate must know which member dialed it, to cut the link from that member
and not from the others. It asks the kernel: the accepted connection's remote port is the
caller's local port, `/proc/net/tcp{,6}` maps that socket to an inode, and the member whose
`/proc/<pid>/fd` holds `socket:[inode]` is the caller. So one address per member suffices,
and a member re-added with a peer URL in the replicated member table is still dialed through
its gate (the URL is the gate's), which per-pair proxy ports could not achieve. A connection
nobody owns (a process that is not a running member) is refused and counted.

Cutting a link. `block(src, dst)` cuts the directed link src -> dst: Raft messages travel on
the stream the *sender* opens, so frozen connections from src to dst's gate lose exactly the
messages src sends to dst, and dst -> src keeps working (A hears B, B does not hear A). A
blocked link behaves like a network that drops packets, not like a refused port: bytes
already read are held, nothing more is read (TCP back-pressure fills the sender's buffers),
and new connections are accepted but not forwarded. When the link is healed the held bytes
flow on (late, as TCP would deliver them after retransmission), so members also see stale
messages. A member's own keepalive (10 s) or write timeout (5 s) is what notices a long cut.

Everything runs on the event loop that created the `Network`; `close` stops every gate and
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("concord.nemesis.gate")

CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 5.0
"""How long a gate waits to reach a member's peer port (a paused member accepts anyway)."""


def socket_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of this network namespace's TCP socket bound to `local_port` and connected to
    `remote_port` (IPv4 or IPv6, any loopback address), or None if there is none."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
                and inode != "0"
            ):
                return int(inode)
    return None


def socket_owner(inode: int, pids: Mapping[int, int]) -> int | None:
    """The key of `pids` (member id -> pid) whose process holds socket `inode`, or None."""
    wanted = f"socket:[{inode}]"
    for member, pid in pids.items():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == wanted:
                    return member
            except OSError:
                continue
    return None


@dataclass
class GateStats:
    """What one gate did (for the run's summary)."""

    accepted: int = 0
    refused_unknown: int = 0
    """Connections no running member owned."""
    upstream_failed: int = 0
    """Connections the member's peer port did not take (it was down)."""
    bytes_forwarded: int = 0
    held_while_blocked: int = 0
    """Connections (or reads) that waited on a cut link."""


@dataclass
class _Gate:
    member: int
    upstream_port: int
    server: asyncio.Server
    port: int
    stats: GateStats = field(default_factory=GateStats)


class Network:
    """The gates of one cluster and the set of cut links (see the module docstring).

    `pids()` returns member id -> pid of the members running now (the harness's view)."""

    def __init__(self, pids: Callable[[], Mapping[int, int]]) -> None:
        self._pids = pids
        self._gates: dict[int, _Gate] = {}
        self._open: dict[tuple[int, int], asyncio.Event] = {}
        """(src, dst) -> set while the link carries bytes; cleared while it is cut."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False

    # --- gates ----------------------------------------------------------------------------------

    async def add_gate(self, member: int, upstream_port: int, port: int = 0) -> int:
        """Open member `member`'s gate on 127.0.0.1:`port` (0: any free port), forwarding to
        its peer port `upstream_port`; returns the gate's port."""
        if member in self._gates:
            raise ValueError(f"member {member} already has a gate")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The top of a connection's task: `close` cancels it, and asyncio's stream
            # machinery would log a cancelled handler as an error.
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve(self._gates[member], reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", port)
        bound = int(server.sockets[0].getsockname()[1])
        self._gates[member] = _Gate(member, upstream_port, server, bound)
        return bound

    def gate_port(self, member: int) -> int:
        return self._gates[member].port

    def stats(self) -> dict[int, GateStats]:
        return {m: g.stats for m, g in sorted(self._gates.items())}

    # --- links ----------------------------------------------------------------------------------

    def _link(self, src: int, dst: int) -> asyncio.Event:
        event = self._open.get((src, dst))
        if event is None:
            event = self._open[(src, dst)] = asyncio.Event()
            event.set()
        return event

    def block(self, src: int, dst: int) -> None:
        """Cut the directed link src -> dst (messages src sends to dst are held)."""
        if src == dst:
            raise ValueError("a member is always connected to itself")
        self._link(src, dst).clear()

    def block_both(self, a: int, b: int) -> None:
        self.block(a, b)
        self.block(b, a)

    def isolate(self, groups: Iterable[Iterable[int]]) -> None:
        """Cut every link between members of different groups (both ways)."""
        sides = [set(g) for g in groups]
        for i, side in enumerate(sides):
            for other in sides[i + 1 :]:
                for a in side:
                    for b in other:
                        self.block_both(a, b)

    def heal(self) -> None:
        """Restore every link; held bytes flow on."""
        for event in self._open.values():
            event.set()

    def blocked(self) -> list[tuple[int, int]]:
        """The cut links, as sorted (src, dst) pairs."""
        return sorted(link for link, event in self._open.items() if not event.is_set())

    # --- forwarding -----------------------------------------------------------------------------

    async def _serve(
        self, gate: _Gate, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            src = self._identify(gate, writer)
            if src is None:
                gate.stats.refused_unknown += 1
                return
            gate.stats.accepted += 1
            link = self._link(src, gate.member)
            if not link.is_set():
                gate.stats.held_while_blocked += 1
                await link.wait()  # a cut link: as if the SYN were dropped until it heals
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", gate.upstream_port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                gate.stats.upstream_failed += 1
                return
            upstream = up_writer
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(gate, link, reader, up_writer),
                self._pump(gate, link, up_reader, writer),
            )
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
            if task is not None:
                self._tasks.discard(task)

    async def _pump(
        self,
        gate: _Gate,
        link: asyncio.Event,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Copy reader -> writer while `link` is open; while it is cut, hold what was read
        and stop reading. EOF (after the link is open) closes the writing side."""
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                if not link.is_set():
                    gate.stats.held_while_blocked += 1
                    await link.wait()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                gate.stats.bytes_forwarded += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
            writer.close()

    def _identify(self, gate: _Gate, writer: asyncio.StreamWriter) -> int | None:
        peer = writer.get_extra_info("peername")
        if not peer:
            return None
        inode = socket_inode(int(peer[1]), gate.port)
        if inode is None:
            return None
        owner = socket_owner(inode, self._pids())
        if owner is None:
            log.debug(
                "gate of member %d: no member owns the connection from port %s",
                gate.member,
                peer[1],
            )
        return owner

    async def close(self) -> None:
        """Stop every gate and drop every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.heal()
        for gate in self._gates.values():
            gate.server.close()
        for w in list(self._writers):
            w.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for gate in self._gates.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gate.server.wait_closed(), 5.0)
