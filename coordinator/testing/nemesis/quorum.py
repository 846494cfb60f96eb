"""The quorum experiment: take members down one at a time, then bring them back.

For a cluster of N members (3 or 5): a client takes a lock (lease TTL 8 s, kept alive) before
anything fails, and two clients keep adding to a set throughout. Then members are killed
with SIGKILL one at a time, the leader first, down to one survivor. After each kill, four
probes run at once against whatever is left:

- a write (a put; the client retries for up to PROBE_TIMEOUT_S without a quorum, and for up
  to LIVE_TIMEOUT_S with one, since an election may be under way),
- a linearizable read,
- a *new* lock grant (a lease and a lock nobody holds),
- on every survivor by itself: a serializable read, and whether the lock granted before the
  failures is still listed (a serializable lock query).

Then the members come back one at a time, and we time from starting the member that
restores a majority to the first write that succeeds. At the end every acknowledged add must
be present (the set check), and the lock granted at the start must still be current
(CheckFence): a minority revokes nothing, and a new leader gives every lease its full TTL.

The expectations, checked: with up to (N-1)/2 down, writes and reads succeed; with more down,
writes, linearizable reads and new grants fail with UNAVAILABLE, serializable reads still
answer, the held lock is still listed; service resumes once a majority is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc as rpc
from coordinator.client import Client, ConcordError, error_for

from .checks import CheckReport, check_set
from .cluster import Cluster
from .history import Clock
from .runner import Outcome
from .workloads import SetWorkload, until_ok

PROBE_TIMEOUT_S = 4.0
"""How long the client retries when no quorum is expected (the table shows this bound)."""
LIVE_TIMEOUT_S = 15.0
"""How long the client may retry when a quorum is up: a bound on an election (and on a
starved machine), not a measurement; the table shows the time taken."""
RESUME_TIMEOUT_S = 30.0
"""Bound on the first write once a majority is back (the restarted member's start-up, its
peers' reconnect back-off and an election)."""
LOCK_TTL_MS = 8000
HELD_LOCK = "quorum-held"
NEW_LOCK = "quorum-new"


@dataclass
class Probe:
    """One call's result: 'ok' or the status code, and how long it took."""

    result: str
    seconds: float
    message: str = ""

    def cell(self) -> str:
        return f"{self.result} ({self.seconds:.1f} s)"


async def probe(call: Awaitable[object], bound_s: float = PROBE_TIMEOUT_S + 3) -> Probe:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(bound_s):
            await call
    except ConcordError as err:
        return Probe(err.code, time.perf_counter() - started, err.message)
    except TimeoutError:
        return Probe("TIMEOUT", time.perf_counter() - started)
    return Probe("ok", time.perf_counter() - started)


async def _put_once(cluster: Cluster, member: int) -> None:
    """One Put RPC to `member`, on a channel of its own: no leader discovery, no retry (the
    client library's calls retry until their whole budget is spent, so they cannot show
    what one member answers by itself)."""
    endpoint = cluster.members[member].client_address
    async with grpc.aio.secure_channel(endpoint, cluster.credentials()) as channel:
        stubs: Any = rpc  # the generated stubs are untyped
        stub = stubs.KVStub(channel)
        try:
            await stub.Put(pb.PutRequest(key=b"quorum/once", value=b"x"), timeout=PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            raise error_for(err.code().name, err.details() or "") from None


async def _held_lock_listed(c: Client, token: int) -> bool:
    info = await c.lock_info(HELD_LOCK, serializable=True)
    if not any(h.fencing_token == token for h in info.holders):
        raise ConcordError("NOT_FOUND", f"token {token} is not among the holders")
    return True


async def _new_grant(c: Client) -> None:
    lease = await c.lease_grant(LOCK_TTL_MS)
    lock = await c.acquire(NEW_LOCK, lease)
    await c.release(lock)
    await c.lease_revoke(lease)


class _Experiment:
    def __init__(self, n: int, seed: int, out_dir: Path) -> None:
        self.n = n
        self.seed = seed
        self.rng = random.Random(f"quorum/{n}/{seed}")
        self.clock = Clock()
        self.set = SetWorkload(self.clock, seed)
        self.rows: list[dict[str, object]] = []
        self.report = CheckReport("quorum", True, 0)
        self.token = 0
        self.outcome = Outcome(f"quorum-{n}", seed, n, [["kill one at a time"]], out_dir)

    def client(self, cluster: Cluster, timeout_s: float = PROBE_TIMEOUT_S) -> Client:
        return cluster.client(timeout_s=timeout_s, rpc_timeout_s=1.0)

    async def row(self, cluster: Cluster, down: list[int], step: int) -> dict[str, object]:
        live = [m.id for m in cluster.running()]
        quorum = len(live) >= self.n // 2 + 1
        timeout_s = LIVE_TIMEOUT_S if quorum else PROBE_TIMEOUT_S
        async with self.client(cluster, timeout_s) as c:
            key = f"quorum/probe/{step}".encode()
            write, lin, grant, (ser, held) = await asyncio.gather(
                probe(c.put(key, b"x"), timeout_s + 3),
                probe(c.get(b"quorum/probe/0"), timeout_s + 3),
                probe(_new_grant(c), 4 * timeout_s + 3),
                self.on_every_survivor(cluster, live),
            )
        once = "-"
        if not quorum:
            # One attempt, no client retries: how fast the member itself says no.
            first = await probe(_put_once(cluster, live[0]))
            once = f"{first.result} in {first.seconds:.2f} s"
            if first.result != "UNAVAILABLE" or "no quorum" not in first.message:
                self.report.fail(
                    f"N={self.n}, {len(down)} down: one write attempt gave {first.result} "
                    f"({first.message}), expected UNAVAILABLE 'no quorum'"
                )
        row: dict[str, object] = {
            "members": self.n,
            "down": len(down),
            "down_ids": sorted(down),
            "live": len(live),
            "majority": self.n // 2 + 1,
            "quorum": quorum,
            "write": write.cell(),
            "one_attempt": once,
            "linearizable_read": lin.cell(),
            "serializable_read": ser.cell(),
            "new_lock_grant": grant.cell(),
            "held_lock_listed": held.result,
            "errors": {
                what: p.message
                for what, p in (
                    ("write", write),
                    ("linearizable_read", lin),
                    ("serializable_read", ser),
                    ("new_lock_grant", grant),
                    ("held_lock", held),
                )
                if p.message
            },
        }
        expect = "ok" if quorum else "UNAVAILABLE"
        for what, p in (("write", write), ("linearizable read", lin), ("new lock grant", grant)):
            if p.result != expect:
                self.report.fail(
                    f"N={self.n}, {len(down)} down: {what} gave {p.result} ({p.message}), "
                    f"expected {expect}"
                )
        if ser.result != "ok":
            self.report.fail(f"N={self.n}, {len(down)} down: serializable read gave {ser.result}")
        if held.result != "ok":
            self.report.fail(f"N={self.n}, {len(down)} down: the held lock is not listed")
        self.report.ops += 5
        return row

    async def on_every_survivor(self, cluster: Cluster, live: list[int]) -> tuple[Probe, Probe]:
        """A serializable read, and the held lock's listing, on each live member by itself;
        the first failure of each (else the slowest success)."""

        async def one(member: int) -> tuple[Probe, Probe]:
            async with cluster.client([member], timeout_s=PROBE_TIMEOUT_S) as c:
                ser = await probe(c.get(b"quorum/probe/0", serializable=True))
                held = await probe(_held_lock_listed(c, self.token))
            return ser, held

        results = await asyncio.gather(*(one(m) for m in live))

        def worst(probes: list[Probe]) -> Probe:
            failed = [p for p in probes if p.result != "ok"]
            return failed[0] if failed else max(probes, key=lambda p: p.seconds)

        return worst([r[0] for r in results]), worst([r[1] for r in results])

    async def wait_listed_everywhere(self, cluster: Cluster) -> None:
        """Until every member lists the held lock in its own state machine. The serializable
        probes ask each member by itself: a follower that has not applied the grant yet (it
        started last, or the write's majority did without it) would say NOT_FOUND for a
        reason that has nothing to do with losing members."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIVE_TIMEOUT_S
        for member in cluster.members:
            async with cluster.client([member], timeout_s=PROBE_TIMEOUT_S) as c:
                while (await probe(_held_lock_listed(c, self.token))).result != "ok":
                    if loop.time() > deadline:
                        self.report.fail(f"member {member} never listed the held lock")
                        return
                    await asyncio.sleep(0.05)  # another process's apply: nothing to await

    async def play(self, cluster: Cluster) -> None:
        await cluster.wait_ready(timeout_s=30.0)
        await cluster.leader(20.0)
        holder = cluster.client(timeout_s=PROBE_TIMEOUT_S)
        stop = asyncio.Event()
        keeper: asyncio.Task[None] | None = None
        writers = [
            asyncio.create_task(self.set.worker(i, cluster, stop)) for i in range(self.set.clients)
        ]
        try:
            lease = await until_ok(lambda: holder.lease_grant(LOCK_TTL_MS), "lease")
            keeper = asyncio.create_task(self._keep_alive(holder, lease))
            held = await until_ok(lambda: holder.acquire(HELD_LOCK, lease), "lock")
            self.token = held.fencing_token
            async with self.client(cluster) as c:
                await until_ok(lambda: c.put(b"quorum/probe/0", b"x"), "first write")
            await self.wait_listed_everywhere(cluster)
            self.rows.append(await self.row(cluster, [], 0))
            leader = await cluster.leader(20.0)  # the leader now, not at start-up
            others = [i for i in cluster.members if i != leader]
            order = [leader, *self.rng.sample(others, self.n - 1)]
            self.outcome.extra["kill_order"] = order[:-1]
            down: list[int] = []
            for step, victim in enumerate(order[:-1], 1):
                cluster.kill(victim)
                down.append(victim)
                self.rows.append(await self.row(cluster, down, step))
            # Back, one at a time; time the return of service when a majority is back.
            while down:
                back = down.pop()
                started = time.perf_counter()
                cluster.start(back)
                live = self.n - len(down)
                if live == self.n // 2 + 1:
                    async with cluster.client(timeout_s=RESUME_TIMEOUT_S) as c:
                        result = await probe(c.put(b"quorum/resumed", b"x"), RESUME_TIMEOUT_S + 3)
                    resumed = time.perf_counter() - started
                    self.outcome.extra["resume_s"] = round(resumed, 2)
                    self.rows.append(
                        {
                            "members": self.n,
                            "down": len(down),
                            "live": live,
                            "majority": self.n // 2 + 1,
                            "quorum": True,
                            "restored": True,
                            "write": f"{result.result} ({resumed:.1f} s after the restart)",
                        }
                    )
                    if result.result != "ok":
                        self.report.fail(f"N={self.n}: no write after a majority came back")
            await cluster.wait_ready(timeout_s=30.0)
            await cluster.wait_converged(30.0)
            async with self.client(cluster) as c:
                current = await until_ok(lambda: c.check_fence(HELD_LOCK, self.token), "fence")
            self.outcome.extra["held_lock_current_after"] = current is True
            if current is not True:
                self.report.fail(
                    f"N={self.n}: the lock granted before the failures (token {self.token}) is "
                    f"no longer current after the quorum came back: {current}"
                )
        finally:
            stop.set()
            await asyncio.gather(*writers, return_exceptions=True)
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            await holder.close()
        # The writers' last acknowledged adds may still be on their way to a follower (the
        # lagged one gets its appends up to 10 ms late): every member must hold them once it
        # has caught up, not at the instant the writers stop.
        await cluster.wait_converged(30.0)
        await self.set.final_read(cluster)

    async def _keep_alive(self, c: Client, lease: int) -> None:
        while True:
            await asyncio.sleep(LOCK_TTL_MS / 4000)
            with contextlib.suppress(ConcordError, TimeoutError):
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await c.lease_keepalive_once(lease)


async def run_quorum(n: int, seed: int, results: Path, deadline_s: float = 150.0) -> Outcome:
    """The experiment for N = `n`; outputs under `results/quorum-<n>-seed<seed>/`."""
    out_dir = results / f"quorum-{n}-seed{seed}"
    exp = _Experiment(n, seed, out_dir)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"concord-quorum-{n}-"))
    cluster = Cluster(tmp, n)
    o = exp.outcome
    try:
        deadline = asyncio.timeout(deadline_s)
        try:
            async with deadline:
                await cluster.open()
                await exp.play(cluster)
        except TimeoutError as err:
            o.error = (
                f"the hard deadline ({deadline_s:.0f} s) passed: a hang"
                if deadline.expired()
                else f"TimeoutError: {err}"
            )
        except Exception as err:
            o.error = f"{type(err).__name__}: {err}"
    finally:
        await cluster.aclose()
        for m in cluster.members.values():
            if m.exits:
                o.problems.append(f"member {m.id} exited on its own (status {m.exits})")
        o.seconds = time.perf_counter() - started
        o.checks = [
            exp.report,
            check_set(exp.set.recorder.ops, exp.set.final_leader, exp.set.final_members),
        ]
        o.extra["quorum_table"] = exp.rows
        _write(exp, cluster, out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    return o


def _write(exp: _Experiment, cluster: Cluster, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "history.jsonl").open("w") as f:
        for op in exp.set.recorder.ops:
            f.write(json.dumps(op.to_json(), default=str) + "\n")
    for m in cluster.members.values():
        with contextlib.suppress(OSError):
            shutil.copyfile(m.log_path, out / f"member-{m.id}.log")
    (out / "summary.json").write_text(json.dumps(exp.outcome.summary(), indent=1, default=str))


def table(rows: list[dict[str, object]]) -> str:
    """The rows as a Markdown table."""
    head = (
        "| N | down | live / majority | write | one write attempt "
        "| linearizable read | serializable read | new lock grant | lock granted before |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    for r in rows:
        if r.get("restored"):
            lines.append(
                f"| {r['members']} | {r['down']} (majority back) | {r['live']} / {r['majority']} "
                f"| {r['write']} | | | | | |"
            )
            continue
        held = "still held" if r["held_lock_listed"] == "ok" else r["held_lock_listed"]
        lines.append(
            f"| {r['members']} | {r['down']} | {r['live']} / {r['majority']} | {r['write']} "
            f"| {r['one_attempt']} | {r['linearizable_read']} | {r['serializable_read']} "
            f"| {r['new_lock_grant']} | {held} |"
        )
    return "\n".join(lines)
