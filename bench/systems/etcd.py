"""etcd: a 3-member cluster of the pinned etcd v3.6 build (scripts/build_etcd.sh), started by the
benchmark on loopback with its data on disk, driven over gRPC through the benchmark's own
wire-compatible declaration of etcd's API (bench/protos/etcd_*.proto).

Settings are etcd's defaults (heartbeat 100 ms, election timeout 1000 ms, snapshot every
10,000 entries, fsync of the WAL on every commit: `--unsafe-no-fsync` is off, at most 128
operations per Txn) plus what a cluster needs: names, URLs, and mutual TLS on both the
client and the peer ports with certificates from one CA (the same helpers Concord's own
members use), so the two systems pay for the same encryption. `--listen-metrics-urls`
serves /readyz in plain HTTP for the readiness checks.

Per task: one gRPC channel (as Concord's one `Client` per task). Lock figures use etcd's
server-side lock API (v3lock: `Lock(name, lease)` blocks until held, `Unlock(key)`), each
session with its own lease granted before the clock starts. Reads are etcd's default
linearizable Range.

etcd has no sequence primitive; its users build one as a client-side compare-and-swap loop,
and so does the benchmark (`EtcdSession.seq_next`): one counter key per sequence, each
session remembering the last value it saw; an attempt is one Txn that puts that value + 1 if
the key still holds it (or is absent when none is known) and otherwise reads the key, so a
lost race learns the current value in the same round trip and tries again at once, without
backoff, as etcd's own STM does. Each value is unique and a session's values increase; the
requests each value took are counted (`seq_requests_per_value`).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from coordinator.pki import (
    CA_FILE,
    MEMBER_CERT_FILE,
    MEMBER_KEY_FILE,
    create_ca,
    issue_client_cert,
    issue_member_cert,
    write_member_tls,
)
from coordinator.runtime.tls import channel_credentials
from coordinator.testing.ports import free_ports
from coordinator.testing.procs import http_get

from ..procs import Supervisor
from ..protos import etcd_kv_pb2 as kv
from ..protos import etcd_kv_pb2_grpc as kv_grpc
from ..protos import etcd_lock_pb2 as lockpb
from ..protos import etcd_lock_pb2_grpc as lock_grpc
from .base import Cluster, MemberInfo, Session, poll_leader

LOCK_TTL_S = 120
SEQ_PREFIX = b"bench/seq/"
"""A sequence's counter key is this + its name."""
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]
_rpc: Any = kv_grpc
_lock_rpc: Any = lock_grpc


@dataclass
class EtcdMember:
    id: int
    client_port: int
    peer_port: int
    metrics_port: int
    data_dir: Path
    tls_dir: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"m{self.id}"

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Connection:
    channel: grpc.aio.Channel
    timeout_s: float


class EtcdSession(Session):
    def __init__(self, conn: Connection, *, owns: bool) -> None:
        channel = self.channel = conn.channel
        self.timeout_s = conn.timeout_s
        self.owns = owns
        self.kv = _rpc.KVStub(channel)
        self.lease_stub = _rpc.LeaseStub(channel)
        self.lock = _lock_rpc.LockStub(channel)
        self.lease = 0
        self.seq_seen: dict[str, int | None] = {}
        """Sequence name -> the counter's value this session last saw (None: unknown)."""

    async def warm(self) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), 10.0)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.kv.Put(kv.PutRequest(key=key, value=value), timeout=self.timeout_s)

    async def cas(self, key: bytes, expected: bytes | None, new: bytes) -> bool:
        if expected is None:
            cmp = kv.Compare(key=key, target=kv.Compare.VERSION, result=kv.Compare.EQUAL, version=0)
        else:
            cmp = kv.Compare(
                key=key, target=kv.Compare.VALUE, result=kv.Compare.EQUAL, value=expected
            )
        req = kv.TxnRequest(
            compare=[cmp], success=[kv.RequestOp(request_put=kv.PutRequest(key=key, value=new))]
        )
        resp = await self.kv.Txn(req, timeout=self.timeout_s)
        return bool(resp.succeeded)

    async def prepare_locks(self) -> None:
        resp = await self.lease_stub.LeaseGrant(
            kv.LeaseGrantRequest(TTL=LOCK_TTL_S), timeout=self.timeout_s
        )
        self.lease = int(resp.ID)

    async def lock_cycle(self, name: str) -> int:
        held = await self.lock.Lock(
            lockpb.LockRequest(name=name.encode(), lease=self.lease), timeout=self.timeout_s
        )
        await self.lock.Unlock(lockpb.UnlockRequest(key=held.key), timeout=self.timeout_s)
        return 1

    async def seq_next(self, name: str) -> tuple[int, int]:
        key = SEQ_PREFIX + name.encode()
        read_back = [kv.RequestOp(request_range=kv.RangeRequest(key=key))]
        requests = 0
        while True:
            seen = self.seq_seen.get(name)
            if seen is None:
                cmp = kv.Compare(
                    key=key, target=kv.Compare.VERSION, result=kv.Compare.EQUAL, version=0
                )
            else:
                cmp = kv.Compare(
                    key=key, target=kv.Compare.VALUE, result=kv.Compare.EQUAL,
                    value=str(seen).encode(),
                )  # fmt: skip
            new = (seen or 0) + 1
            req = kv.TxnRequest(
                compare=[cmp],
                success=[kv.RequestOp(request_put=kv.PutRequest(key=key, value=str(new).encode()))],
                failure=read_back,
            )
            requests += 1
            resp = await self.kv.Txn(req, timeout=self.timeout_s)
            if resp.succeeded:
                self.seq_seen[name] = new
                return new, requests
            current = resp.responses[0].response_range.kvs
            self.seq_seen[name] = int(current[0].value) if current else None

    async def read(self, key: bytes) -> bytes | None:
        resp = await self.kv.Range(kv.RangeRequest(key=key), timeout=self.timeout_s)
        return bytes(resp.kvs[0].value) if resp.kvs else None

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        req = kv.TxnRequest(
            success=[kv.RequestOp(request_put=kv.PutRequest(key=k, value=v)) for k, v in items]
        )
        await self.kv.Txn(req, timeout=self.timeout_s)

    async def close(self) -> None:
        if self.lease:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.lease_stub.LeaseRevoke(
                    kv.LeaseRevokeRequest(ID=self.lease), timeout=self.timeout_s
                )
        if self.owns:
            await self.channel.close()


class EtcdCluster(Cluster):
    name = "etcd"
    unsupported: dict[str, str] = {}  # noqa: RUF012
    batch_max = 128  # etcd's --max-txn-ops default

    def __init__(self, root: Path, supervisor: Supervisor, binary: Path, version: str) -> None:
        super().__init__(root, supervisor)
        self.binary = binary
        self.version = version
        self.members: dict[int, EtcdMember] = {}
        self.ca = create_ca("etcd-bench")
        self.client_cert = issue_client_cert(self.ca, "bench-client")
        self._credentials = channel_credentials(
            self.ca.cert_pem, self.client_cert.cert_pem, self.client_cert.key_pem
        )
        self._etcd_ids: dict[int, int] = {}
        """etcd's own member id -> ours (1..3), learned from Status."""

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "obtained": (
                "built from the Go module proxy by scripts/build_etcd.sh "
                "(go.etcd.io/etcd/server/v3 at the pinned tag, CGO off)"
            ),
            "binary": str(self.binary),
            "settings": {
                "members": 3,
                "tls": "mutual TLS (client and peer)",
                "fsync": "on (etcd default; --unsafe-no-fsync not set)",
                "heartbeat_ms": 100,
                "election_timeout_ms": 1000,
                "snapshot_count": "10000 (default)",
                "max_txn_ops": 128,
                "client": "Python grpc.aio channels",
                "locks": "v3lock API (server-side Lock/Unlock with a lease)",
                "sequence": "a client-side Txn compare-and-swap loop on one key (etcd has none)",
            },
        }

    async def start(self) -> None:
        ports = free_ports(9)
        for i in (1, 2, 3):
            c, p, m = ports[3 * (i - 1) : 3 * i]
            tls_dir = self.root / f"tls-{i}"
            write_member_tls(tls_dir, self.ca.cert_pem, issue_member_cert(self.ca, f"m{i}"))
            self.members[i] = EtcdMember(
                i, c, p, m, self.root / f"data-{i}", tls_dir, self.root / f"etcd-{i}.log"
            )
        for i in self.members:
            self._spawn(i, new=True)
        await self.wait_all_ready(timeout_s=60)
        await self.leader()

    def _command(self, m: EtcdMember, *, new: bool) -> list[str]:
        initial = ",".join(
            f"{x.name}=https://127.0.0.1:{x.peer_port}" for x in self.members.values()
        )
        tls = m.tls_dir
        return [
            str(self.binary),
            f"--name={m.name}",
            f"--data-dir={m.data_dir}",
            f"--listen-client-urls=https://127.0.0.1:{m.client_port}",
            f"--advertise-client-urls=https://127.0.0.1:{m.client_port}",
            f"--listen-peer-urls=https://127.0.0.1:{m.peer_port}",
            f"--initial-advertise-peer-urls=https://127.0.0.1:{m.peer_port}",
            f"--listen-metrics-urls=http://127.0.0.1:{m.metrics_port}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-state={'new' if new else 'existing'}",
            "--initial-cluster-token=concord-bench",
            f"--cert-file={tls / MEMBER_CERT_FILE}",
            f"--key-file={tls / MEMBER_KEY_FILE}",
            f"--trusted-ca-file={tls / CA_FILE}",
            "--client-cert-auth",
            f"--peer-cert-file={tls / MEMBER_CERT_FILE}",
            f"--peer-key-file={tls / MEMBER_KEY_FILE}",
            f"--peer-trusted-ca-file={tls / CA_FILE}",
            "--peer-client-cert-auth",
            "--log-level=warn",
        ]

    def _spawn(self, member_id: int, *, new: bool) -> None:
        m = self.members[member_id]
        m.popen = self.supervisor.spawn(self._command(m, new=new), log_path=m.log_path)

    async def stop(self) -> None:
        for m in self.members.values():
            if m.popen is not None:
                self.supervisor.kill(m.popen)

    def member_ids(self) -> list[int]:
        return list(self.members)

    def member(self, member_id: int) -> MemberInfo:
        m = self.members[member_id]
        if m.popen is None or not m.running():
            raise LookupError(f"etcd member {member_id} is not running")
        return MemberInfo(member_id, m.popen.pid, m.data_dir)

    def _channel(self, member_id: int) -> grpc.aio.Channel:
        m = self.members[member_id]
        return grpc.aio.secure_channel(
            f"127.0.0.1:{m.client_port}", self._credentials, options=CHANNEL_OPTIONS
        )

    async def _status(self, member_id: int) -> Any:  # noqa: ANN401 (generated message)
        channel = self._channel(member_id)
        try:
            return await _rpc.MaintenanceStub(channel).Status(kv.StatusRequest(), timeout=2.0)
        finally:
            await channel.close()

    async def current_leader(self) -> int:
        """Our id of the leader a majority of the members names (0: none yet)."""
        running = [i for i in self.members if self.members[i].running()]
        answers = await asyncio.gather(*(self._status(i) for i in running), return_exceptions=True)
        named: list[int] = []
        for i, resp in zip(running, answers, strict=True):
            if isinstance(resp, BaseException):
                continue
            self._etcd_ids[int(resp.header.member_id)] = i
            named.append(int(resp.leader))
        if not named:
            return 0
        top = max(set(named), key=named.count)
        if top == 0 or named.count(top) <= len(self.members) // 2:
            return 0
        return self._etcd_ids.get(top, 0)

    async def leader(self, timeout_s: float = 30.0) -> int:
        return await poll_leader(self.current_leader, "etcd", timeout_s)

    def kill(self, member_id: int) -> None:
        m = self.members[member_id]
        if m.popen is not None:
            self.supervisor.kill(m.popen)

    def restart(self, member_id: int) -> None:
        self._spawn(member_id, new=False)

    async def member_ready(self, member_id: int) -> bool:
        m = self.members[member_id]
        if not m.running():
            return False
        try:
            status, _ = await http_get(m.metrics_port, "/readyz", 3.0)
        except OSError:
            return False
        return status == 200

    async def connect(
        self, first: int, *, timeout_s: float = 10.0, ids: list[int] | None = None
    ) -> Connection:
        return Connection(self._channel(first), timeout_s)

    def session_on(self, conn: Connection, *, owns: bool) -> Session:
        return EtcdSession(conn, owns=owns)

    async def disconnect(self, conn: Connection) -> None:
        await conn.channel.close()

    def snapshot_covers(self, member_id: int, last_index: int, since: float) -> str | None:
        return "every applied key is in the bbolt backend (etcd's state on disk)"

    async def prepare(self, figure: str, leader: int) -> None:
        if figure == "read":
            s = await self.session(leader)
            try:
                await s.put(b"bench/read", b"v" * 64)
            finally:
                await s.close()
