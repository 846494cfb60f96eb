"""GrpcTransport between in-process RaftLoops over real gRPC on loopback.

Real (short) time: 10 ms ticks. Every wait is a bounded wait for a condition, never a sleep
for timing; the bounds are generous so a loaded machine does not flake.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator.api.v1 import raft_pb2 as pb
from coordinator.api.v1 import raft_pb2_grpc as pb_grpc
from coordinator.fsm import Command, Put, StateMachine
from coordinator.raft import ConfState, Message, MessageType, RaftError, Snapshot, SnapshotMeta
from coordinator.runtime.clock import SystemClock
from coordinator.runtime.grpc_transport import (
    GrpcTransport,
    _Peer,
    channel_options,
    server_options,
)
from coordinator.runtime.loop import LoopConfig, RaftLoop
from coordinator.runtime.wire import to_wire
from coordinator.storage import DiskWal, KeyStore
from coordinator.testing.ports import free_ports

CLUSTER = "test-cluster"
raft_rpc: Any = pb_grpc  # the generated stubs are untyped


async def wait_for(cond: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async def poll() -> None:
        # Members expose no change notifications; a short poll bounded by the timeout.
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


def free_port() -> int:
    (port,) = free_ports(1)
    return port


class Node:
    """One member: DiskWal + RaftLoop + GrpcTransport + its own peer server."""

    def __init__(self, root: Path, member_id: int, cluster_id: str = CLUSTER) -> None:
        self.root = root
        self.id = member_id
        self.cluster_id = cluster_id
        self.port = 0
        self.loop: RaftLoop | None = None
        self.transport: GrpcTransport | None = None
        self.server: grpc.aio.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.wal: DiskWal | None = None

    async def start(self, port: int = 0) -> int:
        data = self.root / f"m{self.id}"
        if (data / "wal").exists():
            self.wal = DiskWal.open(KeyStore.open(data))
        else:
            self.wal = DiskWal.create(KeyStore.create(data, autolock=False))
            self.wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1, 2, 3})))))
        clock = SystemClock()
        self.transport = GrpcTransport(
            self.id, self.cluster_id, clock, backoff_initial_s=0.02, backoff_max_s=0.2
        )
        self.loop = RaftLoop(
            LoopConfig(id=self.id, tick_s=0.01, election_ticks=10, snapshot_every_entries=50),
            self.wal,
            self.transport,
            StateMachine(),
            clock,
            rng=random.Random(self.id),
        )
        self.transport.bind(self.loop.receive)
        self.server = grpc.aio.server(options=server_options())
        self.transport.add_to_server(self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, "could not bind"
        await self.server.start()
        return self.port

    def run(self, peers: dict[int, str]) -> None:
        assert self.transport is not None and self.loop is not None
        self.transport.set_peers(peers)
        self.transport.set_voters(frozenset({1, 2, 3}))
        self.task = asyncio.create_task(self.loop.run())

    async def stop(self) -> None:
        assert self.loop is not None and self.server is not None
        assert self.transport is not None and self.wal is not None
        await self.server.stop(0)
        self.loop.stop()
        if self.task is not None:
            await self.task
        await self.transport.close()
        self.wal.close()
        self.task = None


class Cluster:
    def __init__(self, root: Path) -> None:
        self.nodes = {i: Node(root, i) for i in (1, 2, 3)}

    def addresses(self) -> dict[int, str]:
        return {i: f"127.0.0.1:{n.port}" for i, n in self.nodes.items()}

    async def start(self) -> None:
        for n in self.nodes.values():
            await n.start()
        for n in self.nodes.values():
            n.run(self.addresses())

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.task is not None]

    def loops(self) -> list[RaftLoop]:
        return [n.loop for n in self.running() if n.loop is not None]

    async def leader(self) -> Node:
        def one_leader() -> bool:
            return sum(loop.is_leader for loop in self.loops()) == 1

        # Looked for again after the wait, which resumes this coroutine a loop turn after its
        # check: time enough on a loaded machine for that leader to step down.
        while True:
            await wait_for(one_leader)
            found = [n for n in self.running() if n.loop is not None and n.loop.is_leader]
            if len(found) == 1:
                return found[0]

    async def propose(self, command: Command) -> None:
        """Propose through whoever leads, retrying if leadership moves meanwhile (10 ms
        ticks on a loaded machine can cost a leader its term). Puts are idempotent."""

        async def attempt() -> None:
            while True:
                leader = await self.leader()
                assert leader.loop is not None
                try:
                    async with asyncio.timeout(2):
                        await leader.loop.propose(command)
                    return
                except (RaftError, TimeoutError):
                    continue

        await asyncio.wait_for(attempt(), 30)

    async def close(self) -> None:
        for n in self.running():
            await n.stop()


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_three_members_elect_a_leader_and_commit_over_grpc(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = Cluster(tmp_path)
        await c.start()
        try:
            leader = await c.leader()
            assert leader.loop is not None and leader.transport is not None
            for i in range(30):
                await c.propose(Put(b"k%d" % i, b"v%d" % i))
            leader = await c.leader()
            assert leader.loop is not None and leader.transport is not None
            target = leader.loop.fsm.applied_index
            await wait_for(lambda: all(lp.fsm.applied_index >= target for lp in c.loops()))
            for lp in c.loops():
                kv = lp.fsm.get(b"k29")
                assert kv is not None and kv.value == b"v29"
            # The leader hears from both followers and measures round trips to them.
            lt = leader.transport

            def all_measured() -> bool:
                return all(
                    s.connected and s.reachable and s.round_trip_s is not None
                    for s in lt.stats().values()
                )

            await wait_for(all_measured)
            stats = lt.stats()
            assert set(stats) == set(c.nodes) - {leader.id}
            for s in stats.values():
                assert s.sent > 0 and s.received > 0
                assert s.round_trip_s is not None and 0 < s.round_trip_s < 5
        finally:
            await c.close()

    run(scenario())


def test_a_stopped_peer_is_dropped_and_catches_up_when_it_returns(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = Cluster(tmp_path)
        await c.start()
        try:
            leader = await c.leader()
            assert leader.loop is not None and leader.transport is not None
            await c.propose(Put(b"before", b"1"))
            down = next(n for n in c.running() if n is not leader)
            port = down.port
            await down.stop()
            # The leader keeps committing with the remaining majority; what it sends the
            # stopped peer is dropped, never queued without bound, and the loop never blocks.
            for i in range(80):
                await c.propose(Put(b"while-down-%d" % i, b"x"))
            leader = await c.leader()
            assert leader.loop is not None and leader.transport is not None
            lt = leader.transport
            await wait_for(lambda: lt.stats()[down.id].dropped > 0)
            st = lt.stats()[down.id]
            assert not st.connected and st.last_error  # e.g. "UNAVAILABLE: failed to connect"
            # It comes back on the same address and catches up (by entries or by snapshot:
            # the leader snapshots every 50 entries).
            await down.start(port)
            down.run(c.addresses())
            target = leader.loop.fsm.applied_index
            assert down.loop is not None
            back = down.loop
            await wait_for(lambda: back.fsm.applied_index >= target)
            kv = back.fsm.get(b"while-down-79")
            assert kv is not None and kv.value == b"x"
            await wait_for(lambda: lt.stats()[down.id].connected)
            await wait_for(lambda: lt.reachable(down.id))
        finally:
            await c.close()

    run(scenario())


def _heartbeat(frm: int, to: int) -> Message:
    return Message(MessageType.HEARTBEAT, to=to, frm=frm, term=1)


def test_a_peer_of_another_cluster_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        got: list[Message] = []
        clock = SystemClock()
        receiver = GrpcTransport(1, "alpha", clock)
        receiver.bind(got.append)
        server = grpc.aio.server(options=server_options())
        receiver.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        sender = GrpcTransport(2, "beta", clock, backoff_initial_s=0.02, backoff_max_s=0.1)
        try:
            sender.add_peer(1, f"127.0.0.1:{port}")
            # Keep sending (as Raft would) until the sender learns it was refused. A
            # transient transport error may come first on a loaded machine (gRPC's own
            # "INTERNAL: Internal error from Core" while the stream is torn down): the refusal
            # must follow, and it is what the sender keeps.
            seen: list[str] = []

            async def keep_sending() -> None:
                while not sender.stats()[1].last_error.startswith("PERMISSION_DENIED"):
                    err = sender.stats()[1].last_error
                    if err and err not in seen:
                        seen.append(err)
                    sender.send(_heartbeat(2, 1))
                    await asyncio.sleep(0.01)

            try:
                await asyncio.wait_for(keep_sending(), 10)
            except TimeoutError:
                pytest.fail(f"never refused; errors seen: {seen}")
            err = sender.stats()[1].last_error
            assert "'alpha'" in err and "'beta'" in err
            assert got == []

            # The same from a bare gRPC client: the status and message a person reads.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = pb_grpc.RaftStub(channel).Stream()
                await call.write(pb.RaftBatch(cluster_id="beta"))
                await call.done_writing()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await asyncio.wait_for(call, 10)
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "cluster id mismatch" in (info.value.details() or "")
            assert got == []
        finally:
            await sender.close()
            await server.stop(0)

    run(scenario())


def test_malformed_and_misaddressed_messages_are_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        got: list[Message] = []
        receiver = GrpcTransport(1, CLUSTER, SystemClock())
        receiver.add_peer(2, "127.0.0.1:1")  # known, so its traffic is counted
        receiver.bind(got.append)
        server = grpc.aio.server(options=server_options())
        receiver.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            bad = pb.RaftMessage(type=pb.HEARTBEAT, to=1, term=1)  # no sender
            elsewhere = to_wire(_heartbeat(2, 3))
            good = to_wire(_heartbeat(2, 1))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = pb_grpc.RaftStub(channel).Stream()
                batch = pb.RaftBatch(cluster_id=CLUSTER, messages=[bad, elsewhere, good])
                await call.write(batch)
                await call.done_writing()
                assert isinstance(await asyncio.wait_for(call, 10), pb.RaftAck)
            assert got == [_heartbeat(2, 1)]
            assert receiver.stats()[2].received == 1
            assert receiver.reachable(2)
        finally:
            await receiver.close()
            await server.stop(0)

    run(scenario())


def test_a_peer_that_comes_back_is_dialled_at_once_when_it_says_hello() -> None:
    """A member whose stream to a peer failed waits out its backoff before dialling again;
    a peer that comes back opens its own stream with a hello, and is dialled at once."""

    async def scenario() -> None:
        clock = SystemClock()
        got: list[Message] = []
        a = GrpcTransport(1, CLUSTER, clock, backoff_initial_s=60.0, backoff_max_s=60.0)
        a_server = grpc.aio.server(options=server_options())
        a.add_to_server(a_server)
        a_port = a_server.add_insecure_port("127.0.0.1:0")
        await a_server.start()
        b = GrpcTransport(2, CLUSTER, clock)
        b.bind(got.append)
        b_server = grpc.aio.server(options=server_options())
        b.add_to_server(b_server)
        b_port = free_port()
        try:
            a.add_peer(2, f"127.0.0.1:{b_port}")  # nobody listens there yet
            await wait_for(lambda: a.stats()[2].last_error != "")  # now waiting 30-60 s
            assert b_server.add_insecure_port(f"127.0.0.1:{b_port}") == b_port
            await b_server.start()
            b.add_peer(1, f"127.0.0.1:{a_port}")
            await wait_for(lambda: a.stats()[2].connected, timeout_s=10.0)
            a.send(_heartbeat(1, 2))
            await wait_for(lambda: got == [_heartbeat(1, 2)], timeout_s=10.0)
        finally:
            await a.close()
            await b.close()
            await a_server.stop(0)
            await b_server.stop(0)

    run(scenario())


def test_a_hello_that_came_while_a_failure_was_handled_cuts_the_backoff_short() -> None:
    """After a failed attempt the peer task logs the failure and closes the channel (both
    await) before it backs off; a hello from the peer in that gap has set `wake` already.
    The backoff must honour it, not clear it: it used to, and the hello test above then
    waited out its 30-60 s backoff about one run in eight."""

    async def scenario() -> None:
        peer = _Peer(2, "127.0.0.1:1", queue_max=1)
        peer.wake.set()  # the hello, heard before the backoff began
        await asyncio.wait_for(GrpcTransport._back_off(peer, 60.0), 5)

    run(scenario())


def test_a_fresh_peer_channel_dials_afresh_right_after_a_refusal() -> None:
    """The transport redials on a fresh channel so that gRPC's own reconnect backoff never
    adds to its own. Channels to one address share gRPC's global subchannel unless told
    otherwise, and that one remembers the refusal for a second: the 'fresh' channel then
    fails at once although the peer now listens. This is what made the hello test above
    fail about one run in eight."""

    async def scenario() -> None:
        port = free_port()
        address = f"127.0.0.1:{port}"
        hello = pb.RaftBatch(cluster_id=CLUSTER, sender=1)
        refused = grpc.aio.insecure_channel(address, options=channel_options())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raft_rpc.RaftStub(refused).Stream().write(hello)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        await refused.close(None)

        server = grpc.aio.server(options=server_options())
        GrpcTransport(2, CLUSTER, SystemClock()).add_to_server(server)
        assert server.add_insecure_port(address) == port
        await server.start()
        fresh = grpc.aio.insecure_channel(address, options=channel_options())
        try:
            call = raft_rpc.RaftStub(fresh).Stream()
            await asyncio.wait_for(call.write(hello), 10)  # raised UNAVAILABLE at once before
            await call.done_writing()
            assert isinstance(await asyncio.wait_for(call, 10), pb.RaftAck)
        finally:
            await fresh.close(None)
            await server.stop(0)

    run(scenario())


def test_send_never_blocks_and_drops_when_a_queue_is_full() -> None:
    async def scenario() -> None:
        t = GrpcTransport(1, CLUSTER, SystemClock(), queue_max=8)
        try:
            t.add_peer(2, f"127.0.0.1:{free_port()}")  # nobody listens there
            for _ in range(100):
                t.send(_heartbeat(1, 2))  # synchronous: it returns at once, never raises
            assert t.stats()[2].dropped >= 92
            t.send(_heartbeat(1, 9))  # not a peer
            assert t.dropped_unknown_peer == 1
        finally:
            await t.close()

    run(scenario())


def test_peers_are_added_changed_and_removed_at_run_time() -> None:
    async def scenario() -> None:
        got: list[Message] = []
        receiver = GrpcTransport(2, CLUSTER, SystemClock())
        receiver.bind(got.append)
        server = grpc.aio.server(options=server_options())
        receiver.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        t = GrpcTransport(1, CLUSTER, SystemClock(), backoff_initial_s=0.02, backoff_max_s=0.1)
        try:
            # Start with a wrong address for peer 2, then correct it (a rescheduled pod).
            t.set_peers({1: "ignored:1", 2: f"127.0.0.1:{free_port()}", 3: "127.0.0.1:1"})
            assert t.peers().keys() == {2, 3}
            t.set_peers({2: f"127.0.0.1:{port}", 3: "127.0.0.1:1"})

            async def deliver_one() -> None:
                while not got:
                    t.send(_heartbeat(1, 2))
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(deliver_one(), 10)
            assert got[0] == _heartbeat(1, 2)
            t.set_peers({2: f"127.0.0.1:{port}"})
            assert t.peers() == {2: f"127.0.0.1:{port}"}
            t.send(_heartbeat(1, 3))
            assert t.dropped_unknown_peer == 1
            with pytest.raises(ValueError, match="this member"):
                t.add_peer(1, "127.0.0.1:1")
        finally:
            await t.close()
            await receiver.close()
            await server.stop(0)

    run(scenario())


def test_appends_go_at_once_to_the_lowest_healthy_voters_a_quorum_needs() -> None:
    async def scenario() -> None:
        t = GrpcTransport(3, CLUSTER, SystemClock(), prompt_window_s=0.5)
        try:
            t.set_peers({i: f"127.0.0.1:{free_port()}" for i in (1, 2, 4, 5)})
            assert t.prompt() == {1, 2, 4, 5}  # voters unknown: nobody waits
            t.set_voters(frozenset({1, 2, 3, 4, 5}))
            assert t.prompt() == {1, 2, 4, 5}  # nobody healthy yet: nobody waits
            for i in (1, 2, 4, 5):
                t._peers[i].connected = True  # as after a write that went through
                t.deliver(_heartbeat(i, 3))
            assert t.prompt() == {1, 2}  # two followers make a majority of five with us
            t._peers[1].connected = False  # its stream broke
            assert t.prompt() == {2, 4}
            t._peers[2].last_heard_s = t.clock.monotonic_s() - 1.0  # silent (paused?)
            assert t.prompt() == {4, 5}
            t.set_voters(frozenset({1, 2, 3}))  # 4 and 5 are learners now
            assert t.prompt() == {1, 2, 4, 5}  # 1 down, 2 silent: too few, nobody waits
            t._peers[2].last_heard_s = t.clock.monotonic_s()
            assert t.prompt() == {2}  # a majority with 2; the learners and 1 wait
        finally:
            await t.close()
        off = GrpcTransport(1, CLUSTER, SystemClock(), append_lag_s=0)
        off.set_voters(frozenset({1, 2, 3}))
        assert off.prompt() == frozenset()  # no peers; and no lag at all when off
        await off.close()

    run(scenario())


def test_a_lagged_follower_keeps_up_and_takes_over_when_the_prompt_one_stops(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        c = Cluster(tmp_path)
        await c.start()
        try:
            leader = await c.leader()
            assert leader.transport is not None
            lt = leader.transport
            await wait_for(lambda: len(lt.prompt()) == 1)
            (prompt,) = lt.prompt()
            lagged = next(i for i in c.nodes if i not in (leader.id, prompt))
            assert prompt < lagged  # the lowest id first (see the module docstring)
            for i in range(40):
                await c.propose(Put(b"k%d" % i, b"v"))
            # The lagged follower receives every entry, batched.
            target = leader.loop.fsm.applied_index if leader.loop else 0
            lagged_loop = c.nodes[lagged].loop
            assert lagged_loop is not None
            await wait_for(lambda: lagged_loop.fsm.applied_index >= target)
            # Stop the prompt follower: commits go on through the lagged one, which becomes
            # the prompt one once the leader sees the stream to the other break.
            await c.nodes[prompt].stop()
            for i in range(20):
                await c.propose(Put(b"after-%d" % i, b"v"))
            leader = await c.leader()
            assert leader.transport is not None
            lt = leader.transport
            await wait_for(lambda: lt.prompt() == {lagged} or leader.id == lagged)
            await wait_for(lambda: lagged_loop.fsm.get(b"after-19") is not None)
        finally:
            await c.close()

    run(scenario())
