"""Run every figure against every system and collect one JSON document.

Per system, two clusters are started one after the other, each fresh (new data directories):

A. the load figures, one cell per concurrency level (`bench.load.run_cell`), always aimed at
   the current leader; for Concord, a profiled extra write run (`bench.profile`, not
   counted in any figure); then the failover trials;
B. the key-count figures: load N keys in batches (one request = one log entry of
   `batch_max` puts), keep writing small puts until the member to be restarted holds every
   loaded key in its snapshot (Concord: the newest snapshot file's index covers the last load
   entry; PySyncObj: a dump written after the load; etcd keeps its state in its bbolt file,
   so no wait), read every member's resident memory, then SIGKILL that member (a follower)
   and time its restart from spawn until its own readiness signal says it serves.

Failover, per trial: wait until every member is ready, find the leader, open five probe
sessions on the survivors (connections warm), SIGKILL the leader, and let each probe send a
write every `PROBE_TIMEOUT_S` (each bounded by it), staggered so one starts every 50 ms; the
time from the kill to the first acknowledged write is the trial's figure. Then the killed
member is restarted and the cluster waited for before the next trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import profile
from .figures import BY_ID, LOAD_FIGURES, UNCONTENDED_LOCKS
from .load import Cell, Worker, run_cell
from .procs import memory_kib, wait_until
from .systems.base import Cluster, Session

VALUE = b"v" * 64
PROBES = 5
PROBE_TIMEOUT_S = 0.25
FAILOVER_LIMIT_S = 60.0
LOAD_CONCURRENCY = 64
LOAD_ATTEMPTS = 5
FILL_CONCURRENCY = 128
FILL_TIMEOUT_S = 60.0
FILL_LIMIT_S = 180.0


DEFAULT_KEYS = 1_000_000
"""The issue's million keys; `--keys N` (BENCH_ARGS) for a shorter run."""


@dataclass(frozen=True)
class Plan:
    quick: bool
    levels: tuple[int, ...]
    warmup_s: float
    duration_s: float
    failover_trials: int
    keys: int
    profile_s: float
    shared: bool = True
    """One client connection per cell shared by its N tasks (as an application shares one
    client); False: one connection per task."""
    pysyncobj_batch: bool = True
    """PySyncObj's default appendEntriesUseBatch."""
    keys_only: bool = False
    """Only the key-load figures (memory and restart with `keys` keys), on a fresh cluster."""

    @classmethod
    def full(cls) -> Plan:
        return cls(False, (1, 16, 64, 256), 1.0, 3.0, 5, DEFAULT_KEYS, 6.0)

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(True, (1, 64), 0.5, 1.5, 2, 20_000, 3.0)

    def with_overrides(self, **kw: Any) -> Plan:  # noqa: ANN401
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


Log = Callable[[str], None]


class FigureWorker:
    """A session plus the figure's operation for one task."""

    def __init__(self, session: Session, op: Callable[[], Awaitable[None]]) -> None:
        self.session = session
        self._op = op

    async def op(self) -> None:
        await self._op()

    async def close(self) -> None:
        await self.session.close()


def request_timeout_s(figure: str) -> float:
    """A lock waiter may wait behind every other task: give it time."""
    return 60.0 if figure.startswith("lock") else 10.0


def _opener(
    cluster: Cluster,
    figure: str,
    *,
    leader: int,
    cell_id: str,
    stats: dict[str, int],
    conn: object | None,
) -> Callable[[int], Awaitable[Worker]]:
    """open_worker(i) for one cell of a load figure: a session on the shared connection
    `conn`, or on its own (None). Lock figures count their acquire requests and completed
    cycles, the sequence figure its requests and values, the read figure its completed reads
    (warm-up included) in `stats`."""
    issued: set[int] = set()  # the sequence values drawn in this cell: none may come twice

    async def open_worker(i: int) -> Worker:
        if conn is not None:
            s = cluster.session_on(conn, owns=False)
        else:
            s = await cluster.session(leader, timeout_s=request_timeout_s(figure))
        try:
            await s.warm()
            op = await _operation(s, figure, i, cell_id, stats, issued=issued)
        except BaseException:
            await s.close()
            raise
        return FigureWorker(s, op)

    return open_worker


async def _operation(
    s: Session, figure: str, i: int, cell_id: str, stats: dict[str, int], *, issued: set[int]
) -> Callable[[], Awaitable[None]]:
    if figure == "write":
        n = 0

        async def write() -> None:
            nonlocal n
            n += 1
            await s.put(f"bench/w/{cell_id}/{i}/{n}".encode(), VALUE)

        return write
    if figure == "cas":
        key = f"bench/cas/{cell_id}/{i}".encode()
        current = b"0"
        await s.put(key, current)

        async def cas() -> None:
            nonlocal current
            new = str(int(current) + 1).encode()
            if not await s.cas(key, current, new):
                raise RuntimeError(f"CAS on {key!r} refused: nobody else writes it")
            current = new

        return cas
    if figure in ("lock_contended", "lock_uncontended"):
        await s.prepare_locks()
        # Names are new in every cell, so nothing a cancelled waiter of an earlier cell left
        # behind (PySyncObj's locks expire only after autoUnlockTime) can stand in the way.
        name = f"lock/{cell_id}" if figure == "lock_contended" else f"lock/{cell_id}/{i}"

        async def lock() -> None:
            # Awaited before the count is read: other tasks add to it while this one waits.
            attempts = await s.lock_cycle(name)
            stats["attempts"] = stats.get("attempts", 0) + attempts
            stats["cycles"] = stats.get("cycles", 0) + 1

        return lock
    if figure == "seq_next":
        last = 0

        async def seq() -> None:
            nonlocal last
            got, requests = await s.seq_next("bench-seq")
            if got <= last:
                raise RuntimeError(f"sequence went from {last} to {got}")
            # The tasks of a cell draw from one sequence: a value drawn twice is a lost
            # increment (every cell draws new values: a sequence never goes back).
            if got in issued:
                raise RuntimeError(f"sequence value {got} drawn twice")
            issued.add(got)
            last = got
            stats["seq_requests"] = stats.get("seq_requests", 0) + requests
            stats["values"] = stats.get("values", 0) + 1

        return seq
    if figure == "read":

        async def read() -> None:
            if await s.read(b"bench/read") is None:
                raise RuntimeError("bench/read is missing")
            # To set against a member's own read counters (bench.read_modes).
            stats["reads"] = stats.get("reads", 0) + 1

        return read
    raise ValueError(f"not a load figure: {figure}")


def _na(system: str, figure: str, concurrency: int | None, reason: str) -> dict[str, Any]:
    return {
        "system": system,
        "figure": figure,
        "concurrency": concurrency,
        "available": False,
        "reason": reason,
        "unit": BY_ID[figure].unit,
        "value": None,
    }


def _cell_result(system: str, figure: str, cell: Cell, stats: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "system": system,
        "figure": figure,
        "available": True,
        "unit": BY_ID[figure].unit,
        **cell.summary(),
    }
    out["value"] = out["throughput_per_s"]
    if stats.get("cycles"):
        out["lock_requests_per_cycle"] = round(stats["attempts"] / stats["cycles"], 2)
    if stats.get("values"):
        out["seq_requests_per_value"] = round(stats["seq_requests"] / stats["values"], 2)
    return out


async def load_figures(cluster: Cluster, plan: Plan, run: SystemRun, results_dir: Path) -> None:
    """Every load figure's cells, appended to `run.results` as each ends."""
    log = run.log
    for fig in LOAD_FIGURES:
        levels = (UNCONTENDED_LOCKS,) if fig.id == "lock_uncontended" else plan.levels
        reason = cluster.unsupported.get(fig.id)
        if reason is not None:
            run.results.extend(_na(cluster.name, fig.id, c, reason) for c in levels)
            log(f"  {fig.id}: n/a ({reason})")
            continue
        run.doing = (fig.id, levels[0])
        leader = await cluster.leader()
        await cluster.prepare(fig.id, leader)
        for c in levels:
            run.doing = (fig.id, c)
            r, _stats = await figure_cell(
                cluster,
                fig.id,
                c,
                leader=await cluster.leader(),
                warmup_s=plan.warmup_s,
                duration_s=plan.duration_s,
                shared=plan.shared,
            )
            run.results.append(r)
            log(
                f"  {fig.id} x{c}: {r['throughput_per_s']:.0f}/s p50 {r['p50_ms']} ms "
                f"p99 {r['p99_ms']} ms, {r['failed']} failed, client CPU "
                f"{r['client_cpu_pct']:.0f}%"
            )
        if fig.id == "write" and cluster.name == "concord" and plan.profile_s > 0:
            run.doing = ("profile", None)
            run.profile = await profile_write(cluster, plan, log, results_dir)


async def figure_cell(
    cluster: Cluster,
    figure: str,
    concurrency: int,
    *,
    leader: int,
    warmup_s: float,
    duration_s: float,
    shared: bool = True,
) -> tuple[dict[str, Any], dict[str, int]]:
    """One cell of a load figure (`bench.load.run_cell`) aimed at `leader`, every member's
    CPU recorded over the window; `shared`: the tasks share one connection. Returns its
    result (as results.json holds it) and the figure's own counts (the lock figures' acquire
    requests and cycles, the reads completed), warm-up and the window's tail included. The
    figure's `prepare` must have run on this cluster."""
    cell_id = f"{figure}-{concurrency}-{time.monotonic_ns()}"
    stats: dict[str, int] = {}
    conn = None
    if shared:
        conn = await cluster.connect(leader, timeout_s=request_timeout_s(figure))
    try:
        cell = await run_cell(
            _opener(cluster, figure, leader=leader, cell_id=cell_id, stats=stats, conn=conn),
            concurrency,
            warmup_s=warmup_s,
            duration_s=duration_s,
            member_pids=cluster.pids,
        )
    finally:
        if conn is not None:
            await cluster.disconnect(conn)
    return _cell_result(cluster.name, figure, cell, stats), stats


async def profile_write(
    cluster: Cluster, plan: Plan, log: Log, results_dir: Path
) -> dict[str, Any]:
    """py-spy on the leader during an extra write run at 64 in flight (not a figure)."""
    leader = await cluster.leader()
    pid = cluster.member(leader).pid
    out_path = results_dir / "profile-concord-leader.txt"
    recorder = profile.start(cluster.supervisor, pid, plan.profile_s, out_path)
    if recorder is None:
        log("  profile: py-spy not found; skipped")
        return {"available": False, "reason": "py-spy not found"}
    conn = await cluster.connect(leader) if plan.shared else None
    try:
        cell = await run_cell(
            _opener(
                cluster,
                "write",
                leader=leader,
                cell_id=f"profile-{time.monotonic_ns()}",
                stats={},
                conn=conn,
            ),
            64,
            warmup_s=0.0,
            duration_s=plan.profile_s,
            member_pids=cluster.pids,
        )
    finally:
        if conn is not None:
            await cluster.disconnect(conn)
    result = await profile.finish(recorder, out_path, plan.profile_s)
    result["write_throughput_per_s_while_profiled"] = round(cell.throughput_per_s, 1)
    result["concurrency"] = 64
    log(f"  profile: {result.get('samples', 0)} samples of the leader -> {out_path.name}")
    return result


async def failover(cluster: Cluster, plan: Plan, log: Log) -> dict[str, Any]:
    trials: list[dict[str, Any]] = []
    for trial in range(1, plan.failover_trials + 1):
        await cluster.settle()
        leader = await cluster.leader()
        survivors = [i for i in cluster.member_ids() if i != leader]
        probes = [
            await cluster.session(
                survivors[n % len(survivors)], timeout_s=PROBE_TIMEOUT_S, ids=survivors
            )
            for n in range(PROBES)
        ]
        try:
            await asyncio.gather(*(p.warm() for p in probes))
            killed_at = time.perf_counter()
            cluster.kill(leader)
            acked_at = await _first_write(probes, killed_at)
        finally:
            await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)
        new_leader = await cluster.leader()
        ms = round((acked_at - killed_at) * 1000, 1)
        trials.append({"trial": trial, "killed": leader, "new_leader": new_leader, "ms": ms})
        log(
            f"  failover {trial}: killed {leader}, write ok after {ms:.0f} ms (leader {new_leader})"
        )
        cluster.restart(leader)
    await cluster.settle()
    times = [t["ms"] for t in trials]
    return {
        "system": cluster.name,
        "figure": "failover",
        "concurrency": None,
        "available": True,
        "unit": "ms",
        "value": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "trials": trials,
        "probe": {
            "sessions": PROBES,
            "attempt_timeout_ms": PROBE_TIMEOUT_S * 1000,
            "stagger_ms": PROBE_TIMEOUT_S * 1000 / PROBES,
        },
    }


async def _first_write(probes: list[Session], since: float) -> float:
    """Each probe writes every PROBE_TIMEOUT_S, the probes staggered; the time the first write
    is acknowledged."""
    done = asyncio.Event()
    first: list[float] = []

    async def probe(n: int, s: Session) -> None:
        slot = since + n * PROBE_TIMEOUT_S / len(probes)
        key = f"bench/failover/{n}".encode()
        while not done.is_set():
            await asyncio.sleep(max(0.0, slot - time.perf_counter()))
            slot += PROBE_TIMEOUT_S
            try:
                await asyncio.wait_for(s.put(key, b"x"), PROBE_TIMEOUT_S * 2)
            except Exception:  # not yet: the next slot tries again
                continue
            first.append(time.perf_counter())
            done.set()

    tasks = [asyncio.create_task(probe(n, s)) for n, s in enumerate(probes)]
    try:
        await asyncio.wait_for(done.wait(), FAILOVER_LIMIT_S)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return min(first)


async def key_figures(cluster: Cluster, plan: Plan, run: SystemRun) -> None:
    """Load N keys, wait for the snapshot, read memory, time a restart (module docstring)."""
    log = run.log
    run.doing = ("memory", None)
    ids = cluster.member_ids()
    empty = {f"{cluster.name}-{i}": memory_kib(cluster.member(i).pid) for i in ids}
    leader = await cluster.leader()
    target = next(i for i in ids if i != leader)
    load = await _load_keys(cluster, plan, leader)
    cluster.mark_load_done()
    log(
        f"  loaded {plan.keys:,} keys in {load['load_s']:.1f} s "
        f"({load['load_keys_per_s']:,.0f} keys/s, {load['load_retries']} retried batches)"
    )
    covered, fill = await _until_snapshot_covers(
        cluster, target, leader, int(load.pop("last_index")), load["started"]
    )
    del load["started"]
    if fill["longest_write_s"] >= 1.0:
        log(
            f"  while waiting for the snapshot: {fill['failed']} filler writes failed, the "
            f"longest took {fill['longest_write_s']:.1f} s"
        )
    await cluster.wait_all_ready(timeout_s=180)
    memory = {f"{cluster.name}-{i}": memory_kib(cluster.member(i).pid) for i in ids}
    mean_mib = statistics.mean(m["VmRSS"] for m in memory.values()) / 1024
    log(
        f"  memory with {plan.keys:,} keys: "
        + ", ".join(f"{k} {v['VmRSS'] / 1024:.0f} MiB" for k, v in memory.items())
    )
    run.results.append(
        {
            "system": cluster.name,
            "figure": "memory",
            "concurrency": None,
            "available": True,
            "unit": "MiB",
            "value": round(mean_mib, 1),
            "keys": plan.keys,
            "per_member_kib": memory,
            "empty_cluster_kib": empty,
        }
    )
    run.doing = ("restart", None)
    cluster.kill(target)
    cluster.restart(target)
    ready_s = await wait_until(
        lambda: cluster.member_ready(target), 600, f"member {target} ready", poll_s=0.02
    )
    log(f"  restart of member {target} with {plan.keys:,} keys: ready after {ready_s:.2f} s")
    run.results.append(
        {
            "system": cluster.name,
            "figure": "restart",
            "concurrency": None,
            "available": True,
            "unit": "s",
            "value": round(ready_s, 3),
            "keys": plan.keys,
            "member": target,
            "batch": cluster.batch_max,
            **load,
            "state_at_restart": covered,
            "filler": fill,
        }
    )
    await cluster.wait_all_ready(timeout_s=180)


async def _load_keys(cluster: Cluster, plan: Plan, leader: int) -> dict[str, Any]:
    """N keys (16 random bytes, hex) in batches of `batch_max` puts, LOAD_CONCURRENCY
    requests in flight; a failed batch is sent again (the same keys and values)."""
    batch = cluster.batch_max
    batches = (plan.keys + batch - 1) // batch
    next_batch = 0
    retries = 0
    started = time.perf_counter()
    conn = await cluster.connect(leader, timeout_s=60.0) if plan.shared else None
    sessions = [
        cluster.session_on(conn, owns=False)
        if conn is not None
        else await cluster.session(leader, timeout_s=60.0)
        for _ in range(LOAD_CONCURRENCY)
    ]

    async def loader(s: Session) -> None:
        nonlocal next_batch, retries
        while next_batch < batches:
            b = next_batch
            next_batch += 1
            first, last = b * batch, min(plan.keys, (b + 1) * batch)
            noise = os.urandom(16 * (last - first)).hex().encode()
            items = [
                (f"key/{k:08d}".encode(), noise[32 * (k - first) : 32 * (k - first + 1)])
                for k in range(first, last)
            ]
            for attempt in range(LOAD_ATTEMPTS):
                try:
                    await s.put_many(items)
                    break
                except Exception:
                    if attempt == LOAD_ATTEMPTS - 1:
                        raise
                    retries += 1

    try:
        await asyncio.gather(*(loader(s) for s in sessions))
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if conn is not None:
            await cluster.disconnect(conn)
    load_s = time.perf_counter() - started
    return {
        "started": started,
        "load_s": round(load_s, 2),
        "load_keys_per_s": round(plan.keys / load_s, 1),
        "load_retries": retries,
        "last_index": sessions_last_index(sessions),
    }


def sessions_last_index(sessions: list[Session]) -> int:
    return max(int(getattr(s, "last_index", 0)) for s in sessions)


async def _until_snapshot_covers(
    cluster: Cluster, member: int, leader: int, last_index: int, load_started: float
) -> tuple[str, dict[str, Any]]:
    """Write small puts (FILL_CONCURRENCY in flight) until `member`'s snapshot holds every
    loaded key. Returns what was found, and the filler's own record: writes, failures and the
    longest single write (a member busy writing a big snapshot may stall them)."""
    stats: dict[str, Any] = {"writes": 0, "failed": 0, "longest_write_s": 0.0}
    deadline = time.perf_counter() + FILL_LIMIT_S
    sessions: list[Session] = []

    async def fill(s: Session, n: int) -> None:
        for k in range(8):
            began = time.perf_counter()
            try:
                await s.put(f"bench/filler/{n}".encode(), str(k).encode())
                stats["writes"] += 1
            except Exception:
                stats["failed"] += 1
            took = time.perf_counter() - began
            stats["longest_write_s"] = round(max(stats["longest_write_s"], took), 3)

    try:
        while True:
            covered = cluster.snapshot_covers(member, last_index, load_started)
            if covered is not None:
                done = f" (after {stats['writes']:,} filler writes)" if stats["writes"] else ""
                return covered + done, stats
            if time.perf_counter() > deadline:
                return (
                    f"NOT all in a snapshot: none covered the load after "
                    f"{stats['writes']:,} filler writes ({FILL_LIMIT_S:.0f} s)",
                    stats,
                )
            if not sessions:
                sessions = [
                    await cluster.session(leader, timeout_s=FILL_TIMEOUT_S)
                    for _ in range(FILL_CONCURRENCY)
                ]
            await asyncio.gather(*(fill(s, n) for n, s in enumerate(sessions)))
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


@dataclass
class SystemRun:
    """What one system's run has produced so far (kept when a later step fails)."""

    log: Log
    results: list[dict[str, Any]]
    profile: dict[str, Any] | None = None
    doing: tuple[str, int | None] = ("start", None)
    """The figure (and concurrency) in progress, to name it if it fails."""

    def failed(self, system: str, err: BaseException, *, also: tuple[str, ...] = ()) -> None:
        reason = f"{type(err).__name__}: {err}"[:400]
        self.log(f"{system}: FAILED during {self.doing[0]}: {reason}")
        figure, concurrency = self.doing
        failed = [(figure, concurrency), *((f, None) for f in also if f != figure)]
        done = {(r["figure"], r.get("concurrency")) for r in self.results}
        for fig, c in failed:
            if fig in BY_ID and (fig, c) not in done:
                self.results.append(
                    {"system": system, "figure": fig, "concurrency": c, "available": False,
                     "error": True, "reason": f"failed: {reason}", "unit": BY_ID[fig].unit,
                     "value": None}
                )  # fmt: skip


async def run_system(
    make: Callable[[str], Cluster], plan: Plan, log: Log, results_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    """Both phases for one system; returns (results, description, profile). A failure ends
    its phase (recorded against the figure in progress) but not the other phase."""
    run = SystemRun(log, [])
    cluster = make("a")
    description = cluster.describe()
    if not plan.keys_only:
        log(f"{cluster.name}: starting 3 members")
        try:
            await cluster.start()
            await load_figures(cluster, plan, run, results_dir)
            run.doing = ("failover", None)
            run.results.append(await failover(cluster, plan, log))
        except Exception as err:
            run.failed(cluster.name, err)
        finally:
            with contextlib.suppress(Exception):
                await cluster.stop()
    cluster = make("b")
    log(f"{cluster.name}: fresh 3 members for the {plan.keys:,}-key figures")
    run.doing = ("memory", None)
    try:
        await cluster.start()
        await key_figures(cluster, plan, run)
    except Exception as err:
        run.failed(cluster.name, err, also=("memory", "restart"))
    finally:
        with contextlib.suppress(Exception):
            await cluster.stop()
    return run.results, description, run.profile
