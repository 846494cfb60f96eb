"""RaftLoop as the core's asyncio shell: futures settled from the core's completion records,
and nothing left waiting when the loop stops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random

import pytest

from coordinator.core import MemoryLog, StoppedError
from coordinator.fsm import Put, StateMachine
from coordinator.raft import ConfState, Snapshot, SnapshotMeta
from coordinator.runtime.clock import SystemClock
from coordinator.runtime.loop import LoopConfig, RaftLoop
from coordinator.runtime.threads import ThreadFactory, one_thread
from coordinator.runtime.transport import LoopbackTransport


def single_member(threads: ThreadFactory = one_thread) -> RaftLoop:
    log = MemoryLog()
    log.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1})))))
    return RaftLoop(
        LoopConfig(id=1, tick_s=0.01, snapshot_every_entries=8, snapshot_keep_entries=2),
        log,
        LoopbackTransport(),
        StateMachine(),
        SystemClock(),
        rng=random.Random(1),
        threads=threads,
    )


def test_requests_queued_when_the_loop_stops_fail_with_stopped() -> None:
    async def scenario() -> None:
        loop = single_member()
        read = loop.read_barrier_future()
        rotation = asyncio.ensure_future(loop.rotate_data_key())
        write = loop.submit(Put(b"k", b"v"))
        await asyncio.sleep(0)  # the rotation's request is queued
        loop.stop()
        await loop.run()
        for fut in (read, rotation, write):
            with pytest.raises(StoppedError):
                await asyncio.wait_for(fut, 1)

    asyncio.run(scenario())


def test_a_single_member_answers_writes_reads_and_rotations_through_the_core() -> None:
    async def scenario() -> None:
        loop = single_member()
        task = asyncio.create_task(loop.run())
        try:
            async with asyncio.timeout(10):
                await loop.campaign()
                applied = [await loop.propose(Put(b"k", b"%d" % n), 7, n + 1) for n in range(20)]
                assert [a.index for a in applied] == sorted({a.index for a in applied})
                index = await loop.read_barrier()
                assert index >= applied[-1].index and loop.fsm.applied_index >= index
                rotation = await loop.rotate_data_key()
                assert rotation.snapshot_index == loop.storage.snapshot().meta.index
                assert loop.storage.first_index() == rotation.snapshot_index + 1
        finally:
            loop.stop()
            await task

    asyncio.run(scenario())


def test_the_loop_shuts_its_threads_down_when_it_stops() -> None:
    """The disk and snapshot threads come from the factory the loop is given and belong to
    the loop: once `run()` ends they take no more work (a stopped member leaves no thread)."""
    made: dict[str, concurrent.futures.Executor] = {}

    def threads(name: str) -> concurrent.futures.Executor:
        made[name] = one_thread(name)
        return made[name]

    async def scenario() -> None:
        loop = single_member(threads)
        task = asyncio.create_task(loop.run())
        try:
            async with asyncio.timeout(10):
                await loop.campaign()
                for n in range(20):
                    await loop.propose(Put(b"k", b"%d" % n), 7, n + 1)
        finally:
            loop.stop()
            await task

    asyncio.run(scenario())
    assert sorted(made) == ["snapshot-1", "wal-1"]
    for executor in made.values():
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(lambda: None)
