"""Range and prefix reads, and typed results (no protobuf in the public API), against a real
in-process 3-member cluster."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from google.protobuf.message import Message

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import (
    Client,
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    InvalidArgument,
    KeyValue,
    MemberList,
    Put,
    Status,
    TxnResult,
    prefix_end,
)
from coordinator.client._kv import cas_request
from tests.server.harness import Cluster, with_cluster


def endpoints(c: Cluster) -> list[str]:
    return [f"127.0.0.1:{m.served.port}" for m in c.running()]


def test_prefix_end() -> None:
    assert prefix_end(b"app/") == b"app0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def test_get_range_prefix_and_many(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        await c.register_directory()
        async with Client(endpoints(c)) as client:
            for k in (b"app/a", b"app/b", b"app/c", b"apq", b"zz"):
                await client.put(k, k.upper())
            under = await client.get_prefix(b"app/")
            assert [kv.key for kv in under] == [b"app/a", b"app/b", b"app/c"]
            assert all(isinstance(kv, KeyValue) and kv.value == kv.key.upper() for kv in under)
            assert [kv.key for kv in await client.get_prefix(b"app/", limit=2)] == [
                b"app/a",
                b"app/b",
            ]
            assert await client.get_prefix(b"none/") == []
            everything = await client.get_prefix(b"")
            assert [kv.key for kv in everything] == [b"app/a", b"app/b", b"app/c", b"apq", b"zz"]
            ranged = await client.get_range(b"app/b", b"apq")
            assert [kv.key for kv in ranged] == [b"app/b", b"app/c"]
            assert [kv.key for kv in await client.get_range(b"zz")] == [b"zz"]
            stale_ok = await client.get_prefix(b"app/", serializable=True)
            assert len(stale_ok) <= 3
            many = await client.get_many([b"zz", b"missing", b"app/a"])
            assert [None if kv is None else kv.value for kv in many] == [b"ZZ", None, b"APP/A"]
            one = await client.get(b"app/a")
            assert one is not None and one.version == 1 and one.lease == 0
            assert one.mod_revision >= one.create_revision > 0
            with pytest.raises(dataclasses.FrozenInstanceError):
                one.value = b"x"  # type: ignore[misc]

    with_cluster(tmp_path, scenario)


def test_results_are_dataclasses_not_protobuf(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        await c.register_directory()
        async with Client(endpoints(c)) as client:
            members = await client.members()
            assert isinstance(members, MemberList) and len(members.members) == 3
            assert {m.role for m in members.members} == {"voter"}
            assert {m.status for m in members.members} <= {"leader", "reachable", "unknown"}
            assert members.leader in {m.id for m in members.members}
            status = await client.status()
            assert isinstance(status, Status) and status.term > 0
            assert status.applied_index <= status.commit_index
            assert set(status.voters) == {m.id for m in members.members}

            result = await client.txn(
                [Compare(b"t", "version", "=", 0)], [Put(b"t", b"1"), Get(b"t")]
            )
            assert isinstance(result, TxnResult) and result.succeeded
            put, read = result.results
            assert (put.kind, read.kind) == ("put", "range")
            assert read.kvs[0].value == b"1" and put.revision == result.revision
            again = await client.txn(
                [Compare(b"t", "value", "=", b"1"), Compare(b"t", "version", ">", 0)],
                [Delete(b"t")],
                [Get(b"t")],
            )
            assert again.succeeded and again.results[0].deleted == 1
            failed = await client.txn([Compare(b"t", "version", "!=", 0)], [], [Get(b"t")])
            assert not failed.succeeded and failed.results[0].kvs == ()
            with pytest.raises(InvalidArgument, match="the operand must be bytes"):
                Compare(b"t", "value", "=", 1)
            with pytest.raises(InvalidArgument, match="compare op '=='"):
                Compare(b"t", "version", "==", 1)

            events: list[Event] = []
            # From the revision after a write outside the range: what follows is seen
            # whenever the watch registers, so nothing waits for it to.
            start = await client.put(b"before-the-watch", b"") + 1

            async def follow() -> None:
                async for e in client.watch(b"w/", prefix_end(b"w/"), start_revision=start):
                    events.append(e)
                    if len(events) == 2:
                        return

            task = asyncio.create_task(follow())
            await client.put(b"w/1", b"a")
            await client.delete(b"w/1")
            await asyncio.wait_for(task, 10)
            assert [(e.type, e.kv.key) for e in events] == [
                (EventType.PUT, b"w/1"),
                (EventType.DELETE, b"w/1"),
            ]
            for value in (members, status, result, *events):
                assert dataclasses.is_dataclass(value) and not isinstance(value, Message)

    with_cluster(tmp_path, scenario)


@pytest.mark.parametrize("key", [b"k", b""])
@pytest.mark.parametrize("expected", [b"old", b"", None])
@pytest.mark.parametrize("new", [b"new", b""])
def test_cas_sends_what_the_equivalent_txn_sends(
    key: bytes, expected: bytes | None, new: bytes
) -> None:
    """Empty fields included: the shortcut fills messages in place, and a oneof set to
    defaults only must still be set."""
    session = pb.Session(client_id=5, seq=9)
    cmp = (
        Compare(key, "version", "=", 0)
        if expected is None
        else Compare(key, "value", "=", expected)
    )
    txn = pb.TxnRequest(session=session, compares=[cmp._to_pb()], success=[Put(key, new)._to_pb()])
    sent = cas_request(session, key, expected, new)
    assert sent == txn
    assert sent.SerializeToString() == txn.SerializeToString()
    assert sent.success[0].WhichOneof("op") == "put"


def test_cas_refuses_a_non_bytes_value_as_compare_does() -> None:
    with pytest.raises(InvalidArgument, match="the operand must be bytes") as made:
        Compare(b"k", "value", "=", "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="the operand must be bytes") as sent:
        cas_request(pb.Session(), b"k", "text", b"new")  # type: ignore[arg-type]
    assert str(made.value) == str(sent.value)
