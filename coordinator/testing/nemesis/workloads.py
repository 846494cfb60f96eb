"""Workloads: concurrent clients doing real operations against the cluster while faults happen.

Each workload runs `clients` worker tasks, each with its own `Client` (its own sessions),
starting its endpoint list at a different member so that clients are spread over the
cluster (and some are talking to a member when it is killed or paused). Every call is timed
and classified by a `Recorder` (see `history.py`). Workers stop when the scenario sets
`stop`; a call in flight then is recorded as `info` (unknown) if it does not finish.

- `RegisterWorkload` (CAS register): reads, writes of unique values, and compare-and-swaps
  from the value last read, on a few keys; checked for linearizability per key. Two of its
  clients are pinned to one member each (see `RegisterWorkload.roaming`).
- `SequenceWorkload`: `next(n)` on one sequence; every value must be unique and each
  client's values must increase, across crashes.
- `SetWorkload` (no lost writes): each add puts a new key; after the faults are healed every
  acknowledged add must be present, read through the leader and from every member's own
  state machine.
- `LockWorkload`: a mutex with fencing tokens. Each critical section writes to a
  `FencedResource` (a storage service that remembers the highest token it has seen and
  refuses older ones, as Kleppmann's fencing example and Chubby's sequencers) and ends by
  asking the service whether its token is still current (CheckFence).

Keys, names and values are namespaced per workload, so the workloads share one cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Protocol

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import Client, ConcordError, KeyValue, Lock

from .cluster import Cluster
from .history import Clock, Recorder

OP_TIMEOUT_S = 6.0
"""A bound on one client call (the client's own retries give up after 3 s)."""
LOCK_RPC_TIMEOUT_S = 1.0


class Workload(Protocol):
    name: str
    clients: int
    recorder: Recorder

    async def setup(self, cluster: Cluster) -> None:
        """Create what the workers need (before the faults start)."""
        ...

    async def worker(self, index: int, cluster: Cluster, stop: asyncio.Event) -> None:
        """One client's loop, until `stop` is set."""
        ...

    async def final_read(self, cluster: Cluster) -> None:
        """After healing: read what the checker needs from the converged cluster."""
        ...

    def to_json(self) -> dict[str, object]:
        """Everything to save besides the ops (final reads, grants)."""
        ...


async def think(rng: random.Random, stop: asyncio.Event, max_s: float) -> None:
    """A short pause between a worker's calls (returns early when `stop` is set)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), rng.uniform(0, max_s))


async def until_ok(call: Any, what: str, timeout_s: float = 30.0) -> Any:  # noqa: ANN401
    """Retry `call()` (an awaitable factory) on unknown outcomes until it succeeds; a definite
    refusal is returned as the ConcordError. Used for set-up and final reads only."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            async with asyncio.timeout(max(0.1, deadline - loop.time())):
                return await call()
        except ConcordError as err:
            if err.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                return err
            if loop.time() > deadline:
                raise TimeoutError(f"{what}: no success within {timeout_s:.0f} s: {err}") from err
        except TimeoutError:
            raise TimeoutError(f"{what}: no success within {timeout_s:.0f} s") from None
        await asyncio.sleep(0.1)


# --- CAS register ------------------------------------------------------------------------------


class RegisterWorkload:
    name = "register"

    def __init__(
        self,
        clock: Clock,
        seed: int,
        *,
        clients: int = 4,
        pinned: int = 2,
        keys: int = 3,
        think_s: float = 0.02,
    ) -> None:
        self.seed = seed
        self.clients = clients + pinned
        self.roaming = clients
        """Workers below this index know every member; the others start with one member
        only (and reach another only when it redirects them), so their reads are served by
        that member whatever happens to it: a partitioned or woken-up member included."""
        self.keys = [f"register/{k}" for k in range(keys)]
        self.think_s = think_s
        self.recorder = Recorder(self.name, clock)

    async def setup(self, cluster: Cluster) -> None:
        pass

    async def worker(self, index: int, cluster: Cluster, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/register/{index}")
        process = index
        written = 0
        last_seen: dict[str, str | None] = {}
        rec = self.recorder
        member = 1 + index % cluster.size
        # Roaming clients start at their member and fail over; the others stay on it.
        client = cluster.client(first=member) if index < self.roaming else cluster.client([member])
        async with client as c:
            while not stop.is_set():
                key = rng.choice(self.keys)
                k = key.encode()
                roll = rng.random()
                if roll < 0.4:
                    op, _ = await rec.run(
                        process,
                        "read",
                        {"key": key},
                        partial(c.get, k),
                        timeout_s=OP_TIMEOUT_S,
                        convert=_value,
                    )
                    if op.outcome == "ok":
                        last_seen[key] = op.result  # type: ignore[assignment]
                elif roll < 0.7:
                    written += 1
                    value = f"{index}.{written}"
                    op, _ = await rec.run(
                        process,
                        "write",
                        {"key": key, "value": value},
                        partial(c.put, k, value.encode()),
                        timeout_s=OP_TIMEOUT_S,
                        convert=lambda _: None,
                    )
                else:
                    written += 1
                    value = f"{index}.{written}"
                    expected = last_seen.get(key)
                    old = expected.encode() if expected is not None else None
                    op, _ = await rec.run(
                        process,
                        "cas",
                        {"key": key, "expected": expected, "value": value},
                        partial(c.cas, k, old, value.encode()),
                        timeout_s=OP_TIMEOUT_S,
                    )
                if op.outcome == "info":
                    process += self.clients
                await think(rng, stop, self.think_s)

    async def final_read(self, cluster: Cluster) -> None:
        pass

    def to_json(self) -> dict[str, object]:
        return {"keys": self.keys}


def _value(kv: KeyValue | None) -> str | None:
    return None if kv is None else bytes(kv.value).decode()


# --- sequence ----------------------------------------------------------------------------------


class SequenceWorkload:
    name = "sequence"
    sequence = "nemesis-seq"

    def __init__(self, clock: Clock, seed: int, *, clients: int = 2, think_s: float = 0.02) -> None:
        self.seed = seed
        self.clients = clients
        self.think_s = think_s
        self.recorder = Recorder(self.name, clock)

    async def setup(self, cluster: Cluster) -> None:
        async with cluster.client() as c:
            result = await until_ok(lambda: c.sequence_create(self.sequence), "create sequence")
            if isinstance(result, ConcordError) and result.code != "ALREADY_EXISTS":
                raise result

    async def worker(self, index: int, cluster: Cluster, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/sequence/{index}")
        process = index
        async with cluster.client(first=1 + (index + 1) % cluster.size) as c:
            while not stop.is_set():
                count = rng.randint(1, 3)
                op, _ = await self.recorder.run(
                    process,
                    "next",
                    {"count": count},
                    partial(c.sequence_next, self.sequence, count),
                    timeout_s=OP_TIMEOUT_S,
                )
                if op.outcome == "info":
                    process += self.clients
                await think(rng, stop, self.think_s)

    async def final_read(self, cluster: Cluster) -> None:
        pass

    def to_json(self) -> dict[str, object]:
        return {"sequence": self.sequence}


# --- set (no lost writes) ----------------------------------------------------------------------


class SetWorkload:
    name = "set"
    prefix = "set/"

    def __init__(self, clock: Clock, seed: int, *, clients: int = 2, think_s: float = 0.02) -> None:
        self.seed = seed
        self.clients = clients
        self.think_s = think_s
        self.recorder = Recorder(self.name, clock)
        self.final_leader: list[str] | None = None
        """Every element, read linearizably after healing (None: the read failed)."""
        self.final_members: dict[int, list[str]] = {}
        """Member id -> every element in its own state machine after it caught up."""

    async def setup(self, cluster: Cluster) -> None:
        pass

    async def worker(self, index: int, cluster: Cluster, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/set/{index}")
        process = index
        n = 0
        async with cluster.client(first=1 + (index + 2) % cluster.size) as c:
            while not stop.is_set():
                n += 1
                element = f"{index}-{n}"
                key = (self.prefix + element).encode()
                op, _ = await self.recorder.run(
                    process,
                    "add",
                    {"element": element},
                    partial(c.put, key, b"1"),
                    timeout_s=OP_TIMEOUT_S,
                    convert=lambda _: None,
                )
                if op.outcome == "info":
                    process += self.clients
                await think(rng, stop, self.think_s)

    async def final_read(self, cluster: Cluster) -> None:
        async with cluster.client(timeout_s=10.0, rpc_timeout_s=5.0) as c:
            elements = await until_ok(lambda: read_prefix(c, self.prefix, False), "final read")
            if isinstance(elements, ConcordError):
                raise elements
            self.final_leader = elements
        for m in cluster.running():
            async with cluster.client([m.id], timeout_s=10.0, rpc_timeout_s=5.0) as c:
                got = await until_ok(lambda: read_prefix(c, self.prefix, True), "member read")
                if not isinstance(got, ConcordError):
                    self.final_members[m.id] = got

    def to_json(self) -> dict[str, object]:
        return {
            "final_leader_count": None if self.final_leader is None else len(self.final_leader),
            "final_member_counts": {str(i): len(v) for i, v in self.final_members.items()},
        }


async def _range(c: Client, key: bytes, end: bytes, serializable: bool, stubs: Any) -> Any:  # noqa: ANN401 (generated, untyped stubs and messages)
    req = pb.RangeRequest(key=key, range_end=end, limit=1000, serializable=serializable)
    return await stubs.kv.Range(req, timeout=c.rpc_timeout_s)


async def read_prefix(c: Client, prefix: str, serializable: bool) -> list[str]:
    """Every key under `prefix` (without it), through `c`; serializable: from the member's
    own state machine."""
    start = prefix.encode()
    end = start[:-1] + bytes([start[-1] + 1])
    out: list[str] = []
    key = start
    while True:
        resp = await c.call(partial(_range, c, key, end, serializable))
        kvs = list(resp.kvs)
        out.extend(bytes(kv.key).decode()[len(prefix) :] for kv in kvs)
        if not resp.more or not kvs:
            return out
        key = bytes(kvs[-1].key) + b"\0"


# --- locks with fencing tokens -----------------------------------------------------------------


@dataclass
class ResourceWrite:
    at_us: int
    token: int
    grant: int
    accepted: bool


class FencedResource:
    """A storage service that honours fencing tokens: it remembers the highest token it has
    accepted and refuses writes carrying a lower one. It lives in the test process, so its
    view is exact."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.max_token = 0
        self.writes: list[ResourceWrite] = []

    def write(self, token: int, grant: int) -> bool:
        accepted = token >= self.max_token
        if accepted:
            self.max_token = token
        self.writes.append(ResourceWrite(self.clock.now_us(), token, grant, accepted))
        return accepted


@dataclass
class Grant:
    """One attempt at the lock by one worker, and what came of it."""

    id: int
    process: int
    acquire_call_us: int
    acquire_ret_us: int | None = None
    """None: not granted, or the outcome is unknown."""
    token: int = 0
    fence_call_us: int | None = None
    fence_ret_us: int | None = None
    fence_current: bool | None = None
    end_call_us: int | None = None
    """When the worker first asked to give the lock up (release, or revoke of its lease)."""
    released: bool = False
    stalled: bool = False
    """The holder slept past its lease's TTL inside the section (see `LockWorkload`)."""
    writes_accepted: int = 0
    writes_refused: int = 0


class LockWorkload:
    name = "locks"
    lock = "nemesis-lock"

    def __init__(
        self,
        clock: Clock,
        seed: int,
        *,
        clients: int = 3,
        ttl_ms: int = 5000,
        writes: int = 3,
        stall_p: float = 0.04,
        stall_ttl_ms: int = 1500,
    ) -> None:
        self.seed = seed
        self.clients = clients
        self.ttl_ms = ttl_ms
        self.stall_p = stall_p
        """The chance that a critical section *stalls*: its holder stops renewing its lease
        (a short one) and sleeps past its TTL inside the section, as a paused process or a
        long GC would, then carries on writing. The service should have ended its lease and
        granted the lock on; the resource must refuse its writes and CheckFence say no."""
        self.stall_ttl_ms = stall_ttl_ms
        self.writes_per_section = writes
        self.clock = clock
        self.recorder = Recorder(self.name, clock)
        self.resource = FencedResource(clock)
        self.grants: list[Grant] = []

    async def setup(self, cluster: Cluster) -> None:
        pass

    async def worker(self, index: int, cluster: Cluster, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/locks/{index}")
        process = index
        # The per-call timeout is shorter than a stalled section, so lock waits go through
        # the member's "still queued" answers and the client's re-issues, under the faults
        # (the path tests/nemesis/test_known_bugs.py pins).
        client = cluster.client(first=1 + index % cluster.size, rpc_timeout_s=LOCK_RPC_TIMEOUT_S)
        async with client as c:
            while not stop.is_set():
                if not await self._section(c, process, rng, stop):
                    process += self.clients
                await think(rng, stop, 0.02)

    async def _section(
        self, c: Client, process: int, rng: random.Random, stop: asyncio.Event
    ) -> bool:
        """One lease, one acquire, one critical section, one release; False if some outcome
        was unknown (the worker then continues as a new process)."""
        rec = self.recorder
        stall = rng.random() < self.stall_p
        ttl_ms = self.stall_ttl_ms if stall else self.ttl_ms
        op, lease = await rec.run(
            process,
            "lease-grant",
            {"ttl_ms": ttl_ms},
            partial(c.lease_grant, ttl_ms),
            timeout_s=OP_TIMEOUT_S,
        )
        if lease is None:
            return op.outcome != "info"
        keeper = asyncio.create_task(self._keep_alive(c, lease, ttl_ms))
        grant = Grant(len(self.grants), process, self.clock.now_us(), stalled=stall)
        self.grants.append(grant)
        try:
            acquired = await rec.run(
                process,
                "acquire",
                {"lock": self.lock, "lease": lease},
                partial(c.acquire, self.lock, lease),
                timeout_s=2 * OP_TIMEOUT_S,
                convert=_token,
            )
            op, held = acquired
            grant.acquire_call_us = op.call_us
            if held is None:
                return op.outcome != "info"
            grant.acquire_ret_us = op.ret_us
            grant.token = token = held.fencing_token
            if stall:
                keeper.cancel()
                await asyncio.sleep(ttl_ms / 1000 * 1.7)
            for _ in range(self.writes_per_section):
                if self.resource.write(token, grant.id):
                    grant.writes_accepted += 1
                else:
                    grant.writes_refused += 1
                await asyncio.sleep(rng.uniform(0.002, 0.015))
            op, _ = await rec.run(
                process,
                "fence",
                {"lock": self.lock, "token": token},
                lambda: c.check_fence(self.lock, token),
                timeout_s=OP_TIMEOUT_S,
            )
            grant.fence_call_us, grant.fence_ret_us = op.call_us, op.ret_us
            if op.outcome == "ok":
                grant.fence_current = bool(op.result)
            grant.end_call_us = self.clock.now_us()
            op, _ = await rec.run(
                process,
                "release",
                {"lock": self.lock, "lease": lease},
                partial(c.release, held),
                timeout_s=OP_TIMEOUT_S,
            )
            grant.released = op.outcome == "ok"
            return op.outcome != "info"
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if grant.acquire_ret_us is not None and grant.end_call_us is None:
                grant.end_call_us = self.clock.now_us()
            # Ending the lease frees the lock even when the acquire's outcome is unknown.
            await rec.run(
                process,
                "revoke",
                {"lease": lease},
                lambda: c.lease_revoke(lease),
                timeout_s=OP_TIMEOUT_S,
            )

    async def _keep_alive(self, c: Client, lease: int, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            with contextlib.suppress(ConcordError):
                await c.lease_keepalive_once(lease)

    async def final_read(self, cluster: Cluster) -> None:
        pass

    def to_json(self) -> dict[str, object]:
        return {
            "lock": self.lock,
            "grants": [asdict(g) for g in self.grants],
            "resource_writes": [asdict(w) for w in self.resource.writes],
        }


def _token(lock: Lock) -> int:
    return lock.fencing_token


def all_workloads(clock: Clock, seed: int) -> Sequence[Workload]:
    return [
        RegisterWorkload(clock, seed),
        SequenceWorkload(clock, seed),
        SetWorkload(clock, seed),
        LockWorkload(clock, seed),
    ]
