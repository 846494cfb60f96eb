"""A real 3-member cluster for the server tests: RaftLoops over the encrypted DiskWal in a tmp
dir, LoopbackTransport between them, and one grpc.aio server per member on 127.0.0.1 (an
ephemeral port), reached through the generated stubs over insecure channels.

Real (short) time: ticks of 10 ms, an election timeout of 100 ms. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.fsm import Applied, MemberUpsert, StateMachine
from coordinator.raft import ConfState, Snapshot, SnapshotMeta
from coordinator.runtime.clock import Clock, SystemClock
from coordinator.runtime.loop import LoopConfig, RaftLoop
from coordinator.runtime.transport import LoopbackTransport
from coordinator.server import RunningServer, ServiceConfig, start_server
from coordinator.storage import DiskWal, KeyStore

TICK_S = 0.01
ELECTION_TICKS = 10


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        # Members expose no change notification to tests; a short poll bounded by the timeout.
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


async def leader_among(
    candidates: Callable[[], Sequence[Member]], timeout_s: float = 10.0
) -> Member:
    """The first of `candidates()` seen leading, as the check itself saw it: a member looked
    up a loop turn after the wait may have stepped down already on a loaded machine."""
    found: list[Member] = []

    def leading() -> bool:
        found[:] = [m for m in candidates() if m.loop.is_leader]
        return bool(found)

    await wait_for(leading, timeout_s)
    return found[0]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Re-run an async check (e.g. an RPC) until it holds, bounded."""

    async def poll() -> None:
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


async def answers(stream: Any) -> pb.PipelineResponse:
    """The next Pipeline response that carries results (an empty one only acknowledges a
    batch still running), bounded."""
    while True:
        response = await asyncio.wait_for(stream.read(), 5)
        if response.results:
            return response


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded; an error was expected")


def trailing(err: grpc.aio.AioRpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ())}


class Client:
    """The generated stubs over one insecure channel."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.kv = pb_grpc.KVStub(self.channel)
        self.lease = pb_grpc.LeaseStub(self.channel)
        self.lock = pb_grpc.LockStub(self.channel)
        self.election = pb_grpc.ElectionStub(self.channel)
        self.seq = pb_grpc.SequenceStub(self.channel)
        self.watch = pb_grpc.WatchStub(self.channel)
        self.cluster = pb_grpc.ClusterStub(self.channel)
        self.pipeline = pb_grpc.PipelineStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


class Session:
    """A client session: one id, seq 1, 2, 3, ..."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.seq = 0

    def next(self) -> pb.Session:
        self.seq += 1
        return pb.Session(client_id=self.client_id, seq=self.seq)

    def same(self) -> pb.Session:
        return pb.Session(client_id=self.client_id, seq=self.seq)


class Member:
    def __init__(self, loop: RaftLoop, task: asyncio.Task[None], served: RunningServer) -> None:
        self.loop = loop
        self.task = task
        self.served = served
        self.client = Client(served.port)

    @property
    def id(self) -> int:
        return self.loop.cfg.id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.served.port}"


class Cluster:
    def __init__(
        self,
        root: Path,
        *,
        history_events_max: int = 10_000,
        service: ServiceConfig | None = None,
        credentials: grpc.ServerCredentials | None = None,
        snapshot_every_entries: int = 10_000,
    ) -> None:
        self.snapshot_every_entries = snapshot_every_entries
        self.root = root
        self.credentials = credentials
        """Server TLS for every member (None: insecure; `Member.client` is insecure anyway)."""
        self.net = LoopbackTransport()
        self.history_events_max = history_events_max
        self.service = service or ServiceConfig()
        self.members: dict[int, Member] = {}

    @classmethod
    async def start(cls, root: Path, **kwargs: Any) -> Cluster:
        c = cls(root, **kwargs)
        for i in (1, 2, 3):
            await c.start_member(i, ConfState(frozenset({1, 2, 3})))
        await c.leader()
        return c

    async def start_member(self, member: int, conf: ConfState) -> Member:
        data = self.root / f"m{member}"
        keys = KeyStore.create(data, autolock=False)
        wal = DiskWal.create(keys)
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, conf)))
        loop = RaftLoop(
            LoopConfig(
                id=member,
                tick_s=TICK_S,
                election_ticks=ELECTION_TICKS,
                lease_check_s=0.05,
                snapshot_every_entries=self.snapshot_every_entries,
            ),
            wal,
            self.net,
            StateMachine(history_events_max=self.history_events_max),
            self.clock_for(member),
            rng=random.Random(member),
        )
        self.net.register(member, loop.receive)
        task = asyncio.create_task(loop.run())
        served = await start_server(loop, "127.0.0.1:0", self.credentials, config=self.service)
        self.members[member] = m = Member(loop, task, served)
        return m

    def clock_for(self, member: int) -> Clock:
        """The clock a member's loop ticks by (a test may give one member its own)."""
        return SystemClock()

    def running(self) -> list[Member]:
        return list(self.members.values())

    def changes(self) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """`loop_changes` of every running member."""
        return loop_changes([m.loop for m in self.running()])

    async def leader(self) -> Member:
        # Looked for again after the wait: the wait resumes this coroutine a loop turn after
        # its check, time enough (on a loaded machine, at 10 ms ticks) for that leader to step
        # down; then wait for the next one rather than fail on finding none.
        while True:
            await wait_for(lambda: any(m.loop.is_leader for m in self.running()))
            leader = next((m for m in self.running() if m.loop.is_leader), None)
            if leader is not None:
                break
        # Every running member knows it (so followers redirect rather than wait).
        await wait_for(lambda: all(m.loop.leader == leader.id for m in self.running()))
        return leader

    async def follower(self) -> Member:
        leader = await self.leader()
        return next(m for m in self.running() if m is not leader)

    async def register_directory(self) -> None:
        """Record every member's URLs in the replicated member directory."""
        leader = await self.leader()
        for m in self.running():
            await leader.loop.propose(
                MemberUpsert(m.id, f"m{m.id}", f"http://127.0.0.1:{7000 + m.id}", m.url)
            )
        await wait_for(lambda: all(len(m.loop.fsm.members()) == 3 for m in self.running()))

    async def stop(self, member: int) -> None:
        m = self.members.pop(member)
        await m.client.close()
        await m.served.stop(None)
        m.loop.stop()
        await m.task
        m.loop.storage.close()  # type: ignore[attr-defined]
        self.net.members.pop(member, None)

    async def close(self) -> None:
        for member in list(self.members):
            await self.stop(member)


@contextlib.asynccontextmanager
async def loop_changes(loops: Sequence[RaftLoop]) -> AsyncIterator[asyncio.Event]:
    """An event set when any of `loops` reports a change (a leader change, an applied batch,
    a restore): what a caller told "try again" (UNAVAILABLE, a refused configuration change)
    waits for before it does, instead of sleeping. Enter it before the call, so none is
    missed."""
    seen = _Changed()
    for loop in loops:
        loop.add_observer(seen)
    try:
        yield seen.event
    finally:
        for loop in loops:
            loop.remove_observer(seen)


class _Changed:
    """A LoopObserver that only notes that something happened."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def on_applied(self, batch: Sequence[Applied]) -> None:
        self.event.set()

    def on_restored(self) -> None:
        self.event.set()

    def on_leader(self, leader: int) -> None:
        self.event.set()

    def on_stop(self) -> None:
        self.event.set()


def with_cluster(
    root: Path,
    scenario: Callable[[Cluster], Awaitable[None]],
    *,
    cluster: type[Cluster] = Cluster,
    **kwargs: Any,
) -> None:
    async def main() -> None:
        c = await cluster.start(root, **kwargs)
        try:
            await scenario(c)
        finally:
            await c.close()

    run(main())
