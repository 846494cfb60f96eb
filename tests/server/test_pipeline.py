"""The Pipeline stream: many calls on one stream, answered out of order with the unary
handlers' own results and errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from coordinator.api.v1 import concord_pb2 as pb
from tests.server.harness import Cluster, Session, answers, with_cluster


async def exchange(stub: Any, batches: list[list[pb.PipelineCall]]) -> dict[int, pb.PipelineResult]:
    """Send `batches` on one stream, half-close, and collect every result by id."""
    call = stub.Stream()
    for batch in batches:
        await call.write(pb.PipelineRequest(calls=batch))
    await call.done_writing()
    results: dict[int, pb.PipelineResult] = {}
    async for response in call:
        for r in response.results:
            assert r.id not in results, f"call {r.id} answered twice"
            results[r.id] = r
    return results


def test_many_calls_on_one_stream_get_their_own_answers(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        s = Session(71)
        puts = [
            pb.PipelineCall(id=i, put=pb.PutRequest(session=s.next(), key=b"k%d" % i, value=b"v"))
            for i in range(1, 51)
        ]
        results = await exchange(client.pipeline, [puts[:20], puts[20:]])
        assert sorted(results) == list(range(1, 51))
        revisions = {r.put.header.revision for r in results.values()}
        assert len(revisions) == 50  # each put its own revision
        reads = [pb.PipelineCall(id=i, range=pb.RangeRequest(key=b"k%d" % i)) for i in range(1, 51)]
        seq = pb.SequenceCreateRequest(session=s.next(), name="ids", start=1, increment=1)
        await client.seq.Create(seq)
        nexts = [
            pb.PipelineCall(
                id=100 + i,
                sequence_next=pb.SequenceNextRequest(session=s.next(), name="ids", count=2),
            )
            for i in range(10)
        ]
        cas = pb.PipelineCall(
            id=200,
            txn=pb.TxnRequest(
                session=s.next(),
                compares=[pb.Compare(key=b"k1", target=pb.Compare.VALUE, value=b"v")],
                success=[pb.TxnOp(put=pb.PutRequest(key=b"k1", value=b"w"))],
            ),
        )
        results = await exchange(client.pipeline, [reads, nexts, [cas]])
        assert all(results[i].range.kvs[0].value == b"v" for i in range(2, 51))  # k1: the CAS races
        firsts = sorted(results[100 + i].sequence_next.first for i in range(10))
        assert firsts == list(range(1, 21, 2))  # blocks of two, never the same value twice
        assert results[200].txn.succeeded
        kv = await client.kv.Range(pb.RangeRequest(key=b"k1"))
        assert kv.kvs[0].value == b"w"

    with_cluster(tmp_path, scenario)


def test_a_bad_call_is_an_error_result_and_the_others_still_run(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        s = Session(72)
        calls = [
            pb.PipelineCall(id=1, put=pb.PutRequest(session=s.next(), key=b"", value=b"x")),
            pb.PipelineCall(id=2),  # no request at all
            pb.PipelineCall(id=3, put=pb.PutRequest(session=s.next(), key=b"ok", value=b"x")),
            pb.PipelineCall(id=4, lease_revoke=pb.LeaseRevokeRequest(session=s.next(), id=999)),
        ]
        results = await exchange(client.pipeline, [calls])
        assert results[1].error.code == "INVALID_ARGUMENT"
        assert "key" in results[1].error.message
        assert results[2].error.code == "INVALID_ARGUMENT"
        assert "no request" in results[2].error.message
        assert results[3].WhichOneof("response") == "put"
        assert results[4].error.code == "NOT_FOUND"

    with_cluster(tmp_path, scenario)


def test_a_follower_refuses_writes_with_the_leader_named(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        await c.register_directory()
        leader = await c.leader()
        follower = await c.follower()
        s = Session(73)
        call = pb.PipelineCall(id=1, put=pb.PutRequest(session=s.next(), key=b"k", value=b"v"))
        results = await exchange(follower.client.pipeline, [[call]])
        err = results[1].error
        assert err.code == "UNAVAILABLE"
        assert str(leader.served.port) in err.leader

    with_cluster(tmp_path, scenario)


def test_a_blocking_lock_waits_on_the_stream_while_other_calls_complete(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        a, b = Session(74), Session(75)
        la = await client.lease.Grant(pb.LeaseGrantRequest(session=a.next(), ttl_ms=10_000))
        lb = await client.lease.Grant(pb.LeaseGrantRequest(session=b.next(), ttl_ms=10_000))
        held = await client.lock.Lock(
            pb.LockRequest(session=a.next(), name="job", lease=la.id, wait=True)
        )
        stream = client.pipeline.Stream()
        wait = pb.LockRequest(session=b.next(), name="job", lease=lb.id, wait=True)
        put = pb.PutRequest(session=pb.Session(client_id=76, seq=1), key=b"x", value=b"1")
        await stream.write(
            pb.PipelineRequest(
                calls=[pb.PipelineCall(id=1, lock=wait), pb.PipelineCall(id=2, put=put)]
            )
        )
        first = await answers(stream)
        assert [r.id for r in first.results] == [2]  # the put, while the lock still waits
        await client.lock.Unlock(pb.UnlockRequest(session=a.next(), name="job", lease=la.id))
        second = await answers(stream)
        assert second.results[0].id == 1
        assert second.results[0].lock.granted
        assert second.results[0].lock.fencing_token > held.fencing_token
        stream.cancel()

    with_cluster(tmp_path, scenario)


def test_a_queued_lock_near_its_deadline_says_so_and_keeps_its_place(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        a, b = Session(77), Session(78)
        la = await client.lease.Grant(pb.LeaseGrantRequest(session=a.next(), ttl_ms=10_000))
        lb = await client.lease.Grant(pb.LeaseGrantRequest(session=b.next(), ttl_ms=10_000))
        await client.lock.Lock(pb.LockRequest(session=a.next(), name="job", lease=la.id, wait=True))
        wait = pb.LockRequest(session=b.next(), name="job", lease=lb.id, wait=True)
        results = await exchange(
            client.pipeline, [[pb.PipelineCall(id=1, timeout_ms=800, lock=wait)]]
        )
        error = results[1].error
        assert error.code == "UNAVAILABLE" and error.queued, error
        assert "still queued" in error.message
        info = await client.lock.Info(pb.LockInfoRequest(name="job"))
        assert info.waiters == 1  # the place is kept for the re-issued request
        again = asyncio.ensure_future(
            exchange(client.pipeline, [[pb.PipelineCall(id=1, timeout_ms=5_000, lock=wait)]])
        )
        await client.lock.Unlock(pb.UnlockRequest(session=a.next(), name="job", lease=la.id))
        assert (await asyncio.wait_for(again, 5))[1].lock.granted

    with_cluster(tmp_path, scenario)


def test_a_blocking_calls_deadline_error_names_the_callers_deadline(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        a = Session(79)
        la = await client.lease.Grant(pb.LeaseGrantRequest(session=a.next(), ttl_ms=10_000))
        # 1 ms is too short for the grant to be committed: the member's deadline error must
        # name the caller's 1 ms, not the service's 5 s default.
        wait = pb.LockRequest(session=a.next(), name="quick", lease=la.id, wait=True)
        results = await exchange(
            client.pipeline, [[pb.PipelineCall(id=1, timeout_ms=1, lock=wait)]]
        )
        error = results[1].error
        assert error.code in ("DEADLINE_EXCEEDED", "UNAVAILABLE"), error
        assert "5.0 s" not in error.message
        if error.code == "DEADLINE_EXCEEDED":
            assert error.message.startswith("no answer within 1 ms"), error.message

    with_cluster(tmp_path, scenario)


def test_a_batch_still_running_is_acknowledged(tmp_path: Path) -> None:
    """A call slower than the client's attempt timeout on a member that is alive must not
    look like a stopped member: the batch is acknowledged by an empty response soon after it
    arrives, long before its answer."""

    async def scenario(c: Cluster) -> None:
        client = (await c.leader()).client
        a, b = Session(80), Session(81)
        la = await client.lease.Grant(pb.LeaseGrantRequest(session=a.next(), ttl_ms=10_000))
        lb = await client.lease.Grant(pb.LeaseGrantRequest(session=b.next(), ttl_ms=10_000))
        await client.lock.Lock(pb.LockRequest(session=a.next(), name="job", lease=la.id, wait=True))
        stream = client.pipeline.Stream()
        wait = pb.LockRequest(session=b.next(), name="job", lease=lb.id, wait=True)
        await stream.write(
            pb.PipelineRequest(calls=[pb.PipelineCall(id=1, timeout_ms=20_000, lock=wait)])
        )
        # The lock waits in line for as long as "job" is held: only the acknowledgement can
        # come back meanwhile.
        ack = await asyncio.wait_for(stream.read(), 5)
        assert list(ack.results) == []
        await client.lock.Unlock(pb.UnlockRequest(session=a.next(), name="job", lease=la.id))
        granted = await answers(stream)
        assert granted.results[0].id == 1 and granted.results[0].lock.granted
        stream.cancel()

    with_cluster(tmp_path, scenario)
