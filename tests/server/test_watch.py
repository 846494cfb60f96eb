"""Watch over gRPC: from now, from revision 0, from a past revision, and from a compacted one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.raft import Message, MessageType
from tests.server.harness import Cluster, Session, rpc_error, with_cluster


def test_watch_streams_history_then_follows_and_refuses_compacted(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        client = leader.client
        s = Session(61)
        for i in range(5):
            await client.kv.Put(pb.PutRequest(session=s.next(), key=b"k%d" % i, value=b"v"))

        # From revision 1 (0 means "from now"): the whole history still fits.
        everything = client.watch.Watch(pb.WatchRequest(start_revision=1))
        created = await asyncio.wait_for(everything.read(), 5)
        assert not created.events and created.header.revision == 5
        past = await asyncio.wait_for(everything.read(), 5)
        assert [e.kv.key for e in past.events] == [b"k%d" % i for i in range(5)]
        assert [e.revision for e in past.events] == [1, 2, 3, 4, 5]

        # From now, one key, on a follower: only new changes to that key.
        follower = await c.follower()
        one = follower.client.watch.Watch(pb.WatchRequest(key=b"k1"))
        assert not (await asyncio.wait_for(one.read(), 5)).events
        await client.kv.Put(pb.PutRequest(session=s.next(), key=b"k0", value=b"x"))
        await client.kv.Delete(pb.DeleteRequest(session=s.next(), key=b"k1"))
        deleted = await asyncio.wait_for(one.read(), 5)
        assert [(e.type, e.kv.key) for e in deleted.events] == [(pb.Event.DELETE, b"k1")]
        one.cancel()

        got = [await asyncio.wait_for(everything.read(), 5) for _ in range(2)]
        assert [e.type for r in got for e in r.events] == [pb.Event.PUT, pb.Event.DELETE]

        # Locks and sequences are events too.
        lease = await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=10_000))
        lock = await client.lock.Lock(pb.LockRequest(session=s.next(), name="L", lease=lease.id))
        await client.seq.Create(pb.SequenceCreateRequest(session=s.next(), name="S", start=-5))
        msgs = [await asyncio.wait_for(everything.read(), 5) for _ in range(2)]
        events = [e for m in msgs for e in m.events]
        assert [(e.type, e.name) for e in events] == [
            (pb.Event.LOCK, "L"),
            (pb.Event.SEQUENCE, "S"),
        ]
        assert events[0].kv.version == lock.fencing_token and events[0].kv.lease == lease.id
        assert events[1].kv.value == b"-5"
        everything.cancel()

        # The history holds 20 events (see below): push revision 1 out of it.
        for i in range(25):
            await client.kv.Put(pb.PutRequest(session=s.next(), key=b"fill", value=b"%d" % i))
        compacted = client.watch.Watch(pb.WatchRequest(start_revision=1))
        err = await rpc_error(compacted.read())
        assert err.code() is grpc.StatusCode.OUT_OF_RANGE
        revision = leader.loop.fsm.revision
        assert "compacted" in err.details()
        assert f"resume from revision {revision + 1}" in err.details()

    with_cluster(tmp_path, scenario, history_events_max=20)


def test_a_follower_starts_a_watch_no_earlier_than_an_acknowledged_write(tmp_path: Path) -> None:
    """The start is linearizable: a follower that has not applied a write the leader already
    acknowledged waits (read barrier) instead of starting the watch behind it; asked for a
    serializable start, it answers from its own, older state."""

    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        follower = await c.follower()
        receive = c.net.members[follower.id]
        held: list[Message] = []
        beats_after_answer: list[Message] = []
        barrier_had_its_chance = asyncio.Event()

        def lagging(msg: Message) -> None:  # the follower gets no entries while held
            if msg.type is MessageType.APP and holding:
                held.append(msg)
                return
            receive(msg)
            # Once the leader has answered the follower's read barrier, 20 more heartbeats
            # (ticks of both members) are time enough for a wrong start to show.
            if msg.type is MessageType.READ_INDEX_RESP or beats_after_answer:
                beats_after_answer.append(msg)
                if sum(m.type is MessageType.HEARTBEAT for m in beats_after_answer) >= 20:
                    barrier_had_its_chance.set()

        holding = True
        c.net.members[follower.id] = lagging
        s = Session(71)
        put = await leader.client.kv.Put(pb.PutRequest(session=s.next(), key=b"a", value=b"1"))
        written = put.header.revision
        assert follower.loop.fsm.revision < written

        stale = follower.client.watch.Watch(pb.WatchRequest(key=b"a", serializable=True))
        assert (await asyncio.wait_for(stale.read(), 5)).header.revision < written
        stale.cancel()

        fresh = follower.client.watch.Watch(pb.WatchRequest(key=b"a"))
        first = asyncio.ensure_future(fresh.read())
        await asyncio.wait_for(barrier_had_its_chance.wait(), 10)
        assert not first.done()
        holding = False
        for msg in held:
            receive(msg)
        assert (await asyncio.wait_for(first, 5)).header.revision >= written
        await leader.client.kv.Put(pb.PutRequest(session=s.next(), key=b"a", value=b"2"))
        event = (await asyncio.wait_for(fresh.read(), 5)).events[0]
        assert (event.kv.value, event.revision) == (b"2", written + 1)
        fresh.cancel()

    with_cluster(tmp_path, scenario)
