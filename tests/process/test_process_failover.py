"""Process tests: locks, sequences and writes survive a SIGKILLed leader (DESIGN.md §5, §7.2).

Three real member processes with mutual TLS; several client tasks run a workload while the
leader is killed with SIGKILL (and restarted from its data dir); the checks are on what the
clients observed. Every wait is bounded and waits for progress, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from coordinator.client import ConcordError
from coordinator.testing.process_cluster import ProcessCluster, poll_until, run

pytestmark = pytest.mark.process

PROGRESS_TIMEOUT_S = 30.0


async def until(
    cond: Callable[[], bool],
    what: str,
    tasks: Sequence[asyncio.Task[None]],
    cluster: ProcessCluster,
) -> None:
    """Wait (bounded) for the workload to make `cond` true; re-raise a failed worker's error."""

    async def check() -> bool:
        for t in tasks:
            if t.done():
                t.result()  # a worker failed (or stopped early): surface why
        return cond()

    await poll_until(
        check, PROGRESS_TIMEOUT_S, what, on_timeout=cluster.log_tails, check=cluster.check_alive
    )


async def finish(stop: asyncio.Event, tasks: Sequence[asyncio.Task[None]]) -> None:
    stop.set()
    try:
        async with asyncio.timeout(PROGRESS_TIMEOUT_S):
            await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- locks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    worker: int
    token: int
    enter: float
    exit: float
    fence_current: bool


def test_locks_stay_exclusive_with_increasing_fencing_tokens_across_a_leader_kill(
    cluster: ProcessCluster,
) -> None:
    name = "jobs"
    counter = b"jobs/counter"
    workers = 4
    holds: list[Hold] = []
    stop = asyncio.Event()

    async def worker(n: int) -> None:
        async with cluster.client() as c:
            while not stop.is_set():
                async with c.lock(name, ttl_ms=15_000) as held:
                    enter = time.perf_counter()
                    # The protected resource: a read-modify-write that loses increments as
                    # soon as two holders overlap.
                    kv = await c.get(counter)
                    await c.put(counter, str(int(kv.value) + 1 if kv else 1).encode())
                    current = await c.check_fence(name, held.fencing_token)
                    holds.append(Hold(n, held.fencing_token, enter, time.perf_counter(), current))

    async def scenario() -> tuple[int, int]:
        await cluster.wait_ready()
        tasks = [asyncio.create_task(worker(n)) for n in range(workers)]
        try:
            await until(lambda: len(holds) >= 8, "8 lock grants", tasks, cluster)
            leader = await cluster.leader()
            cluster.kill(leader)
            at_kill = len(holds)
            await until(
                lambda: len(holds) >= at_kill + 8, "8 grants after the kill", tasks, cluster
            )
            await finish(stop, tasks)
        finally:
            for t in tasks:
                t.cancel()
        async with cluster.client() as c:
            kv = await c.get(counter)
        return at_kill, int(kv.value) if kv else 0

    at_kill, final_count = run(scenario(), 120)
    print(f"{len(holds)} grants ({at_kill} before the kill), last token {holds[-1].token}")

    by_grant = sorted(holds, key=lambda h: h.enter)
    for a, b in itertools.pairwise(by_grant):
        assert a.exit <= b.enter, f"critical sections overlap: {a} and {b}"
        assert a.token < b.token, f"fencing tokens do not increase in grant order: {a} then {b}"
    assert all(h.fence_current for h in holds), [h for h in holds if not h.fence_current]
    assert final_count == len(holds), "an increment was lost: two holders overlapped"
    assert len(holds) >= at_kill + 8
    assert len({h.worker for h in holds}) == workers  # every worker got the lock


# --- sequences ---------------------------------------------------------------------------------


def test_sequence_values_never_repeat_across_two_leader_kills(cluster: ProcessCluster) -> None:
    name = "ids"
    blocks: list[tuple[int, list[int]]] = []
    stop = asyncio.Event()

    async def worker(n: int) -> None:
        count = 1 + n % 3
        async with cluster.client() as c:
            while not stop.is_set():
                blocks.append((count, await c.sequence_next(name, count)))

    async def kill_and_restart_leader(tasks: Sequence[asyncio.Task[None]]) -> None:
        leader = await cluster.leader()
        cluster.kill(leader)
        before = len(blocks)
        await until(lambda: len(blocks) >= before + 15, "15 blocks after a kill", tasks, cluster)
        cluster.restart(leader)
        await cluster.wait_ready([leader])

    async def scenario() -> None:
        await cluster.wait_ready()
        async with cluster.client() as c:
            await c.sequence_create(name)
        tasks = [asyncio.create_task(worker(n)) for n in range(6)]
        try:
            await until(lambda: len(blocks) >= 15, "15 blocks", tasks, cluster)
            await kill_and_restart_leader(tasks)
            await kill_and_restart_leader(tasks)
            before = len(blocks)
            await until(lambda: len(blocks) >= before + 10, "10 more blocks", tasks, cluster)
            await finish(stop, tasks)
        finally:
            for t in tasks:
                t.cancel()

    run(scenario(), 120)
    print(f"{len(blocks)} blocks; values {min(v for _, b in blocks for v in b)}..")

    values = [v for _, block in blocks for v in block]
    for count, block in blocks:
        assert len(block) == count and block == list(range(block[0], block[0] + count)), block
    repeated = sorted(v for v, n in Counter(values).items() if n > 1)
    assert not repeated, f"sequence values issued twice: {repeated}"
    assert len(values) >= 55


# --- acknowledged writes -----------------------------------------------------------------------


def test_a_leader_killed_mid_load_loses_no_acknowledged_write(cluster: ProcessCluster) -> None:
    acked: list[bytes] = []
    unavailable: list[str] = []
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        async with cluster.client() as c:
            i = 0
            while not stop.is_set():
                key = f"ack/{n}/{i}".encode()
                i += 1
                try:
                    await c.put(key, key)
                except ConcordError as err:
                    if err.code != "UNAVAILABLE":
                        raise
                    unavailable.append(f"{key!r}: {err}")  # not acknowledged: no promise
                else:
                    acked.append(key)

    async def read_back(endpoints: Sequence[int] | None) -> list[bytes]:
        """The acknowledged keys that do not read back with their value (linearizable)."""
        missing: list[bytes] = []
        gate = asyncio.Semaphore(16)
        async with cluster.client(endpoints) as c:

            async def check(key: bytes) -> None:
                async with gate:
                    kv = await c.get(key)
                if kv is None or kv.value != key:
                    missing.append(key)

            await asyncio.gather(*(check(k) for k in acked))
        return missing

    async def scenario() -> tuple[int, list[bytes], list[bytes]]:
        await cluster.wait_ready()
        tasks = [asyncio.create_task(writer(n)) for n in range(8)]
        try:
            await until(lambda: len(acked) >= 40, "40 acknowledged puts", tasks, cluster)
            leader = await cluster.leader()
            cluster.kill(leader)
            at_kill = len(acked)
            await cluster.leader(other_than=leader)
            await until(
                lambda: len(acked) >= at_kill + 40, "40 puts after the kill", tasks, cluster
            )
            await finish(stop, tasks)
        finally:
            for t in tasks:
                t.cancel()
        missing = await read_back(None)
        # The killed leader, restarted from its data dir, serves them too.
        cluster.restart(leader)
        await cluster.wait_ready([leader])
        missing_there = await read_back([leader])
        return at_kill, missing, missing_there

    at_kill, missing, missing_there = run(scenario(), 120)
    print(f"{len(acked)} puts acknowledged ({at_kill} before the kill), {len(unavailable)} not")
    assert len(acked) >= at_kill + 40
    assert not missing, f"acknowledged writes lost: {missing[:20]} ({len(missing)} of {len(acked)})"
    assert not missing_there, (
        f"the restarted member lacks acknowledged writes: {missing_there[:20]}"
    )
