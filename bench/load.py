"""The one load generator every system is driven by: N asyncio tasks, each keeping exactly one
request in flight, for a fixed time, with a latency histogram.

A cell (one system, one figure, one concurrency) runs like this:

1. setup, untimed: every task opens its own connection (`open_worker(i)`: a Concord `Client`,
   an etcd gRPC channel, a channel to a PySyncObj node) and whatever the figure needs (a
   lease for the lock figures); all tasks then start together;
2. warm-up (`warmup_s`): tasks run, nothing is recorded (connections, caches, leader
   discovery, the Python tiers' first-call costs);
3. the measured window (`duration_s`): every operation that *completes* inside the window
   counts, and its latency (from its own start) goes into the histogram;
4. tasks stop issuing at the end of the window and finish the request they have in flight
   (or are cancelled after `STOP_GRACE_S`); then the sessions close (untimed), giving back
   what they hold (leases, and with them lock waits).

Throughput is completions in the window divided by the window. A failed operation is counted
apart (never as a completion), and the task pauses 10 ms before the next one so a dead cluster
does not become a busy loop. Alongside, the CPU seconds the load generator itself and each
member process used during the window are recorded: on a 2-core machine the Python client
competes with the members for the cores, and that is part of what a reader needs to judge a
number.

`Histogram` keeps counts in log-spaced buckets 1 % wide (from 1 µs), so quantiles are exact to
1 % and the whole distribution fits in the JSON for the latency CDF plots.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .procs import cpu_seconds

GROWTH = 1.01
"""Bucket width: each bucket's upper bound is 1 % above the previous one."""
FLOOR_S = 1e-6
"""Latencies below 1 µs share the first bucket."""
ERROR_PAUSE_S = 0.01
STOP_GRACE_S = 3.0
"""After the window, tasks get this long to finish their in-flight request before they are
cancelled (a lock waiter far back in the queue, for instance); nothing that ends after the
window counts either way."""


class Histogram:
    """Latency counts in log-spaced buckets (see the module docstring)."""

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        self.total = sum(self.counts.values())

    @staticmethod
    def bucket(seconds: float) -> int:
        if seconds <= FLOOR_S:
            return 0
        return math.ceil(math.log(seconds / FLOOR_S, GROWTH))

    @staticmethod
    def upper_s(bucket: int) -> float:
        return FLOOR_S * GROWTH**bucket

    def record(self, seconds: float) -> None:
        b = self.bucket(seconds)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.total += 1

    def merge(self, other: Histogram) -> None:
        for b, n in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + n
        self.total += other.total

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-th observation (nearest rank)."""
        if not self.total:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return self.upper_s(b)
        return self.upper_s(max(self.counts))

    def cdf(self) -> list[tuple[float, float]]:
        """(latency in ms, fraction of observations at or below it), one point per bucket."""
        out: list[tuple[float, float]] = []
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            out.append((self.upper_s(b) * 1000, seen / self.total))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "growth": GROWTH,
            "floor_s": FLOOR_S,
            "buckets": [[b, n] for b, n in sorted(self.counts.items())],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Histogram:
        return cls({int(b): int(n) for b, n in doc.get("buckets", [])})


class Worker(Protocol):
    """One task's connection, set up for one figure."""

    async def op(self) -> None:
        """One operation of the figure (raises on failure)."""

    async def close(self) -> None: ...


@dataclass
class Cell:
    """What one cell measured."""

    concurrency: int
    duration_s: float
    completed: int = 0
    failed: int = 0
    histogram: Histogram = field(default_factory=Histogram)
    errors: list[str] = field(default_factory=list)
    """The first few distinct failure messages."""
    client_cpu_s: float = 0.0
    member_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def throughput_per_s(self) -> float:
        return self.completed / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        p50, p99 = self.histogram.quantile(0.50), self.histogram.quantile(0.99)
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "completed": self.completed,
            "failed": self.failed,
            "throughput_per_s": round(self.throughput_per_s, 1),
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "errors": self.errors,
            "client_cpu_pct": round(100 * self.client_cpu_s / self.duration_s, 1),
            "member_cpu_pct": {
                k: round(100 * v / self.duration_s, 1) for k, v in self.member_cpu_s.items()
            },
            "histogram": self.histogram.to_json(),
        }


async def run_cell(
    open_worker: Callable[[int], Awaitable[Worker]],
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    member_pids: Callable[[], dict[str, int]] = dict,
    setup_parallel: int = 32,
) -> Cell:
    """Run one cell (see the module docstring)."""
    gate = asyncio.Semaphore(setup_parallel)

    async def opened(i: int) -> Worker:
        async with gate:
            return await open_worker(i)

    workers: list[Worker] = []
    try:
        for w in await asyncio.gather(
            *(opened(i) for i in range(concurrency)), return_exceptions=True
        ):
            if isinstance(w, BaseException):
                raise w
            workers.append(w)
        return await _drive(workers, warmup_s, duration_s, member_pids)
    finally:
        await close_all(workers)


async def close_all(workers: Iterable[Worker]) -> None:
    results = await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
    del results  # a connection that fails to close cleanly changes nothing measured


async def _drive(
    workers: Sequence[Worker],
    warmup_s: float,
    duration_s: float,
    member_pids: Callable[[], dict[str, int]],
) -> Cell:
    cell = Cell(len(workers), duration_s)
    now = time.perf_counter
    start = now()
    window_start = start + warmup_s
    window_end = window_start + duration_s
    cpu_at_start: dict[str, float] = {}
    client_cpu_at_start = 0.0

    async def mark_window() -> None:
        nonlocal client_cpu_at_start
        await asyncio.sleep(max(0.0, window_start - now()))
        client_cpu_at_start = time.process_time()
        for name, pid in member_pids().items():
            cpu_at_start[name] = cpu_seconds(pid)
        await asyncio.sleep(max(0.0, window_end - now()))
        cell.client_cpu_s = time.process_time() - client_cpu_at_start
        for name, pid in member_pids().items():
            if name in cpu_at_start:
                cell.member_cpu_s[name] = cpu_seconds(pid) - cpu_at_start[name]

    async def task(w: Worker) -> None:
        while True:
            began = now()
            if began >= window_end:
                return
            try:
                await w.op()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # counted, not fatal: this is a measurement
                ended = now()
                if window_start <= ended <= window_end:
                    cell.failed += 1
                    text = f"{type(err).__name__}: {err}"[:300]
                    if len(cell.errors) < 5 and text not in cell.errors:
                        cell.errors.append(text)
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            ended = now()
            if window_start <= ended <= window_end:
                cell.completed += 1
                cell.histogram.record(ended - began)

    marker = asyncio.create_task(mark_window())
    tasks = [asyncio.create_task(task(w)) for w in workers]
    try:
        await marker
        _done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for t in pending:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    finally:
        for t in [marker, *tasks]:
            t.cancel()
    return cell
