"""Client.watch resumes from its next revision whenever a member ends the stream without a
final answer (slow consumer, member stopped), so the consumer sees every event exactly once,
in order; a resume whose revision was compacted meanwhile ends with OutOfRange. Against a
real in-process 3-member cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from coordinator.client import Client, Event, OutOfRange, prefix_end
from coordinator.server import ServiceConfig
from tests.server.harness import Cluster, wait_for, with_cluster

BIG = b"x" * (256 * 1024)
"""Values this large fill the HTTP/2 flow-control window of a stream nobody reads within a
few messages, so the member cannot write to it and the watch's queue overflows."""

PREFIX = b"w/"


def client_of(c: Cluster, first: int) -> Client:
    order = [first, *(m.id for m in c.running() if m.id != first)]
    return Client(
        [f"127.0.0.1:{c.members[i].served.port}" for i in order], timeout_s=20.0, rpc_timeout_s=5
    )


def slow_ends(c: Cluster) -> int:
    return sum(m.served.core.watchers.ended_slow for m in c.running())


async def started(c: Client, writer: Client) -> tuple[AsyncGenerator[Event, None], int]:
    """A prefix watch, open on its member, that has seen its first event (revision r0)."""
    r0 = await writer.put(PREFIX + b"first", b"v")
    it = c.watch(PREFIX, prefix_end(PREFIX), start_revision=r0)
    first = await anext(it)
    assert first.revision == r0
    return it, r0


def revisions(events: list[Event]) -> list[int]:
    return [e.revision for e in events]


def test_a_slow_consumer_is_ended_and_the_client_resumes_exactly_once_in_order(
    tmp_path: Path,
) -> None:
    async def scenario(c: Cluster) -> None:
        follower = await c.follower()
        async with client_of(c, follower.id) as reader, client_of(c, follower.id) as writer:
            it, _ = await started(reader, writer)
            written = [await writer.put(PREFIX + b"%d" % i, BIG) for i in range(40)]
            # The member ends the stream nobody read (its watch hub fans out off the Raft
            # loop, so the end may follow the last put by a moment on a loaded machine).
            await wait_for(lambda: slow_ends(c) >= 1)
            got = [await anext(it) for _ in written]
            assert revisions(got) == written  # every event once, in order, after the resume
            assert [e.kv.key for e in got] == [PREFIX + b"%d" % i for i in range(40)]
            await it.aclose()

    with_cluster(tmp_path, scenario, service=ServiceConfig(watch_queue_events_max=2))


def test_a_stopped_member_is_left_and_the_watch_resumes_on_another(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        follower = await c.follower()
        async with client_of(c, follower.id) as reader, client_of(c, leader.id) as writer:
            it, _ = await started(reader, writer)
            before = [await writer.put(PREFIX + b"a%d" % i, b"v") for i in range(5)]
            assert revisions([await anext(it) for _ in before]) == before
            await c.stop(follower.id)
            after = [await writer.put(PREFIX + b"b%d" % i, b"v") for i in range(5)]
            assert revisions([await anext(it) for _ in after]) == after
            await it.aclose()

    with_cluster(tmp_path, scenario)


def test_compaction_while_away_ends_the_watch_with_out_of_range(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        follower = await c.follower()
        async with client_of(c, follower.id) as reader, client_of(c, follower.id) as writer:
            it, _ = await started(reader, writer)
            for i in range(40):
                await writer.put(PREFIX + b"%d" % i, BIG)
            await wait_for(lambda: slow_ends(c) >= 1)
            for i in range(25):  # the history holds 20 events: the resume point leaves it
                await writer.put(b"other/%d" % i, b"v")
            seen: list[Event] = []

            async def consume() -> None:
                async for event in it:
                    seen.append(event)

            with pytest.raises(OutOfRange) as ended:
                await asyncio.wait_for(consume(), 30)
            assert "compacted" in ended.value.message
            assert revisions(seen) == sorted(set(revisions(seen)))  # in order, no repeats

    with_cluster(
        tmp_path,
        scenario,
        history_events_max=20,
        service=ServiceConfig(watch_queue_events_max=2),
    )
