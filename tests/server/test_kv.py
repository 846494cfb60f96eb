"""KV over gRPC: put/get/range/delete, Txn compare-and-swap (both branches), LOCK_TOKEN fencing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import (
    CompareOp,
    CompareTarget,
    DeleteResult,
    KeyValue,
    OpResult,
    PutResult,
    RangeResult,
    TxnResult,
)
from coordinator.server import _validate as v
from coordinator.server._kv import kv_pb, txn_response
from tests.server.harness import Cluster, Session, rpc_error, with_cluster


def test_put_get_range_delete(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        kv = leader.client.kv
        s = Session(11)
        r1 = await kv.Put(pb.PutRequest(session=s.next(), key=b"a", value=b"1"))
        assert r1.header.revision >= 1 and r1.header.raft_index > 0
        assert r1.header.member_id == leader.id
        r2 = await kv.Put(pb.PutRequest(session=s.next(), key=b"a", value=b"2", prev_kv=True))
        assert r2.prev_kv.value == b"1" and r2.header.revision == r1.header.revision + 1
        await kv.Put(pb.PutRequest(session=s.next(), key=b"b", value=b"3"))
        got = await kv.Range(pb.RangeRequest(key=b"a"))
        assert [(x.key, x.value, x.version) for x in got.kvs] == [(b"a", b"2", 2)]
        many = await kv.Range(pb.RangeRequest(key=b"a", range_end=b"\0", limit=1))
        assert many.count == 2 and many.more and len(many.kvs) == 1
        # A linearizable read through a follower sees the write; so (eventually) does a
        # serializable one.
        follower = await c.follower()
        seen = await follower.client.kv.Range(pb.RangeRequest(key=b"b"))
        assert seen.kvs[0].value == b"3" and seen.header.member_id == follower.id
        deleted = await kv.Delete(pb.DeleteRequest(session=s.next(), key=b"a", range_end=b"c"))
        assert deleted.deleted == 2
        assert (await kv.Range(pb.RangeRequest(key=b"a", range_end=b"\0"))).count == 0

    with_cluster(tmp_path, scenario)


def test_txn_compare_and_swap_takes_the_right_branch(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        kv = (await c.leader()).client.kv
        s = Session(12)
        put = await kv.Put(pb.PutRequest(session=s.next(), key=b"cfg", value=b"v1"))

        def cas(expected_mod: int, new: bytes) -> pb.TxnRequest:
            return pb.TxnRequest(
                session=s.next(),
                compares=[
                    pb.Compare(
                        key=b"cfg",
                        target=pb.Compare.MOD_REVISION,
                        op=pb.Compare.EQUAL,
                        number=expected_mod,
                    )
                ],
                success=[pb.TxnOp(put=pb.PutRequest(key=b"cfg", value=new))],
                failure=[pb.TxnOp(range=pb.RangeRequest(key=b"cfg"))],
            )

        won = await kv.Txn(cas(put.header.revision, b"v2"))
        assert won.succeeded and won.results[0].WhichOneof("result") == "put"
        lost = await kv.Txn(cas(put.header.revision, b"v3"))  # stale mod revision
        assert not lost.succeeded
        assert lost.results[0].range.kvs[0].value == b"v2"
        by_value = await kv.Txn(
            pb.TxnRequest(
                session=s.next(),
                compares=[
                    pb.Compare(
                        key=b"cfg", target=pb.Compare.VALUE, op=pb.Compare.EQUAL, value=b"v2"
                    )
                ],
                success=[pb.TxnOp(delete=pb.DeleteRequest(key=b"cfg"))],
            )
        )
        assert by_value.succeeded and by_value.results[0].delete.deleted == 1

    with_cluster(tmp_path, scenario)


def test_txn_guarded_by_a_lock_token(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        s = Session(13)
        lease = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=10_000))
        lock = await client.lock.Lock(
            pb.LockRequest(session=s.next(), name="db-writer", lease=lease.id, wait=True)
        )
        assert lock.granted and lock.fencing_token > 0

        def guarded(value: bytes) -> pb.TxnRequest:
            return pb.TxnRequest(
                session=s.next(),
                compares=[
                    pb.Compare(
                        key=b"db-writer",
                        target=pb.Compare.LOCK_TOKEN,
                        op=pb.Compare.EQUAL,
                        number=lock.fencing_token,
                    )
                ],
                success=[pb.TxnOp(put=pb.PutRequest(key=b"row", value=value))],
            )

        assert (await client.kv.Txn(guarded(b"ok"))).succeeded
        await client.lock.Unlock(
            pb.UnlockRequest(session=s.next(), name="db-writer", lease=lease.id)
        )
        fenced = await client.kv.Txn(guarded(b"late"))
        assert not fenced.succeeded
        row = await client.kv.Range(pb.RangeRequest(key=b"row"))
        assert row.kvs[0].value == b"ok"
        # The state machine's own checks still apply after validation: a put under a lease
        # that does not exist is NOT_FOUND.
        err = await rpc_error(
            client.kv.Put(pb.PutRequest(session=s.next(), key=b"k", value=b"v", lease=999))
        )
        assert err.code() is grpc.StatusCode.NOT_FOUND and "lease 999" in err.details()

    with_cluster(tmp_path, scenario)


def _header(revision: int | None = None, index: int = 0) -> pb.ResponseHeader:
    return pb.ResponseHeader(member_id=1, revision=revision or 0, raft_term=2, raft_index=index)


@pytest.mark.parametrize(
    "responses",
    [
        (),
        (PutResult(7),),
        (PutResult(7, KeyValue(b"k", b"v", 1, 2, 3, 4)), DeleteResult(7, 2)),
        (RangeResult(7, (KeyValue(b"k", b"v", 1, 2, 3),), 5, True), PutResult(7)),
        (PutResult(6), DeleteResult(5, 0)),  # revisions other than the txn's keep their own
    ],
)
def test_txn_response_gives_each_op_its_header(responses: tuple[OpResult, ...]) -> None:
    res = TxnResult(7, True, responses)
    expected = []
    for r in responses:
        if isinstance(r, PutResult):
            prev = None if r.prev_kv is None else kv_pb(r.prev_kv)
            put = pb.PutResponse(header=_header(r.revision, 9), prev_kv=prev)
            expected.append(pb.TxnOpResult(put=put))
        elif isinstance(r, DeleteResult):
            delete = pb.DeleteResponse(header=_header(r.revision, 9), deleted=r.deleted)
            expected.append(pb.TxnOpResult(delete=delete))
        else:
            rng = pb.RangeResponse(
                header=_header(r.revision),
                kvs=[kv_pb(kv) for kv in r.kvs],
                more=r.more,
                count=r.count,
            )
            expected.append(pb.TxnOpResult(range=rng))
    assert txn_response(_header, res, 9) == pb.TxnResponse(
        header=_header(7, 9), succeeded=True, results=expected
    )


def test_every_compare_target_and_op_maps_to_the_state_machines_by_name() -> None:
    for target_name, target in pb.Compare.Target.items():
        for op_name, op in pb.Compare.Op.items():
            operand = {"value": b"x"} if target_name == "VALUE" else {"number": 3}
            c = v.compare(0, pb.Compare(key=b"k", target=target, op=op, **operand))
            assert (c.target, c.op) == (CompareTarget[target_name], CompareOp[op_name])
            assert c.key == b"k" and c.value == (b"x" if target_name == "VALUE" else 3)
