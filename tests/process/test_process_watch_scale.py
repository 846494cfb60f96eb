"""Process test: watch streams opened at once on a real 3-member TLS cluster all start.

gRPC core cancels calls at random once more than 1,000 wait for the server to take them
(`coordinator.server.server.client_server_options`), so a burst of streams on one member used
to lose some of them with a spurious CANCELLED within a second of opening. Here every stream
must get its first message (the start) and then the one event written after all have
started, on whichever member it was opened (followers serve watches too), and none may end.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc
from coordinator.testing.process_cluster import MakeCluster, run

pytestmark = pytest.mark.process

rpc: Any = concord_pb2_grpc  # the generated stubs are untyped


@pytest.mark.parametrize(
    ("streams", "members"),
    [(1000, 3), (3000, 1)],
    ids=["1000-over-3-members", "3000-on-one-member"],
)
def test_watch_streams_opened_at_once_all_start_and_see_the_event(
    make_cluster: MakeCluster, streams: int, members: int
) -> None:
    cluster = make_cluster(3)

    async def scenario() -> None:
        await cluster.wait_ready()
        await cluster.leader()
        creds = cluster.credentials()
        channels = [grpc.aio.secure_channel(a, creds) for a in cluster.endpoints()[:members]]
        try:
            stubs = [rpc.WatchStub(ch) for ch in channels]
            calls = [
                stubs[i % len(stubs)].Watch(pb.WatchRequest(key=b"/scale/", range_end=b"/scale0"))
                for i in range(streams)
            ]
            starts = await asyncio.wait_for(asyncio.gather(*(s.read() for s in calls)), 60)
            assert all(isinstance(m, pb.WatchResponse) and not m.events for m in starts)
            start = max(m.header.revision for m in starts)

            async with cluster.client() as client:
                await client.put(b"/scale/k", b"v")
            firsts = await asyncio.wait_for(asyncio.gather(*(s.read() for s in calls)), 60)
            assert all(isinstance(m, pb.WatchResponse) for m in firsts), [
                s.code() for s, m in zip(calls, firsts, strict=True) if m is grpc.aio.EOF
            ]
            assert {(e.kv.key, e.revision > start) for m in firsts for e in m.events} == {
                (b"/scale/k", True)
            }
            assert sum(len(m.events) for m in firsts) == streams
            for s in calls:
                s.cancel()
        finally:
            for ch in channels:
                await ch.close()

    run(scenario(), 120)
