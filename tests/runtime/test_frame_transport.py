"""FrameTransport on real loopback sockets with real mutual TLS.

Real (short) time: every wait is a bounded wait for a condition, never a sleep for timing;
the bounds are generous so a loaded machine does not flake.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc

from coordinator import pki
from coordinator.api.v1 import raft_pb2 as pb
from coordinator.raft import Entry, EntryKind, Message, MessageType
from coordinator.runtime import tls
from coordinator.runtime.clock import SystemClock
from coordinator.runtime.frame_conn import peer_ssl
from coordinator.runtime.frame_transport import FrameTransport
from coordinator.runtime.frames import (
    PREFACE,
    FrameDecoder,
    FrameType,
    decode_hello,
    encode_hello,
    encode_message,
)
from coordinator.runtime.grpc_transport import server_options
from coordinator.runtime.peer_transport import make_transport, serve_peers
from coordinator.runtime.wire import to_wire
from tests.runtime.frame_kit import (
    CA,
    CLUSTER,
    Member,
    closed_by_peer,
    heartbeat,
    member_ssl,
    raw_client,
    wait_for,
)


def test_messages_flow_both_ways_in_order() -> None:
    async def main() -> None:
        a, b = Member(1), Member(2)
        await a.listen()
        await b.listen()
        a.transport.set_peers({2: b.address})
        b.transport.set_peers({1: a.address})
        try:
            await wait_for(lambda: all(s.connected for s in a.transport.stats().values()))
            await wait_for(lambda: all(s.connected for s in b.transport.stats().values()))
            for n in range(1, 501):
                a.transport.send(heartbeat(1, 2, n))
                if n % 7 == 0:
                    await asyncio.sleep(0)  # several loop turns, several writes
            for n in range(1, 101):
                b.transport.send(heartbeat(2, 1, n))
            await wait_for(lambda: len(b.inbox) == 500 and len(a.inbox) == 100)
            assert [m.commit for m in b.inbox] == list(range(1, 501))
            assert [m.commit for m in a.inbox] == list(range(1, 101))
            assert {(m.frm, m.to) for m in b.inbox} == {(1, 2)}
            stats = a.transport.stats()[2]
            assert stats.sent == 500 and stats.dropped == 0 and stats.last_error == ""
            assert b.transport.stats()[1].received == 500
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_messages_queued_in_one_turn_go_out_in_one_write() -> None:
    async def main() -> None:
        a = Member(1)
        b_port_reader: list[bytes] = []
        ready = asyncio.Event()

        async def fake_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # A listener that records each read: one write from the sender arrives as one
            # TLS record train, read here in as few reads as the kernel allows.
            assert await reader.readexactly(len(PREFACE)) == PREFACE
            writer.write(PREFACE)
            await writer.start_tls(member_ssl(2).server)
            decoder = FrameDecoder()
            while not (frames := decoder.feed(await reader.read(65536))):
                pass
            assert frames[0][0] is FrameType.HELLO
            writer.write(encode_hello(2, CLUSTER))
            ready.set()
            while data := await reader.read(1 << 20):
                b_port_reader.append(data)
            writer.close()

        server = await asyncio.start_server(fake_peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        a.transport.set_peers({2: f"127.0.0.1:{port}"})
        try:
            await asyncio.wait_for(ready.wait(), 15)
            await wait_for(lambda: a.transport.stats()[2].connected)
            for n in range(1, 41):
                a.transport.send(heartbeat(1, 2, n))
            expected = b"".join(encode_message(heartbeat(1, 2, n)) for n in range(1, 41))
            await wait_for(lambda: sum(map(len, b_port_reader)) == len(expected))
            assert b"".join(b_port_reader) == expected
            # Forty frames, sent in one turn, were written as one: nothing else split them.
            assert len(b_port_reader) <= 2
        finally:
            await a.close()
            server.close()

    asyncio.run(main())


def test_flush_now_writes_this_turns_messages_before_the_turn_ends() -> None:
    # The Raft loop calls it before handing a WAL write to the disk thread, so that the
    # appends are on the wire before that thread holds the GIL.
    async def main() -> None:
        a, b = Member(1), Member(2)
        await b.listen()
        a.transport.set_peers({2: b.address})
        try:
            await wait_for(lambda: a.transport.stats()[2].connected)
            a.transport.flush_now()  # nothing queued: nothing written
            assert a.transport.stats()[2].sent == 0
            a.transport.send(heartbeat(1, 2, 1))
            a.transport.send(heartbeat(1, 2, 2))
            assert a.transport.stats()[2].sent == 0  # queued for the end of the turn
            a.transport.flush_now()
            assert a.transport.stats()[2].sent == 2  # written, in this very turn
            await asyncio.sleep(0)  # the cancelled end-of-turn flush writes nothing again
            assert a.transport.stats()[2].sent == 2
            await wait_for(lambda: [m.commit for m in b.inbox] == [1, 2])
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_the_dialler_refuses_a_listener_whose_certificate_names_another_member() -> None:
    async def main() -> None:
        a, c = Member(1), Member(3)
        await c.listen()
        # Member 1 believes member 2 is at member 3's address (a stale address book).
        a.transport.set_peers({2: c.address})
        try:
            await wait_for(lambda: "not member 2's" in a.transport.stats()[2].last_error)
            a.transport.send(heartbeat(1, 2, 1))
            assert not a.transport.stats()[2].connected
            assert a.lost == [2]
            assert c.inbox == []
        finally:
            await a.close()
            await c.close()

    asyncio.run(main())


def test_the_listener_refuses_a_hello_that_is_not_the_certificates_member() -> None:
    async def main() -> None:
        b = Member(2)
        await b.listen()
        try:
            reader, writer = await raw_client(b.port, member_ssl(3))
            writer.write(encode_hello(1, CLUSTER))  # member 3's certificate, claiming 1
            assert await closed_by_peer(reader)
            writer.close()
            reader, writer = await raw_client(b.port, member_ssl(3))
            writer.write(encode_hello(3, "another-cluster"))
            assert await closed_by_peer(reader)
            writer.close()
            # A client certificate of the cluster CA is not a member's.
            client = pki.issue_client_cert(CA, "client")
            as_client = peer_ssl(
                pki.MemberTls(CA.cert_pem, client.cert_pem, client.key_pem, dt.datetime.max)
            )
            reader, writer = await raw_client(b.port, as_client)
            writer.write(encode_hello(3, CLUSTER))
            assert await closed_by_peer(reader)
            writer.close()
            assert b.transport.refused_connections == 3
            # The certificate's own member is answered with the listener's hello.
            reader, writer = await raw_client(b.port, member_ssl(3))
            writer.write(encode_hello(3, CLUSTER))
            frames = FrameDecoder().feed(await reader.read(65536))
            assert frames[0][0] is FrameType.HELLO
            assert decode_hello(frames[0][1]).member_id == 2
            # ... and a message it sends as another member closes the connection.
            writer.write(encode_message(heartbeat(1, 2, 1)))
            assert await closed_by_peer(reader)
            writer.close()
            assert b.inbox == []
        finally:
            await b.close()

    asyncio.run(main())


def test_a_restarted_peer_is_reconnected_and_hears_it_was_lost() -> None:
    async def main() -> None:
        a, b = Member(1), Member(2)
        await b.listen()
        a.transport.set_peers({2: b.address})
        try:
            a.transport.send(heartbeat(1, 2, 1))  # queued while dialling, sent on connect
            await wait_for(lambda: len(b.inbox) == 1)
            port = b.port
            await b.close()
            await wait_for(lambda: a.lost == [2])
            await wait_for(lambda: not a.transport.stats()[2].connected)
            b = Member(2)
            await b.listen(port)
            await wait_for(lambda: a.transport.stats()[2].connected)
            a.transport.send(heartbeat(1, 2, 2))
            await wait_for(lambda: [m.commit for m in b.inbox] == [2])
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_a_peer_that_never_reads_does_not_hold_up_another() -> None:
    async def main() -> None:
        a = Member(1, queue_max=64, write_buffer_max=64 * 1024, write_timeout_s=60.0)
        b = Member(2)
        await b.listen()
        stalled: list[asyncio.StreamWriter] = []

        async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.readexactly(len(PREFACE)) == PREFACE
            writer.write(PREFACE)
            await writer.start_tls(member_ssl(3).server)
            writer.write(encode_hello(3, CLUSTER))
            stalled.append(writer)  # and never reads another byte

        server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        a.transport.set_peers({2: b.address, 3: f"127.0.0.1:{port}"})
        big = (Entry(1, 1, EntryKind.NORMAL, b"x" * 60_000),)
        try:
            await wait_for(lambda: all(s.connected for s in a.transport.stats().values()))
            n = 0
            # Fill member 3's socket buffers and queue until sends to it are dropped.
            while a.transport.stats()[3].dropped == 0:
                n += 1
                a.transport.send(
                    Message(MessageType.APP, to=3, frm=1, term=1, index=n, entries=big)
                )
                a.transport.send(heartbeat(1, 2, n))
                await asyncio.sleep(0)
                assert n < 100_000, "member 3's queue never filled"
            for k in range(n + 1, n + 101):
                a.transport.send(heartbeat(1, 2, k))
                if k % 10 == 0:
                    await asyncio.sleep(0)  # a turn's worth fits member 2's queue
            await wait_for(lambda: len(b.inbox) == n + 100)
            assert [m.commit for m in b.inbox] == list(range(1, n + 101))
            assert a.transport.stats()[2].dropped == 0
        finally:
            for writer in stalled:
                writer.transport.abort()
            await a.close()
            await b.close()
            server.close()

    asyncio.run(main())


def test_one_peer_port_serves_frames_and_grpc_callers_through_the_relay() -> None:
    """With frames the member's peer port is the frame listener (`serve_peers`); join
    services, promotion and members still on gRPC call it over gRPC, which it relays to the
    gRPC server on loopback, TLS untouched, where the same transport serves Raft streams."""

    async def main() -> None:
        leaf = pki.issue_member_cert(CA, "member-2", ["localhost"], ["127.0.0.1"], member_id=2)
        member = pki.MemberTls(CA.cert_pem, leaf.cert_pem, leaf.key_pem, dt.datetime.max, 2)
        got: list[Message] = []
        transport = make_transport(
            "frames", 2, CLUSTER, SystemClock(), member, reachable_window_s=5.0
        )
        assert isinstance(transport, FrameTransport)
        transport.bind(got.append)
        server = grpc.aio.server(options=server_options())
        transport.add_to_server(server)
        credentials = tls.member_server_credentials(member)

        def bind(address: str) -> int:
            port: int = server.add_secure_port(address, credentials)
            return port

        port = await serve_peers(server, transport, "127.0.0.1:0", bind)
        framed = Member(3)
        framed.transport.set_peers({2: f"127.0.0.1:{port}"})
        caller = pki.issue_member_cert(CA, "member-1", member_id=1)
        creds = tls.channel_credentials(CA.cert_pem, caller.cert_pem, caller.key_pem)
        try:
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
                stream = channel.stream_unary(
                    "/concord.v1.Raft/Stream",
                    request_serializer=pb.RaftBatch.SerializeToString,
                    response_deserializer=pb.RaftAck.FromString,
                )
                call = stream()
                await call.write(
                    pb.RaftBatch(
                        cluster_id=CLUSTER, sender=1, messages=[to_wire(heartbeat(1, 2, 7))]
                    )
                )
                await wait_for(lambda: len(got) == 1)
                await call.done_writing()
                await call
            framed.transport.send(heartbeat(3, 2, 8))
            await wait_for(lambda: len(got) == 2)
            assert [(m.frm, m.commit) for m in got] == [(1, 7), (3, 8)]
        finally:
            await framed.close()
            await transport.close()
            await server.stop(0)

    asyncio.run(main())


def test_without_tls_the_same_protocol_runs_in_the_clear() -> None:
    """--insecure demos: no certificates, so only the hello's ids are checked."""

    async def main() -> None:
        a = FrameTransport(1, CLUSTER, SystemClock(), backoff_initial_s=0.02)
        b = FrameTransport(2, CLUSTER, SystemClock(), backoff_initial_s=0.02)
        got: list[Message] = []
        b.bind(got.append)
        port = await b.listen("127.0.0.1:0")
        a.set_peers({2: f"127.0.0.1:{port}"})
        try:
            a.send(heartbeat(1, 2, 1))
            await wait_for(lambda: len(got) == 1)
            assert got[0].commit == 1
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())
