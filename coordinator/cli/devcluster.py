"""`make run`: a local 3-member Concord cluster on loopback, and a short demo against it.

Makes a CA and certificates the way `concordctl cluster init` does (under `.run/` in the
working directory, made afresh each run), starts three `concord-coordinator` processes with
mutual TLS, as a real cluster runs, waits for a leader, then shows a lock with its fencing
token, a sequence, a compare-and-swap, and a leader failover through the client library.
With `--keep` the cluster stays up, and says how to point concordctl at it, until Ctrl-C.

Every way this process is asked to end (SIGINT, SIGTERM from a supervisor or `kill`, SIGHUP
from a closed terminal) stops the three members before it exits: members left running would
hold their ports and data dirs with nobody to stop them. Only SIGKILL cannot be caught.
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

from . import _connect
from ._common import EXIT_INTERRUPTED, Ctx
from ._setup import write_cluster_tls

CLUSTER_ID = "concord-dev"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. A KeyboardInterrupt, so that asyncio.run cancels the demo and
    unwinds through it as it does for Ctrl-C, into the `finally` that stops the members."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@dataclass
class Proc:
    id: int
    client: str
    peer: str
    metrics: str
    data_dir: Path
    tls_dir: Path
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
            root / f"member-{i}" / "data",
            root / f"member-{i}" / "tls",
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
            "coordinator.daemon.member",
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
            CLUSTER_ID,
            "--tls-dir",
            str(p.tls_dir),
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


async def demo(procs: list[Proc], root: Path) -> None:
    endpoints = [p.client for p in procs]
    credentials = _connect.credentials(Ctx(endpoints, "table", 20, root / "client"))
    # The members were started a moment ago: a refused connection means "not listening yet"
    # here, so wait for them as long as for anything else (the default gives up after 2 s).
    async with Client(endpoints, credentials=credentials, timeout_s=20, connect_timeout_s=20) as c:
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
        start(leader, procs, root)
        print(f"  member {leader.id} restarted from its data dir")


def _concordctl() -> str:
    """How to run concordctl: by its full path when it is not on PATH (`make run` uses the
    venv's python without activating the venv), so the printed lines work when pasted."""
    beside = Path(sys.executable).parent / "concordctl"
    on_path = shutil.which("concordctl")
    if on_path is not None or not beside.exists():
        return "concordctl"
    return str(beside)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coordinator.cli.devcluster")
    ap.add_argument("--dir", default=".run", help="where certificates, data and logs live")
    ap.add_argument("--keep", action="store_true", help="keep the cluster up until Ctrl-C")
    args = ap.parse_args(argv)
    root = Path(args.dir).resolve()
    # From here on, any stop signal unwinds into the `finally` below.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    procs: list[Proc] = []
    code = 0
    kept = False  # the demo is done and --keep waits for a signal: the normal way to end
    try:
        if root.exists():
            shutil.rmtree(root)  # ports and CA are fresh each run: the old cluster is useless
        root.mkdir(parents=True)
        write_cluster_tls(root, CLUSTER_ID, 3, dns=[], ips=["127.0.0.1"])
        print(f"Concord: starting 3 members on loopback (data and logs in {root})")
        print(f"  mutual TLS: CA in {root}, client certificate in {root / 'client'}")
        procs = plan(root)
        for p in procs:
            start(p, procs, root)
        asyncio.run(demo(procs, root))
        if args.keep:
            kept = True
            eps = ",".join(p.client for p in procs)
            print("cluster running; point concordctl at it with:")
            print(f"  export CONCORD_ENDPOINTS={eps}")
            print(f"  export CONCORD_TLS_DIR={root / 'client'}")
            print(f"  {_concordctl()} member list")
            print("Ctrl-C (or SIGTERM) stops it", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt as why:
        if not kept:
            print(f"interrupted ({str(why) or 'SIGINT'}); stopping the members", file=sys.stderr)
            code = EXIT_INTERRUPTED
    except ConcordError as err:
        print(f"demo failed: {err} (member logs are in {root})", file=sys.stderr)
        code = 1
    finally:
        # A second signal must not cut the clean-up short and leave members behind.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for p in procs:
            stop(p)
        print("all members stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
