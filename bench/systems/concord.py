"""Concord: three `concord-coordinator` processes with mutual TLS and their data on disk, driven
through the public client library only (`coordinator.client.Client`), so improvements to the
client or the member show up here without touching the benchmark.

The cluster is started exactly as the process tests and `scripts/measure_member.py` start
theirs (`coordinator/testing/process_cluster.py`:
a fresh CA, a certificate per member and one for the
client, ephemeral loopback ports, the parent-death launcher). Tick length and election timeout
are the member's own defaults (read from its argument parser), so the failover figure measures
Concord as shipped. WAL fsync is always on in Concord (there is no switch to turn it off).

Each session is its own `Client` (its own channel and client session), the one-request-at-a-
time contract the client documents. Bulk loads use `Client.call` with a `TxnRequest` of
`Put`s, the same public call path every `Client` method takes.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import Client, ConcordError, Lock
from coordinator.daemon.config import build_parser
from coordinator.testing.process_cluster import ProcessCluster

from ..procs import Supervisor
from .base import Cluster, MemberInfo, Session

LOCK_TTL_MS = 120_000
"""Leases for the lock figures outlive every cell, so no keep-alive runs during one."""


def _member_defaults() -> tuple[int, int]:
    parser = build_parser()
    return int(parser.get_default("tick_ms")), int(parser.get_default("election_ticks"))


def source_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        dist = version("concord")
    except Exception:
        dist = "unknown"
    repo = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return f"{dist} (git {rev})"


class ConcordSession(Session):
    def __init__(self, client: Client, *, owns: bool) -> None:
        self.client = client
        self.owns = owns
        self.lease = 0
        self.last_index = 0
        """The highest Raft index a put_many of this session was committed at."""

    async def warm(self) -> None:
        probe = pb.RangeRequest(key=b"bench/warm", serializable=True)
        await self.client.call_endpoint(
            self.client.endpoints[0], lambda s: s.kv.Range(probe, timeout=5.0)
        )

    async def put(self, key: bytes, value: bytes) -> None:
        await self.client.put(key, value)

    async def cas(self, key: bytes, expected: bytes | None, new: bytes) -> bool:
        return await self.client.cas(key, expected, new)

    async def prepare_locks(self) -> None:
        self.lease = await self.client.lease_grant(LOCK_TTL_MS)

    async def lock_cycle(self, name: str) -> int:
        held: Lock = await self.client.acquire(name, self.lease)
        await self.client.release(held)
        return 1

    async def seq_next(self, name: str) -> tuple[int, int]:
        return (await self.client.sequence_next(name))[0], 1

    async def read(self, key: bytes) -> bytes | None:
        kv = await self.client.get(key)
        return None if kv is None else bytes(kv.value)

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        client = self.client
        with client.session() as session:
            req = pb.TxnRequest(
                session=session,
                success=[pb.TxnOp(put=pb.PutRequest(key=k, value=v)) for k, v in items],
            )
            resp = await client.call(lambda s: s.kv.Txn(req, timeout=client.rpc_timeout_s))
        self.last_index = max(self.last_index, int(resp.header.raft_index))

    async def close(self) -> None:
        if self.lease:
            with contextlib.suppress(ConcordError):
                await self.client.lease_revoke(self.lease)
        if self.owns:
            await self.client.close()


class ConcordCluster(Cluster):
    name = "concord"
    unsupported: dict[str, str] = {}  # noqa: RUF012
    batch_max = 128  # coordinator.fsm.kv.MAX_TXN_OPS

    def __init__(
        self, root: Path, supervisor: Supervisor, *, member_args: Sequence[str] = ()
    ) -> None:
        super().__init__(root, supervisor)
        self.tick_ms, self.election_ticks = _member_defaults()
        self.member_args = list(member_args)
        """Added to every member's command line (e.g. `--read-mode lease`); none: the member
        defaults, as `make bench` measures Concord."""
        self.cluster: ProcessCluster | None = None

    def describe(self) -> dict[str, Any]:
        extra = {"member_args": " ".join(self.member_args)} if self.member_args else {}
        return {
            "version": source_version(),
            "obtained": "this repository (python -m coordinator.daemon.member)",
            "settings": {
                "members": 3,
                "tls": "mutual TLS (client and peer)",
                "fsync": "on (always: every WAL append returns after fsync, group commit)",
                "tick_ms": self.tick_ms,
                "election_ticks": self.election_ticks,
                "snapshot": "every 10,000 applied entries (member default)",
                "event_loop": "uvloop (member default)",
                "client": "coordinator.client.Client",
                **extra,
            },
        }

    def _cluster(self) -> ProcessCluster:
        if self.cluster is None:
            raise RuntimeError("the Concord cluster is not started")
        return self.cluster

    async def start(self) -> None:
        self.cluster = ProcessCluster(
            self.root,
            3,
            tick_ms=self.tick_ms,
            election_ticks=self.election_ticks,
            cluster_id="bench",
        )
        for m in self.cluster.members.values():
            m.extra_args = list(self.member_args)
        self.supervisor.on_close(self.cluster.close)
        self.cluster.start_all()
        await self.cluster.wait_ready(timeout_s=60)
        await self.cluster.leader(timeout_s=30)

    async def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()

    def member_ids(self) -> list[int]:
        return list(self._cluster().members)

    def member(self, member_id: int) -> MemberInfo:
        m = self._cluster().members[member_id]
        if m.pid is None or not m.running():
            raise LookupError(f"member {member_id} is not running")
        return MemberInfo(member_id, m.pid, m.data_dir)

    async def leader(self, timeout_s: float = 30.0) -> int:
        return await self._cluster().leader(timeout_s=timeout_s)

    def kill(self, member_id: int) -> None:
        self._cluster().kill(member_id)

    def restart(self, member_id: int) -> None:
        self._cluster().restart(member_id)

    async def member_ready(self, member_id: int) -> bool:
        return await self._cluster().members[member_id].ready()

    async def metrics_text(self, member_id: int) -> str:
        """The member's /metrics page (Prometheus text)."""
        return await self._cluster().members[member_id].metrics()

    def _client(
        self, first: int, ids: list[int] | None, *, timeout_s: float, rpc_timeout_s: float
    ) -> Client:
        c = self._cluster()
        order = [first, *(i for i in (ids or c.members) if i != first)]
        return Client(
            c.endpoints(order),
            credentials=c.credentials(),
            timeout_s=timeout_s,
            rpc_timeout_s=rpc_timeout_s,
        )

    async def connect(
        self, first: int, *, timeout_s: float = 10.0, ids: list[int] | None = None
    ) -> Client:
        # The client's retry budget matches the request's: one request is one attempt's worth.
        return self._client(first, ids, timeout_s=max(timeout_s, 0.05), rpc_timeout_s=timeout_s)

    def session_on(self, conn: Client, *, owns: bool) -> Session:
        return ConcordSession(conn, owns=owns)

    async def disconnect(self, conn: Client) -> None:
        await conn.close()

    async def prepare(self, figure: str, leader: int) -> None:
        client = self._client(leader, None, timeout_s=30.0, rpc_timeout_s=10.0)
        try:
            if figure == "seq_next":
                with contextlib.suppress(ConcordError):  # exists already: fine
                    await client.sequence_create("bench-seq")
            elif figure == "read":
                await client.put(b"bench/read", b"v" * 64)
        finally:
            await client.close()

    def snapshot_covers(self, member_id: int, last_index: int, since: float) -> str | None:
        snap = self.newest_snapshot_index(member_id)
        if last_index and snap >= last_index:
            return f"newest snapshot at index {snap:,} covers the last load entry ({last_index:,})"
        return None

    def newest_snapshot_index(self, member_id: int) -> int:
        """The index of the newest snapshot file in the member's data directory (0: none)."""
        snap_dir = self._cluster().members[member_id].data_dir / "snap"
        best = 0
        for path in snap_dir.glob("*.snap") if snap_dir.is_dir() else ():
            with contextlib.suppress(ValueError):
                best = max(best, int(path.stem.split("-")[1], 16))
        return best
