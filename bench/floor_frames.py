"""The relay floor's twin over the framed peer transport (`runtime/frame_transport.py`).

Same shape as `bench/floor.py`, so that the two figures differ only by the peer hops: the
client's unary put is gRPC (as Concord's client API is); the leader sends the record to both
followers as a Raft APP through a real `FrameTransport` while it fdatasyncs it on its disk
thread; each follower fdatasyncs and answers with an APP_RESP through its own
`FrameTransport`; the leader answers once its own fsync and one acknowledgement are in.
Mutual TLS everywhere, certificates bound to member ids 1-3.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from coordinator import pki
from coordinator.raft import Entry, EntryKind, Message, MessageType
from coordinator.runtime.clock import SystemClock
from coordinator.runtime.frame_conn import PeerSsl, peer_ssl
from coordinator.runtime.frame_transport import FrameTransport
from coordinator.testing.ports import free_ports

from .floor import _credentials, _Log, _same, sequential_writes, summary
from .procs import Supervisor

CLUSTER = "bench-floor"


def write_certs(where: Path) -> None:
    """The client's certificate (the relay's, unbound) and one bound certificate per member."""
    ca = pki.create_ca(CLUSTER)
    relay = pki.issue_member_cert(ca, "relay", ["localhost"])
    (where / "ca.pem").write_bytes(ca.cert_pem)
    (where / "member.pem").write_bytes(relay.cert_pem)
    (where / "member.key").write_bytes(relay.key_pem)
    for i in (1, 2, 3):
        cert = pki.issue_member_cert(ca, f"member-{i}", member_id=i)
        (where / f"m{i}.pem").write_bytes(cert.cert_pem)
        (where / f"m{i}.key").write_bytes(cert.key_pem)


def _ssl(certs: Path, member_id: int) -> PeerSsl:
    read = (certs / "ca.pem").read_bytes
    member = pki.MemberTls(
        read(),
        (certs / f"m{member_id}.pem").read_bytes(),
        (certs / f"m{member_id}.key").read_bytes(),
        dt.datetime.max,
        member_id,
    )
    return peer_ssl(member)


def _transport(member_id: int, certs: Path, peers: dict[int, int]) -> FrameTransport:
    t = FrameTransport(
        member_id, CLUSTER, SystemClock(), ssl_contexts=_ssl(certs, member_id), append_lag_s=0
    )
    t.set_peers({i: f"127.0.0.1:{p}" for i, p in peers.items()})
    return t


async def follower(member_id: int, port: int, leader_port: int, data: Path, certs: Path) -> None:
    log = _Log(data / f"follower-{member_id}.log")
    appends: asyncio.Queue[Message] = asyncio.Queue()
    transport = _transport(member_id, certs, {1: leader_port})
    transport.bind(appends.put_nowait)
    await transport.listen(f"127.0.0.1:{port}")
    while True:
        app = await appends.get()
        await log.append(app.entries[0].data)
        transport.send(Message(MessageType.APP_RESP, to=1, frm=member_id, term=1, index=app.index))


async def leader(
    port: int, raft_port: int, followers: dict[int, int], data: Path, certs: Path
) -> None:
    server_creds, _ = _credentials(certs)
    log = _Log(data / "leader.log")
    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[None]] = {}
    transport = _transport(1, certs, followers)

    def receive(msg: Message) -> None:
        fut = waiting.get(msg.index)
        if fut is not None and not fut.done():
            fut.set_result(None)

    transport.bind(receive)
    await transport.listen(f"127.0.0.1:{raft_port}")
    seq = 0

    async def put(value: bytes, _: Any) -> bytes:  # noqa: ANN401
        nonlocal seq
        seq += 1
        index = seq
        acked = waiting[index] = loop.create_future()
        record = index.to_bytes(8, "big") + value
        entries = (Entry(index, 1, EntryKind.NORMAL, record),)
        for f in followers:
            transport.send(
                Message(MessageType.APP, to=f, frm=1, term=1, index=index, entries=entries)
            )
        try:
            await log.append(record)
            await acked
        finally:
            del waiting[index]
        return b"ok"

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.floor.Relay", {"Put": grpc.unary_unary_rpc_method_handler(put, _same, _same)}
            ),
        )
    )
    server.add_secure_port(f"127.0.0.1:{port}", server_creds)
    await server.start()
    await server.wait_for_termination()


async def measure(writes: int = 2000, warmup: int = 300) -> dict[str, Any]:
    """Start the twin's three processes, time `writes` sequential puts, stop them."""
    sup = Supervisor()
    with tempfile.TemporaryDirectory(prefix="bench-floor-frames-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        write_certs(root)
        lport, lraft, f2, f3 = free_ports(4)
        me = [sys.executable, "-m", "bench.floor_frames", "node"]
        common = ["--data", str(root), "--certs", str(root)]
        try:
            for i, fport in ((2, f2), (3, f3)):
                sup.spawn(
                    [*me, "follower", str(i), str(fport), str(lraft), *common],
                    log_path=root / f"f{i}.log.txt",
                )
            sup.spawn(
                [*me, "leader", "1", str(lport), str(lraft), str(f2), str(f3), *common],
                log_path=root / "leader.log.txt",
            )
            latencies = await asyncio.wait_for(
                sequential_writes(lport, root, writes, warmup), timeout=120.0
            )
        finally:
            sup.close()
    return {
        "system": "frames-relay-floor",
        "figure": "write",
        "concurrency": 1,
        **summary(latencies),
        "what": "the relay floor with its peer hops over FrameTransport (Raft APP / APP_RESP "
        "frames, mutual TLS); the client's put is still gRPC",
    }


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor_frames node")
    p.add_argument("role", choices=("leader", "follower"))
    p.add_argument("id", type=int)
    p.add_argument("ports", nargs="+", type=int)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--certs", type=Path, required=True)
    a = p.parse_args(argv)
    if a.role == "leader":
        port, raft_port, f2, f3 = a.ports
        asyncio.run(leader(port, raft_port, {2: f2, 3: f3}, a.data, a.certs))
    else:
        asyncio.run(follower(a.id, a.ports[0], a.ports[1], a.data, a.certs))


if __name__ == "__main__" and sys.argv[1:2] == ["node"]:
    main(sys.argv[2:])
