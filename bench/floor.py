"""The floor under a sequential write for any Python grpc.aio design: a bare relay.

Three processes on loopback with mutual TLS (certificates from `coordinator.pki`),
shaped like a Raft write and doing nothing else: the client sends a 64-byte value in a unary
call; the "leader" appends it to a file and fdatasyncs on its disk thread while it writes it
on a client stream to each "follower"; a follower appends and fdatasyncs, then acknowledges
on its own client stream back (as Concord's peers do); the leader answers once its own fsync
and one follower's acknowledgement are in (a majority of three). No log, no state machine,
no sessions, no encryption at rest: whatever Concord's sequential write costs above this
relay is its own, and the relay's own figure is what the event loops, the gRPC writes and
the thread hand-offs cost on this machine.

`make bench` measures it after the three systems (results.json "reference", a line under the
table); `python -m bench floor [--writes N]` measures it alone and prints the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from coordinator import pki
from coordinator.runtime import tls
from coordinator.testing.ports import free_ports

from .procs import Supervisor

_METHOD = "/bench.floor.Relay/"
VALUE = b"v" * 64


def _same(data: bytes) -> bytes:
    return data


def _credentials(certs: Path) -> tuple[grpc.ServerCredentials, grpc.ChannelCredentials]:
    ca, cert, key = ((certs / n).read_bytes() for n in ("ca.pem", "member.pem", "member.key"))
    return tls.server_credentials(ca, cert, key), tls.channel_credentials(ca, cert, key)


def write_certs(where: Path) -> None:
    ca = pki.create_ca("bench-floor")
    member = pki.issue_member_cert(ca, "relay")
    (where / "ca.pem").write_bytes(ca.cert_pem)
    (where / "member.pem").write_bytes(member.cert_pem)
    (where / "member.key").write_bytes(member.key_pem)


class _Log:
    """An append-only file synced after every record, on one disk thread."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._disk = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def _append(self, record: bytes) -> None:
        os.write(self._fd, record)
        os.fdatasync(self._fd)

    async def append(self, record: bytes) -> None:
        await asyncio.wrap_future(self._disk.submit(self._append, record))


async def _serve(
    handlers: dict[str, grpc.RpcMethodHandler], port: int, creds: grpc.ServerCredentials
) -> grpc.aio.Server:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.floor.Relay", handlers),)
    )
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    await server.start()
    return server


async def follower(port: int, leader_port: int, data: Path, certs: Path) -> None:
    server_creds, channel_creds = _credentials(certs)
    log = _Log(data / f"follower-{port}.log")
    acks: asyncio.Queue[bytes] = asyncio.Queue()

    async def stream(requests: AsyncIterator[bytes], _: Any) -> bytes:  # noqa: ANN401
        async for record in requests:
            await log.append(record)
            acks.put_nowait(record[:8])
        return b""

    server = await _serve(
        {"Stream": grpc.stream_unary_rpc_method_handler(stream, _same, _same)}, port, server_creds
    )
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{leader_port}", channel_creds) as ch:
            call = ch.stream_unary(_METHOD + "Ack", _same, _same)(wait_for_ready=True)
            while True:
                await call.write(await acks.get())
    finally:
        await server.stop(None)


async def leader(port: int, follower_ports: list[int], data: Path, certs: Path) -> None:
    server_creds, channel_creds = _credentials(certs)
    log = _Log(data / "leader.log")
    loop = asyncio.get_running_loop()
    waiting: dict[bytes, asyncio.Future[None]] = {}
    outboxes: list[asyncio.Queue[bytes]] = [asyncio.Queue() for _ in follower_ports]
    seq = 0

    async def ack(requests: AsyncIterator[bytes], _: Any) -> bytes:  # noqa: ANN401
        async for tag in requests:
            fut = waiting.get(tag)
            if fut is not None and not fut.done():
                fut.set_result(None)
        return b""

    async def put(value: bytes, _: Any) -> bytes:  # noqa: ANN401
        nonlocal seq
        seq += 1
        tag = seq.to_bytes(8, "big")
        acked = waiting[tag] = loop.create_future()
        record = tag + value
        for outbox in outboxes:
            outbox.put_nowait(record)
        try:
            await log.append(record)
            await acked
        finally:
            del waiting[tag]
        return b"ok"

    async def peer(follower_port: int, outbox: asyncio.Queue[bytes]) -> None:
        async with grpc.aio.secure_channel(f"127.0.0.1:{follower_port}", channel_creds) as ch:
            call = ch.stream_unary(_METHOD + "Stream", _same, _same)(wait_for_ready=True)
            while True:
                await call.write(await outbox.get())

    peers = [
        asyncio.ensure_future(peer(p, q)) for p, q in zip(follower_ports, outboxes, strict=True)
    ]
    server = await _serve(
        {
            "Put": grpc.unary_unary_rpc_method_handler(put, _same, _same),
            "Ack": grpc.stream_unary_rpc_method_handler(ack, _same, _same),
        },
        port,
        server_creds,
    )
    await server.wait_for_termination()
    for task in peers:
        task.cancel()


async def sequential_writes(port: int, certs: Path, writes: int, warmup: int) -> list[float]:
    """Latencies (s) of `writes` sequential puts after `warmup` unmeasured ones."""
    _, channel_creds = _credentials(certs)
    async with grpc.aio.secure_channel(f"localhost:{port}", channel_creds) as channel:
        put = channel.unary_unary(_METHOD + "Put", _same, _same)
        for _ in range(warmup):
            await put(VALUE, timeout=30.0, wait_for_ready=True)
        latencies = []
        for _ in range(writes):
            started = time.perf_counter()
            await put(VALUE, timeout=5.0)
            latencies.append(time.perf_counter() - started)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "writes": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1e3, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 3),
        "per_s": round(len(ordered) / sum(ordered), 1),
    }


async def measure(writes: int = 2000, warmup: int = 300) -> dict[str, Any]:
    """Start the relay's three processes, time `writes` sequential puts, stop them."""
    sup = Supervisor()
    with tempfile.TemporaryDirectory(prefix="bench-floor-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        write_certs(root)
        lport, f1, f2 = free_ports(3)
        me = [sys.executable, "-m", "bench.floor", "node"]
        common = ["--data", str(root), "--certs", str(root)]
        try:
            for fport in (f1, f2):
                sup.spawn(
                    [*me, "follower", str(fport), str(lport), *common],
                    log_path=root / f"f{fport}.log",
                )
            sup.spawn(
                [*me, "leader", str(lport), str(f1), str(f2), *common],
                log_path=root / "leader.log.txt",
            )
            latencies = await asyncio.wait_for(
                sequential_writes(lport, root, writes, warmup), timeout=120.0
            )
        finally:
            sup.close()
    return {
        "system": "grpc-relay-floor",
        "figure": "write",
        "concurrency": 1,
        **summary(latencies),
        "what": "bare grpc.aio relay: unary put -> leader fsync + client streams to 2 "
        "followers (fsync, ack on their own stream); mutual TLS; no Raft, no state machine",
    }


def _node(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor node")
    p.add_argument("role", choices=("leader", "follower"))
    p.add_argument("ports", nargs="+", type=int)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--certs", type=Path, required=True)
    a = p.parse_args(argv)
    if a.role == "leader":
        asyncio.run(leader(a.ports[0], a.ports[1:], a.data, a.certs))
    else:
        asyncio.run(follower(a.ports[0], a.ports[1], a.data, a.certs))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["node"]:
        _node(args[1:])
        return
    p = argparse.ArgumentParser(prog="python -m bench floor")
    p.add_argument("--writes", type=int, default=2000)
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternate the grpc.aio relay and its framed twin this many times each",
    )
    a = p.parse_args(args)
    from . import floor_frames  # noqa: PLC0415 (its own processes import this module)

    runs: dict[str, list[dict[str, Any]]] = {"grpc": [], "frames": []}
    for _ in range(a.rounds):
        for kind, run in (("grpc", measure), ("frames", floor_frames.measure)):
            result = asyncio.run(run(a.writes))
            runs[kind].append(result)
            print(f"{result['system']}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
                  f"over {result['writes']} sequential writes")  # fmt: skip
            print(json.dumps(result))
    print_medians(runs, a.rounds)


def print_medians(runs: dict[str, list[dict[str, Any]]], rounds: int) -> None:
    """The median p50 and p99 over the rounds of the "grpc" and "frames" runs, and frames/grpc."""
    p50 = {k: statistics.median(r["p50_ms"] for r in v) for k, v in runs.items()}
    p99 = {k: statistics.median(r["p99_ms"] for r in v) for k, v in runs.items()}
    print(f"median of {rounds} rounds: p50 grpc {p50['grpc']} ms, frames {p50['frames']} ms "
          f"(frames/grpc {p50['frames'] / p50['grpc']:.2f}); p99 grpc {p99['grpc']} ms, "
          f"frames {p99['frames']} ms (frames/grpc {p99['frames'] / p99['grpc']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
