"""Holder processes for the scale levels that hold things (`bench/leases.py`,
`bench/locks.py`): what both sides of the holder protocol do whatever is held.

A level spreads N things over `--procs` child processes (`python -m bench.scale holder|locker
...`). Each child takes its share and prints READY; then, on stdin, "COUNT" gets one JSON line
of its report so far while it goes on holding, and "REPORT" one JSON line before it lets go
(`serve_report`). The benchmark process waits for every READY, measures the members' and the
holders' CPU around a probe that times one operation at a fixed period, then collects the
reports (`HolderProcs`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .procs import cpu_seconds
from .systems.base import Cluster

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def credentials(tls_dir: Path) -> Any:  # noqa: ANN401 (grpc credentials)
    """Client credentials from a directory of ca.pem, client.pem and client-key.pem."""
    from coordinator.runtime.tls import channel_credentials  # noqa: PLC0415

    return channel_credentials(
        (tls_dir / "ca.pem").read_bytes(),
        (tls_dir / "client.pem").read_bytes(),
        (tls_dir / "client-key.pem").read_bytes(),
    )


def percentile_ms(values: list[float], q: float) -> float | None:
    """The q-quantile of `values` (seconds) in milliseconds; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def spread(n: int, procs: int) -> list[int]:
    """How many of `n` things each holder process takes: `procs` of them (at least one, at
    most `n`), the remainder one each to the first ones."""
    procs = max(1, min(procs, n))
    return [n // procs + (1 if k < n % procs else 0) for k in range(procs)]


def merged_codes(reports: list[dict[str, Any]]) -> dict[str, int]:
    """The holders' `lost_codes` counts added up."""
    codes: dict[str, int] = {}
    for r in reports:
        for code, k in r["lost_codes"].items():
            codes[code] = codes.get(code, 0) + k
    return codes


# --- the holder's side ---------------------------------------------------------------------------


async def serve_report(
    report: Callable[[], dict[str, Any]], close: Callable[[], Awaitable[None]]
) -> int:
    """Everything is held: say READY; answer "COUNT" with the report so far and go on holding;
    answer "REPORT" with a JSON line and let go (EOF lets go without one)."""
    print("READY", flush=True)
    while True:
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() in ("COUNT", "REPORT"):
            print(json.dumps(report()), flush=True)
        if line.strip() != "COUNT":
            break
    await close()
    return 0


# --- the benchmark process's side ----------------------------------------------------------------


class HolderProcs:
    """One level's holder processes, started by `start`; `stop` kills any still running."""

    def __init__(self, children: list[asyncio.subprocess.Process], what: str) -> None:
        self.children = children
        self.what = what

    @classmethod
    async def start(cls, argvs: list[list[str]], what: str) -> HolderProcs:
        """One `python -m bench.scale ARGV...` per entry of `argvs`; `what` names them in
        errors ("holder", "locker")."""
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.scale", *argv,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, limit=1 << 24,
            )
            for argv in argvs
        ]  # fmt: skip
        return cls(children, what)

    async def ready(self, timeout_s: float) -> None:
        """Wait until every process holds its share (its READY line)."""
        for child in self.children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), timeout_s)
            if line.strip() != b"READY":
                raise RuntimeError(f"a {self.what} process failed to start: {line!r}")

    async def reports(self, what: bytes = b"REPORT") -> list[dict[str, Any]]:
        """Every process's report (asked all at once, then read in turn): after b"COUNT" the
        processes go on holding, after b"REPORT" they let go."""
        for child in self.children:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(what + b"\n")
            await child.stdin.drain()
        out = []
        for child in self.children:
            assert child.stdout is not None
            out.append(json.loads(await asyncio.wait_for(child.stdout.readline(), 120)))
        return out

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    async def exited(self, timeout_s: float) -> None:
        """Wait until every process has let go of what it held and ended."""
        for child in self.children:
            await asyncio.wait_for(child.wait(), timeout_s)

    async def stop(self) -> None:
        for child in self.children:
            if child.returncode is None:
                child.kill()
            await child.wait()


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds spent by the leader, all members and the holder processes over `wall_s`."""

    leader_s: float
    members_s: float
    holders_s: float
    wall_s: float

    def pct(self, cpu_s: float) -> float:
        return round(100 * cpu_s / self.wall_s, 1)


async def measure_cpu_use(
    system: Cluster, leader: int, holders: list[int], work: Awaitable[T]
) -> tuple[T, CpuUse]:
    """Run `work`; returns its result and the CPU the leader, the members and the `holders`
    (pids) spent meanwhile."""
    pid = system.member(leader).pid
    pids = [system.member(i).pid for i in system.member_ids()]
    cpu0, all0, held0 = (
        cpu_seconds(pid),
        sum(map(cpu_seconds, pids)),
        sum(map(cpu_seconds, holders)),
    )
    t0 = time.monotonic()
    result = await work
    cpu1, all1, held1 = (
        cpu_seconds(pid),
        sum(map(cpu_seconds, pids)),
        sum(map(cpu_seconds, holders)),
    )
    use = CpuUse(cpu1 - cpu0, all1 - all0, held1 - held0, time.monotonic() - t0)
    return result, use


async def measure_cpu(system: Cluster, work: Awaitable[T]) -> tuple[T, float, float]:
    """Run `work`; returns its result, the busiest member's CPU meanwhile and all members' (%).

    The busiest member stands for the leader: the leader may change during `work` (under
    thousands of held locks it does), and the member that led at the start would then show
    a follower's CPU; whoever leads does the most work, whichever member that is."""
    ids = system.member_ids()
    pids = [system.member(i).pid for i in ids]
    before = [cpu_seconds(pid) for pid in pids]
    t0 = time.monotonic()
    result = await work
    spent = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    use = CpuUse(max(spent), sum(spent), 0.0, time.monotonic() - t0)
    return result, use.pct(use.leader_s), use.pct(use.members_s)


async def probe_every(
    period_s: float, seconds: float, once: Callable[[], Awaitable[object]], what: str
) -> list[float]:
    """Run `once` every `period_s` for `seconds`; returns the durations (s) of those that
    succeeded (a failure is printed as "`what` failed: ...")."""
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            await once()
            out.append(time.perf_counter() - t0)
        except Exception as err:
            print(f"{what} failed: {err}"[:300], file=sys.stderr)
        await asyncio.sleep(max(0.0, period_s - (time.perf_counter() - t0)))
    return out
