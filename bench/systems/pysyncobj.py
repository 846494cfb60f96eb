"""PySyncObj: three processes of `bench.systems.pysyncobj_node` (PySyncObj from PyPI, pinned in
the `bench` extra), each a SyncObj with its journal and dump on disk and a gRPC front.

What it has and lacks, as the table says:

- write: `ReplDict.set`; bulk load: `ReplDict.update` (one log entry per batch);
- sequence: `ReplCounter.inc`;
- locks: the replicated lock state of `ReplLockManager`, a *try*-lock: there is no wait
  queue, so a task that is refused asks again at once, and every attempt is a log entry
  (the figure counts completed acquire+release cycles; the JSON also has the attempts);
- no compare-and-swap (ReplDict has set, setdefault, update, pop; nothing conditional on a
  value), no linearizable read (reads are of the local copy; there is no ReadIndex or lease
  read), no fsync (see the node module).

The fronts are plaintext gRPC: PySyncObj's only transport security is a shared password
(symmetric encryption of its own peer protocol), a different thing from TLS, so it runs as it
ships, without one.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc

from coordinator.testing.ports import free_ports

from ..procs import Supervisor, wait_until
from ..protos import pysyncobj_front_pb2 as pb
from ..protos import pysyncobj_front_pb2_grpc as front_grpc
from .base import Cluster, MemberInfo, Session, Unsupported, poll_leader

REPO = Path(__file__).resolve().parents[2]
_rpc: Any = front_grpc
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


@dataclass
class Node:
    id: int
    raft_port: int
    front_port: int
    data_dir: Path
    log_path: Path
    popen: Any = None

    @property
    def raft_address(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Connection:
    channel: grpc.aio.Channel
    timeout_s: float


class PySyncObjSession(Session):
    def __init__(self, conn: Connection, owner: str, *, owns: bool) -> None:
        self.channel = conn.channel
        self.stub = _rpc.NodeStub(conn.channel)
        self.owner = owner
        self.timeout_s = conn.timeout_s
        self.owns = owns

    async def warm(self) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), 10.0)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.stub.Put(pb.PutRequest(key=key, value=value), timeout=self.timeout_s)

    async def lock_cycle(self, name: str) -> int:
        req = pb.LockRequest(name=name, owner=self.owner)
        tries = 0
        while True:
            tries += 1
            resp = await self.stub.TryLock(req, timeout=self.timeout_s)
            if resp.acquired:
                break
        await self.stub.Unlock(req, timeout=self.timeout_s)
        return tries

    async def seq_next(self, name: str) -> tuple[int, int]:
        return int((await self.stub.Next(pb.NextRequest(), timeout=self.timeout_s)).value), 1

    async def read(self, key: bytes) -> bytes | None:
        raise Unsupported(PySyncObjCluster.unsupported["read"])

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        req = pb.PutManyRequest(keys=[k for k, _ in items], values=[v for _, v in items])
        await self.stub.PutMany(req, timeout=self.timeout_s)

    async def close(self) -> None:
        if self.owns:
            await self.channel.close()


class PySyncObjCluster(Cluster):
    name = "pysyncobj"
    unsupported = {  # noqa: RUF012
        "cas": "no compare-and-swap (ReplDict offers set, setdefault, update, pop)",
        "read": "no linearizable read (ReplDict.get reads the local copy; no ReadIndex)",
    }
    batch_max = 128  # the same batch as the others (PySyncObj itself has no limit)

    def __init__(self, root: Path, supervisor: Supervisor, *, batch: bool = True) -> None:
        super().__init__(root, supervisor)
        self.batch = batch
        self.nodes: dict[int, Node] = {}
        self._owner_seq = 0
        self._load_done_wall = 0.0
        self._dumps_after_load: set[float] = set()
        self._dump_running_at_load_end: dict[int, bool] = {}

    def describe(self) -> dict[str, Any]:
        return {
            "version": version("pysyncobj"),
            "obtained": "PyPI (the bench extra in pyproject.toml)",
            "settings": {
                "members": 3,
                "tls": "none (PySyncObj has only a shared-password encryption of its own)",
                "fsync": "none: PySyncObj cannot fsync (mmap journal, never msync'ed)",
                "journal": "journalFile + fullDumpFile on disk",
                "election_timeout_s": "0.4-1.4 (default)",
                "append_entries": "batched (default appendEntriesUseBatch=True)"
                if self.batch
                else "unbatched (appendEntriesUseBatch=False, not the default)",
                "front": "grpc.aio in the node process, plaintext",
                "locks": "try-lock, retried at once when refused (no wait queue)",
            },
        }

    async def start(self) -> None:
        ports = free_ports(6)
        for i in (1, 2, 3):
            raft, front = ports[2 * (i - 1) : 2 * i]
            self.nodes[i] = Node(
                i, raft, front, self.root / f"data-{i}", self.root / f"pysyncobj-{i}.log"
            )
        for i in self.nodes:
            self._spawn(i)
        await self.wait_all_ready(timeout_s=60)
        await self.leader()

    def _spawn(self, node_id: int) -> None:
        n = self.nodes[node_id]
        argv = [
            sys.executable,
            "-m",
            "bench.systems.pysyncobj_node",
            "--self",
            n.raft_address,
            *(
                a
                for o in self.nodes.values()
                if o.id != n.id
                for a in ("--partner", o.raft_address)
            ),
            "--front",
            f"127.0.0.1:{n.front_port}",
            "--data-dir",
            str(n.data_dir),
            *([] if self.batch else ["--no-batch"]),
        ]
        n.popen = self.supervisor.spawn(
            argv, log_path=n.log_path, cwd=REPO, env={"PYTHONUNBUFFERED": "1"}
        )

    async def stop(self) -> None:
        for n in self.nodes.values():
            if n.popen is not None:
                self.supervisor.kill(n.popen)

    def member_ids(self) -> list[int]:
        return list(self.nodes)

    def member(self, member_id: int) -> MemberInfo:
        n = self.nodes[member_id]
        if not n.running():
            raise LookupError(f"pysyncobj node {member_id} is not running")
        return MemberInfo(member_id, n.popen.pid, n.data_dir)

    def _channel(self, node_id: int) -> grpc.aio.Channel:
        port = self.nodes[node_id].front_port
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)

    async def _status(self, node_id: int) -> Any:  # noqa: ANN401 (generated message)
        channel = self._channel(node_id)
        try:
            return await _rpc.NodeStub(channel).Status(pb.StatusRequest(), timeout=2.0)
        finally:
            await channel.close()

    async def current_leader(self) -> int:
        running = [i for i in self.nodes if self.nodes[i].running()]
        answers = await asyncio.gather(*(self._status(i) for i in running), return_exceptions=True)
        by_address = {n.raft_address: n.id for n in self.nodes.values()}
        named = [by_address.get(a.leader, 0) for a in answers if not isinstance(a, BaseException)]
        if not named:
            return 0
        top = max(set(named), key=named.count)
        if top == 0 or named.count(top) <= len(self.nodes) // 2:
            return 0
        return top if self.nodes[top].running() else 0

    async def leader(self, timeout_s: float = 30.0) -> int:
        return await poll_leader(self.current_leader, "PySyncObj", timeout_s)

    def kill(self, member_id: int) -> None:
        n = self.nodes[member_id]
        if n.popen is not None:
            self.supervisor.kill(n.popen)

    def restart(self, member_id: int) -> None:
        self._spawn(member_id)

    def snapshot_covers(self, member_id: int, last_index: int, since: float) -> str | None:
        """A full dump written after the load ended holds every key: PySyncObj dumps its whole
        state at log compaction (in a forked child). A compaction already running when the
        load ended may have forked before its end, so then a second new dump is waited for."""
        dump = self.nodes[member_id].data_dir / "dump.bin"
        if not self._load_done_wall or not dump.exists():
            return None
        mtime = dump.stat().st_mtime
        if mtime > self._load_done_wall:
            self._dumps_after_load.add(mtime)
        needed = 2 if self._dump_running_at_load_end.get(member_id) else 1
        if len(self._dumps_after_load) >= needed:
            return "a full dump (log compaction) written after the load holds every key"
        return None

    def mark_load_done(self) -> None:
        self._load_done_wall = time.time()
        self._dumps_after_load.clear()
        self._dump_running_at_load_end = {
            i: (n.data_dir / "dump.bin.tmp").exists() for i, n in self.nodes.items()
        }

    async def member_ready(self, member_id: int) -> bool:
        if not self.nodes[member_id].running():
            return False
        try:
            st = await self._status(member_id)
        except grpc.aio.AioRpcError:
            return False
        return bool(st.ready) and bool(st.leader)

    async def settle(self, timeout_s: float = 120.0) -> None:
        """Also until every node is connected to every other: a restarted node is ready as
        soon as it has caught up, but its peers reconnect to it on their own schedule
        (`connectionRetryTime`, 5 s by default), and a failover started before that measures
        the reconnection too."""
        await super().settle(timeout_s)

        async def connected() -> bool:
            answers = await asyncio.gather(
                *(self._status(i) for i in self.nodes), return_exceptions=True
            )
            return all(
                not isinstance(a, BaseException) and a.partners_connected == a.partners
                for a in answers
            )

        await wait_until(connected, timeout_s, "every PySyncObj node connected to the others")

    async def connect(
        self, first: int, *, timeout_s: float = 10.0, ids: list[int] | None = None
    ) -> Connection:
        return Connection(self._channel(first), timeout_s)

    def session_on(self, conn: Connection, *, owns: bool) -> Session:
        self._owner_seq += 1
        return PySyncObjSession(conn, f"bench-{self._owner_seq}", owns=owns)

    async def disconnect(self, conn: Connection) -> None:
        await conn.channel.close()
