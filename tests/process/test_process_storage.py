"""Process tests: a member's data directory across restarts (DESIGN.md §4, §7.2).

Autolock: a member whose key ring is wrapped under an unlock key serves nothing after a
restart until the key appears in its `--unlock-key-file`. Torn WAL tails: a write cut short
by a crash at the end of the newest segment is cut on recovery, and the member catches up.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc, raft_pb2_grpc
from coordinator.api.v1 import raft_pb2 as raft_pb
from coordinator.pki import load_member_tls
from coordinator.runtime.tls import member_channel_credentials
from coordinator.storage import KeyStore, record_frames
from coordinator.testing.process_cluster import ProcessCluster, run

pytestmark = pytest.mark.process

rpc: Any = concord_pb2_grpc  # the generated stubs are untyped
raft_rpc: Any = raft_pb2_grpc

FRAME = struct.Struct(">II")
"""A WAL record frame's head, u32 length | u32 CRC: to forge a torn write."""


async def served_nothing(cluster: ProcessCluster, member: int) -> list[grpc.StatusCode | None]:
    """How one member answers a serializable read, a status query and a put on its client
    port, and a Raft stream on its peer port (presenting another member's certificate):
    a status code each, None for a call it served. A locked member serves none of them
    (whether its ports refuse connections or answer UNAVAILABLE)."""
    m = cluster.members[member]
    other = next(i for i in cluster.members if i != member)
    peer_credentials = member_channel_credentials(load_member_tls(cluster.members[other].tls_dir))
    codes: list[grpc.StatusCode | None] = []

    async def attempt(address: str, credentials: grpc.ChannelCredentials, call: Any) -> None:
        async with grpc.aio.secure_channel(address, credentials) as channel:
            try:
                await call(channel)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
            else:
                codes.append(None)

    client_credentials = cluster.credentials()
    range_req = pb.RangeRequest(key=b"before/1", serializable=True)
    put_req = pb.PutRequest(key=b"through-a-locked-member", value=b"x")
    calls: list[Any] = [
        lambda ch: rpc.KVStub(ch).Range(range_req, timeout=5),
        lambda ch: rpc.ClusterStub(ch).Status(pb.StatusRequest(), timeout=5),
        lambda ch: rpc.KVStub(ch).Put(put_req, timeout=5),
    ]
    for call in calls:
        await attempt(m.client_address, client_credentials, call)
    batch = raft_pb.RaftBatch(cluster_id=cluster.cluster_id)
    await attempt(
        m.peer_address,
        peer_credentials,
        lambda ch: raft_rpc.RaftStub(ch).Stream(iter([batch]), timeout=5),
    )
    return codes


async def wait_serializable(
    cluster: ProcessCluster, member: int, keys: list[bytes], timeout_s: float = 20.0
) -> None:
    """Until `member` answers every key with its value from its own state machine."""
    async with cluster.client([member]) as c:

        async def caught_up() -> bool:
            for key in keys:
                kv = await c.get(key, serializable=True)
                if kv is None or kv.value != key:
                    return False
            return True

        await cluster.wait(caught_up, timeout_s, f"member {member} to serve {keys[-1]!r}")


async def put_all(cluster: ProcessCluster, keys: list[bytes]) -> None:
    async with cluster.client() as c:
        for key in keys:
            await c.put(key, key)


# --- autolock ----------------------------------------------------------------------------------


def test_a_member_restarted_with_autolock_serves_nothing_until_its_key_file_appears(
    cluster: ProcessCluster,
) -> None:
    async def scenario() -> None:
        await cluster.wait_ready()
        await put_all(cluster, [b"before/1", b"before/2"])
        leader = await cluster.leader()
        target = next(i for i in cluster.members if i != leader)
        m = cluster.members[target]
        assert cluster.terminate(target) == 0, m.current_log()

        # Turn autolock on in the stopped member's data dir (what `concordctl autolock` does).
        keys = KeyStore.open(m.data_dir)
        unlock_key = keys.enable_autolock()
        assert not (m.data_dir / "keys" / "kek").exists()
        key_file = cluster.root / "secrets" / f"unlock-key-{target}"
        m.extra_args = ["--unlock-key-file", str(key_file)]
        cluster.restart(target)

        async def locked() -> bool:
            try:
                status, body = await m.get("/readyz")
            except OSError:
                return False
            return status == 503 and body.startswith("locked")

        await cluster.wait(locked, 20, f"member {target} to report itself locked")
        status, body = await m.get("/readyz")
        assert status == 503 and "unlock key" in body, body
        assert await m.get("/healthz") == (200, "ok (locked)\n")
        assert (await m.get("/metrics"))[0] == 503
        assert await served_nothing(cluster, target) == [grpc.StatusCode.UNAVAILABLE] * 4
        assert "LOCKED" in m.current_log()

        # The cluster moves on without it; it stays locked.
        later = [f"while-locked/{i}".encode() for i in range(10)]
        await put_all(cluster, later)
        assert (await m.get("/readyz"))[0] == 503
        assert await served_nothing(cluster, target) == [grpc.StatusCode.UNAVAILABLE] * 4

        # The key arrives as a mounted secret would: written elsewhere, renamed into place.
        key_file.parent.mkdir(parents=True, exist_ok=True)
        staging = key_file.with_name(key_file.name + ".tmp")
        staging.write_text(unlock_key + "\n")
        os.replace(staging, key_file)
        await cluster.wait_ready([target], timeout_s=30)
        assert "unlocked with the key from" in m.current_log()
        await wait_serializable(cluster, target, [b"before/1", b"before/2", *later])
        read, query, _, raft = await served_nothing(cluster, target)  # (the put: a redirect)
        assert (read, query, raft) == (None, None, None), "the probe itself must work"

    run(scenario(), 120)


# --- torn WAL tails ----------------------------------------------------------------------------


def newest_segment(data_dir: Path) -> Path:
    segments = sorted((data_dir / "wal").glob("*.wal"))  # <seq:016x>-<first:016x>.wal
    assert segments, f"no WAL segment in {data_dir}"
    return segments[-1]


TORN_WRITE = FRAME.pack(4096, 0xDEADBEEF) + bytes(range(40))
"""A record frame declaring 4096 bytes with only 40 written: the head of a write the crash
cut short (fixed bytes, so the test is the same every run)."""


@pytest.mark.parametrize("damage", ["garbage-appended", "last-record-cut-in-half"])
def test_a_follower_with_a_torn_wal_tail_recovers_and_catches_up(
    cluster: ProcessCluster, damage: str
) -> None:
    async def scenario() -> None:
        await cluster.wait_ready()
        before = [f"before/{i}".encode() for i in range(20)]
        await put_all(cluster, before)
        leader = await cluster.leader()
        target = next(i for i in cluster.members if i != leader)
        m = cluster.members[target]
        await wait_serializable(cluster, target, before)
        cluster.kill(target)

        segment = newest_segment(m.data_dir)
        data = segment.read_bytes()
        records = record_frames(data)
        assert len(records) > 1 and sum(r[1] for r in records) + 8 == len(data), segment
        if damage == "garbage-appended":
            with segment.open("ab") as f:
                f.write(TORN_WRITE)
            cut = len(TORN_WRITE)
        else:
            start, size = records[-1]
            os.truncate(segment, start + size // 2)
            cut = size // 2

        after = [f"after/{i}".encode() for i in range(20)]
        await put_all(cluster, after)  # the cluster moves on without it
        cluster.restart(target)
        await cluster.wait_ready([target])
        log = m.current_log()
        assert f"cut a torn tail of {cut} bytes" in log, log
        assert f"{segment.name}" in log

        await put_all(cluster, [b"latest"])
        committed = (await cluster.status_of(await cluster.leader())).commit

        async def applied_up_to_the_leader() -> bool:
            return (await cluster.status_of(target)).applied >= committed

        await cluster.wait(applied_up_to_the_leader, 20, f"member {target} to apply {committed}")
        await wait_serializable(cluster, target, [*before, *after, b"latest"])

    run(scenario(), 120)
