"""`make run`: a local 3-member Concord cluster on loopback, and a short demo against it.

Starts three `concord-coordinator` processes (data under `.run/` in the working directory,
reused across runs), waits for a leader, then shows a lock with its fencing token, a
sequence, a compare-and-swap, and a leader failover through the client library. With
`--keep` the cluster stays up until Ctrl-C; either way every process is stopped cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.client import Client, ConcordError


@dataclass
class Proc:
    id: int
    client: str
    peer: str
    metrics: str
    data_dir: Path
    popen: subprocess.Popen[bytes] | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan(root: Path) -> list[Proc]:
    return [
        Proc(
            i,
            f"127.0.0.1:{free_port()}",
            f"127.0.0.1:{free_port()}",
            f"127.0.0.1:{free_port()}",
            root / f"member-{i}",
        )
        for i in (1, 2, 3)
    ]


def start(p: Proc, procs: Sequence[Proc], log_dir: Path) -> None:
    initial = ",".join(f"{q.id}={q.peer}" for q in procs)
    log = open(log_dir / f"member-{p.id}.log", "ab")  # noqa: SIM115 (owned by the child)
    p.popen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator.runtime.member",
            "--id",
            str(p.id),
            "--name",
            f"member-{p.id}",
            "--data-dir",
            str(p.data_dir),
            "--client-listen",
            p.client,
            "--peer-listen",
            p.peer,
            "--metrics-listen",
            p.metrics,
            "--initial-cluster",
            initial,
            "--cluster-id",
            "concord-dev",
            "--insecure",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(p: Proc) -> None:
    if p.popen is None or p.popen.poll() is not None:
        return
    p.popen.send_signal(signal.SIGTERM)
    try:
        p.popen.wait(10)
    except subprocess.TimeoutExpired:
        p.popen.kill()
        p.popen.wait()


async def demo(procs: list[Proc]) -> None:
    endpoints = [p.client for p in procs]
    async with Client(endpoints, timeout_s=20) as c:
        st = await c.status()
        for _ in range(200):  # members start in parallel; the first election takes a moment
            if st.leader:
                break
            await asyncio.sleep(0.05)
            st = await c.status()
        if not st.leader:
            raise ConcordError("UNAVAILABLE", "no leader was elected within 10 s")
        print(f"  cluster up: leader is member {st.leader}, term {st.term}")
        async with c.lock("jobs") as held:
            print(f"  lock 'jobs' held, fencing token {held.fencing_token}")
            ok = await c.check_fence("jobs", held.fencing_token)
            print(f"  fence check while holding: {'current' if ok else 'stale'}")
        ok = await c.check_fence("jobs", held.fencing_token)
        print(f"  fence check after release: {'current' if ok else 'stale'}")
        with contextlib.suppress(ConcordError):
            await c.sequence_create("orders")
        print(f"  sequence 'orders' next -> {await c.sequence_next('orders', 3)}")
        await c.put(b"config", b"v1")
        print(f"  cas config v1->v2: {await c.cas(b'config', b'v1', b'v2')}")
        print(f"  cas config v1->v3: {await c.cas(b'config', b'v1', b'v3')}")
        st = await c.status()
        leader = next(p for p in procs if p.id == st.leader)
        print(f"  killing the leader (member {leader.id}) with SIGKILL")
        assert leader.popen is not None
        t0 = time.perf_counter()
        leader.popen.kill()
        leader.popen.wait()
        nxt = await c.sequence_next("orders")
        print(f"  after failover ({time.perf_counter() - t0:.2f} s): next -> {nxt}")
        kv = await c.get(b"config")
        print(f"  config = {kv.value.decode() if kv else None} (nothing acknowledged lost)")
        start(leader, procs, leader.data_dir.parent)
        print(f"  member {leader.id} restarted from its data dir")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coordinator.cli.devcluster")
    ap.add_argument("--dir", default=".run", help="where member data and logs live")
    ap.add_argument("--keep", action="store_true", help="keep the cluster up until Ctrl-C")
    args = ap.parse_args(argv)
    root = Path(args.dir).resolve()
    if root.exists():
        shutil.rmtree(root)  # ports are fresh each run, so the old membership is useless
    root.mkdir(parents=True)
    procs = plan(root)
    print(f"Concord: starting 3 members on loopback (data and logs in {root})")
    try:
        for p in procs:
            start(p, procs, root)
        asyncio.run(demo(procs))
        if args.keep:
            eps = ",".join(p.client for p in procs)
            print(f"cluster running; try: CONCORD_ENDPOINTS={eps} concordctl member list")
            print("Ctrl-C stops it")
            stop_signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
    except KeyboardInterrupt:
        pass
    except ConcordError as err:
        print(f"demo failed: {err} (member logs are in {root})", file=sys.stderr)
        return 1
    finally:
        for p in procs:
            stop(p)
        print("all members stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
