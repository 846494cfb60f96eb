"""The member's client port before and after it has a Raft loop (coordinator.server's
`start_gateway`): the Maintenance service answers throughout; every other method, whatever
its streaming shape, answers the member's phase until `attach`; Unlock's statuses."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as pb_grpc
from coordinator.fsm import StateMachine
from coordinator.raft import ConfState, Snapshot, SnapshotMeta
from coordinator.runtime.clock import SystemClock
from coordinator.runtime.loop import LoopConfig, RaftLoop
from coordinator.runtime.transport import LoopbackTransport
from coordinator.server.server import start_gateway, start_server
from coordinator.storage import DiskWal, KeyStore, format_unlock_key
from tests.server.harness import rpc_error, trailing, wait_for


class FakeMember:
    """The `MemberKeys` a member process provides, over a real key store."""

    def __init__(self, data_dir: Path) -> None:
        self.member_id = 7
        self.member_name = "seven"
        self.phase = "starting"
        self.keys: KeyStore | None = None
        self.data_dir = data_dir

    def unlock(self, unlock_key: str) -> bool:
        if self.phase != "locked":
            return False
        self.keys = KeyStore.open(self.data_dir, unlock_key)
        self.phase = "starting"
        return True


class Stubs:
    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.kv = pb_grpc.KVStub(self.channel)
        self.lease = pb_grpc.LeaseStub(self.channel)
        self.watch = pb_grpc.WatchStub(self.channel)
        self.maintenance = pb_grpc.MaintenanceStub(self.channel)


async def _stream_error(call: grpc.aio.Call) -> grpc.aio.AioRpcError:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the stream ended without an error")


def test_before_attach_only_maintenance_answers(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "data", autolock=True)
    right = store.unlock_key
    assert right is not None

    async def scenario() -> None:
        member = FakeMember(tmp_path / "data")
        gateway = await start_gateway("127.0.0.1:0", None, member=member)
        s = Stubs(gateway.port)
        try:
            err = await rpc_error(s.kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "member 7 is starting" in (err.details() or "")

            member.phase = "locked"
            for err in [
                await rpc_error(s.kv.Range(pb.RangeRequest(key=b"k"), timeout=5)),
                await _stream_error(s.watch.Watch(pb.WatchRequest(key=b"k"), timeout=5)),
                await _stream_error(
                    s.lease.KeepAlive(iter([pb.LeaseKeepAliveRequest(id=1)]), timeout=5)
                ),
                await rpc_error(
                    s.maintenance.SetAutolock(pb.SetAutolockRequest(enabled=False), timeout=5)
                ),
            ]:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                assert (err.details() or "").startswith("member is locked: run concordctl unlock")
                assert trailing(err)["concord-locked"] == "7"

            status = await s.maintenance.AutolockStatus(pb.AutolockStatusRequest(), timeout=5)
            assert (status.member_id, status.member_name, status.phase) == (7, "seven", "locked")
            assert status.locked and status.autolock

            unlock = s.maintenance.Unlock
            err = await rpc_error(unlock(pb.UnlockMemberRequest(unlock_key=""), timeout=5))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unlock_key is empty" in (err.details() or "")
            err = await rpc_error(
                unlock(pb.UnlockMemberRequest(unlock_key="CONCORD-UNLOCK-0O"), timeout=5)
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "nothing was tried" in (err.details() or "")
            wrong = format_unlock_key(bytes(32))
            err = await rpc_error(unlock(pb.UnlockMemberRequest(unlock_key=wrong), timeout=5))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert (err.details() or "").startswith("wrong unlock key")
            assert member.phase == "locked"

            ok = await unlock(pb.UnlockMemberRequest(unlock_key=right), timeout=5)
            assert ok.member_id == 7 and member.keys is not None
            err = await rpc_error(unlock(pb.UnlockMemberRequest(unlock_key=right), timeout=5))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "member 7 is not locked (it is starting)" in (err.details() or "")

            # With the keys open, the key management works before the loop exists.
            resp = await s.maintenance.RotateUnlockKey(pb.RotateUnlockKeyRequest(), timeout=5)
            assert resp.unlock_key.startswith("CONCORD-UNLOCK-") and resp.unlock_key != right
            off = await s.maintenance.SetAutolock(pb.SetAutolockRequest(enabled=False), timeout=5)
            assert (off.autolock, off.changed, off.unlock_key) == (False, True, "")
            off = await s.maintenance.SetAutolock(pb.SetAutolockRequest(enabled=False), timeout=5)
            assert (off.autolock, off.changed) == (False, False)
            err = await rpc_error(
                s.maintenance.RotateUnlockKey(pb.RotateUnlockKeyRequest(), timeout=5)
            )
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            KeyStore.open(tmp_path / "data", read_only=True)  # no key needed any more
        finally:
            await s.channel.close()
            await gateway.stop(None)

    asyncio.run(scenario())


def test_attach_brings_up_every_service(tmp_path: Path) -> None:
    async def scenario() -> None:
        keys = KeyStore.create(tmp_path / "data")
        wal = DiskWal.create(keys)
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1})))))
        net = LoopbackTransport()
        loop = RaftLoop(
            LoopConfig(id=1, tick_s=0.01, election_ticks=10),
            wal,
            net,
            StateMachine(),
            SystemClock(),
            rng=random.Random(1),
        )
        net.register(1, loop.receive)
        task = asyncio.create_task(loop.run())
        member = FakeMember(tmp_path / "data")
        gateway = await start_gateway("127.0.0.1:0", None, member=member)
        s = Stubs(gateway.port)
        try:
            member.phase, member.keys = "running", keys
            gateway.attach(loop)
            await wait_for(lambda: loop.is_leader)
            resp = await s.kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
            assert resp.header.revision == 1
            status = await s.maintenance.AutolockStatus(pb.AutolockStatusRequest(), timeout=5)
            assert status.phase == "running" and not status.autolock
        finally:
            await s.channel.close()
            await gateway.stop(None)
            loop.stop()
            await task
            wal.close()

    asyncio.run(scenario())


def test_a_server_without_a_member_has_no_key_management(tmp_path: Path) -> None:
    async def scenario() -> None:
        keys = KeyStore.create(tmp_path / "data")
        wal = DiskWal.create(keys)
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1})))))
        loop = RaftLoop(
            LoopConfig(id=1, tick_s=0.01, election_ticks=10),
            wal,
            LoopbackTransport(),
            StateMachine(),
            SystemClock(),
            rng=random.Random(1),
        )
        served = await start_server(loop, "127.0.0.1:0", None)
        s = Stubs(served.port)
        try:
            err = await rpc_error(
                s.maintenance.AutolockStatus(pb.AutolockStatusRequest(), timeout=5)
            )
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "without a member process" in (err.details() or "")
        finally:
            await s.channel.close()
            await served.stop(None)
            wal.close()

    asyncio.run(scenario())
