"""The nemesis's gate: it knows who dialed it, and a cut link holds bytes until it heals.

Real loopback sockets and real time (marked `process`): the "members" are this test process
(its own pid stands for member 1) and an echo server standing for member 2's peer port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from coordinator.testing.nemesis.gate import Network, socket_inode, socket_owner

pytestmark = pytest.mark.process

QUIET_S = 0.3
"""How long a cut link must stay silent to count as cut (a bound, not a sleep to wait for
something to happen)."""


async def echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def test_the_kernel_names_the_process_that_owns_a_loopback_connection() -> None:
    async def scenario() -> None:
        server, port = await echo_server()
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            local_port = writer.get_extra_info("sockname")[1]
            inode = socket_inode(local_port, port)
            assert inode is not None
            assert socket_owner(inode, {7: os.getpid()}) == 7
            assert socket_owner(inode, {7: 1}) is None  # pid 1 does not hold it
            writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_cut_link_holds_bytes_both_ways_and_delivers_them_when_healed() -> None:
    async def scenario() -> None:
        server, port = await echo_server()
        net = Network(lambda: {1: os.getpid()})
        async with server:
            gate = await net.add_gate(2, port)
            reader, writer = await asyncio.open_connection("127.0.0.1", gate)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"

            net.block(1, 2)
            assert net.blocked() == [(1, 2)]
            writer.write(b"held")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(4), QUIET_S)
            net.block(2, 1)  # the other direction is another link: no effect on this one
            net.heal()
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"

            # A connection made while the link is cut is accepted and held, not refused.
            net.block(1, 2)
            r2, w2 = await asyncio.open_connection("127.0.0.1", gate)
            w2.write(b"late")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r2.readexactly(4), QUIET_S)
            net.heal()
            assert await asyncio.wait_for(r2.readexactly(4), 5) == b"late"
            writer.close()
            w2.close()
            stats = net.stats()[2]
            assert stats.accepted == 2 and stats.refused_unknown == 0
            assert stats.held_while_blocked >= 2
        await net.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_connection_no_member_owns_is_refused() -> None:
    async def scenario() -> None:
        server, port = await echo_server()
        net = Network(lambda: {})  # no member runs: this process is nobody
        async with server:
            gate = await net.add_gate(2, port)
            reader, writer = await asyncio.open_connection("127.0.0.1", gate)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed on us
            writer.close()
            assert net.stats()[2].refused_unknown == 1
        await net.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
