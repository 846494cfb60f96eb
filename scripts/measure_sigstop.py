"""Measure how long clients go without a successful write after the leader is SIGSTOPped.

Not a test: it prints numbers and asserts nothing about time (the process test
`tests/process/test_process_stall.py` checks a generous bound). A 3-member cluster is started
exactly as the process tests start theirs (`coordinator/testing/process_cluster.py`: real
`concord-coordinator` processes, mutual TLS, loopback, the member's default timing: 100 ms
ticks, a 10-tick election timeout) and killed before the script exits, whatever happens.

    python scripts/measure_sigstop.py [--trials 7] [--writers 4] [--json out.json]

Each trial: `--writers` tasks, each with its own `Client` built with the library's defaults
(only `timeout_s` raised, so a write never gives up during the failover), put keys one after
another; once every writer has succeeded since the cluster settled, the leader is SIGSTOPped
(time t0). Measured, per trial:

- `first_ok_s`: t0 to the first put that completes after t0 (any writer);
- `all_ok_s`: t0 to the moment every writer has completed a put after t0;
- `elected_s`: t0 to the moment a majority of the other members names a new leader (their
  /metrics, polled every 50 ms: a lower bound for any client).

Then the old leader gets SIGCONT and the next trial waits until every member is ready. The
summary is the median (and min/max) of each over the trials.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from coordinator.client import Client  # noqa: E402
from coordinator.testing.process_cluster import ProcessCluster  # noqa: E402
from coordinator.testing.procs import metric  # noqa: E402

RUN_LIMIT_S = 600.0
ANSWERED_BEFORE_S = 0.01
"""A put completing this soon after t0 was answered before the stop (no failover is that
fast): it does not count."""
TRIAL_LIMIT_S = 60.0


async def new_leader(cluster: ProcessCluster, stopped: int) -> bool:
    """Whether a majority of the cluster (the stopped member counted as against) names a
    leader other than `stopped`; only the live members are asked (the stopped one would
    hang the HTTP request)."""
    named: list[float | None] = []
    for m in cluster.members.values():
        if m.id == stopped:
            continue
        try:
            named.append(metric(await m.metrics(), "concord_raft_leader"))
        except OSError:
            named.append(None)
    votes = [v for v in named if v not in (None, 0.0, float(stopped))]
    return len(set(votes)) == 1 and len(votes) > cluster.size // 2


async def trial(cluster: ProcessCluster, n: int, writers: int) -> dict[str, float]:
    await cluster.wait_ready()
    leader = await cluster.leader()
    clients = [
        Client(cluster.endpoints(), credentials=cluster.credentials(), timeout_s=30.0)
        for _ in range(writers)
    ]
    completions: list[list[float]] = [[] for _ in range(writers)]
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                await clients[w].put(f"stall/{n}/{w}/{i}".encode(), b"v")
            except Exception as err:  # a measurement: note it and go on
                print(f"  writer {w}: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            completions[w].append(time.perf_counter())

    tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
    try:
        settled = time.perf_counter()
        while not all(c and c[-1] > settled + 0.2 for c in completions):  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # another process's progress: nothing to await
        popen = cluster.members[leader].popen
        if popen is None:
            raise RuntimeError(f"member {leader} has no process")
        t0 = time.perf_counter()
        popen.send_signal(signal.SIGSTOP)
        elected_s: float | None = None
        while True:
            now = time.perf_counter()
            if now - t0 > TRIAL_LIMIT_S:
                raise RuntimeError(f"trial {n}: no progress within {TRIAL_LIMIT_S} s")
            after = [[t for t in c if t > t0 + ANSWERED_BEFORE_S] for c in completions]
            if elected_s is None and await new_leader(cluster, leader):
                elected_s = time.perf_counter() - t0
            if all(after) and elected_s is not None:
                first = min(a[0] for a in after)
                last = max(a[0] for a in after)
                return {
                    "trial": n,
                    "stopped_leader": leader,
                    "first_ok_s": round(first - t0, 3),
                    "all_ok_s": round(last - t0, 3),
                    "elected_s": round(elected_s, 3),
                }
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        popen = cluster.members[leader].popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGCONT)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="concord-sigstop-") as tmp:
        cluster = ProcessCluster(Path(tmp), 3, tick_ms=100, election_ticks=10)
        with cluster:
            cluster.start_all()
            results = []
            for n in range(1, args.trials + 1):
                r = await trial(cluster, n, args.writers)
                print(json.dumps(r), flush=True)
                results.append(r)
    summary: dict[str, Any] = {"trials": len(results), "writers": args.writers}
    for key in ("first_ok_s", "all_ok_s", "elected_s"):
        values = [float(r[key]) for r in results]
        summary[key] = {
            "median": round(statistics.median(values), 3),
            "min": min(values),
            "max": max(values),
        }
    return {"summary": summary, "results": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    out = asyncio.run(asyncio.wait_for(main_async(args), RUN_LIMIT_S))
    print(json.dumps(out["summary"], indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
