"""Real `concord-coordinator` processes on loopback, with mutual TLS, for the process tests.

`ProcessCluster` creates a cluster CA in its root directory, a TLS directory per member and a
client certificate, picks ephemeral loopback ports, and starts `python -m
coordinator.daemon.member` once per member. It can SIGKILL, SIGTERM, SIGSTOP/SIGCONT (`pause`,
`resume`) and restart a member from its data directory, and `close` kills whatever is still
running. Children are started through a tiny launcher that asks the kernel to SIGKILL them
when the process that started them dies (Linux `PR_SET_PDEATHSIG`), so not even a killed test
run leaves members behind. Start members from the main thread only: the death signal follows
the starting *thread*.

Every wait is bounded and waits for a condition on the members (`/readyz`, `/metrics`), never
for a fixed time; a timeout raises `HarnessError` with the tail of every member's log. The
module is plain Python (no pytest), so `scripts/measure_member.py` starts clusters the same
way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from coordinator.client import Client
from coordinator.pki import (
    CertifiedKey,
    create_ca,
    issue_client_cert,
    issue_member_cert,
    write_member_tls,
)
from coordinator.runtime.tls import channel_credentials
from coordinator.testing.procs import free_ports, http_get, member_argv, metric

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]

POLL_S = 0.05
"""How often a wait re-reads the members' state (another process: nothing to await)."""


class HarnessError(Exception):
    """A member did not reach the state waited for, or exited unexpectedly."""


HTTP_TIMEOUT_S = 5.0


def histogram_buckets(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of histogram `name` in a /metrics page."""
    out: list[tuple[float, float]] = []
    prefix = f'{name}_bucket{{le="'
    for line in text.splitlines():
        if line.startswith(prefix):
            le = line[len(prefix) : line.index('"', len(prefix))]
            out.append((float(le), float(line.split()[-1])))
    return sorted(out)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile`: linear interpolation inside the bucket holding the
    q-th observation. None without observations; the highest finite bound if it falls in
    the +Inf bucket."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


async def poll_until(
    cond: Callable[[], Awaitable[bool]],
    timeout_s: float,
    what: str,
    *,
    on_timeout: Callable[[], str] = lambda: "",
    check: Callable[[], None] = lambda: None,
) -> None:
    """Await `cond()` every POLL_S until it is true; HarnessError after `timeout_s`.
    `check` runs before every poll and may raise (e.g. a member died)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        check()
        if await cond():
            return
        if time.perf_counter() > deadline:
            raise HarnessError(
                f"timed out after {timeout_s:.0f} s waiting for {what}{on_timeout()}"
            )
        await asyncio.sleep(POLL_S)


def run(coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
    """`asyncio.run` with an overall bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@dataclass
class MemberProcess:
    """One member: its ports, directories and (while it runs) its process."""

    id: int
    client_port: int
    peer_port: int
    metrics_port: int
    data_dir: Path
    tls_dir: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    """Added to the command line at the next start (e.g. --unlock-key-file)."""
    popen: subprocess.Popen[bytes] | None = None
    expected_running: bool = False
    starts: int = 0
    log_offset: int = 0
    """Size of the log file when the current process started."""

    @property
    def client_address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_address(self) -> str:
        return f"127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        """Everything every incarnation of this member logged."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def current_log(self) -> str:
        """What the current (or last) incarnation logged."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    async def get(self, path: str) -> tuple[int, str]:
        return await http_get(self.metrics_port, path, HTTP_TIMEOUT_S)

    async def ready(self) -> bool:
        try:
            return (await self.get("/readyz"))[0] == 200
        except OSError:
            return False  # not listening yet

    async def metrics(self) -> str:
        status, text = await self.get("/metrics")
        if status != 200:
            raise OSError(f"member {self.id}: /metrics answered {status}: {text.strip()}")
        return text


class ProcessCluster:
    """N members on loopback with mutual TLS (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        tick_ms: int = 50,
        election_ticks: int = 10,
        cluster_id: str = "process-test",
        log_level: str = "INFO",
    ) -> None:
        self.root = root
        self.size = size
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.cluster_id = cluster_id
        self.log_level = log_level
        root.mkdir(parents=True, exist_ok=True)
        self.ca: CertifiedKey = create_ca(cluster_id)
        self.client_cert: CertifiedKey = issue_client_cert(self.ca, "process-test-client")
        ports = free_ports(3 * size)
        self.members: dict[int, MemberProcess] = {}
        for i in range(1, size + 1):
            client, peer, metrics_port = ports[3 * (i - 1) : 3 * i]
            tls_dir = root / f"tls-{i}"
            write_member_tls(tls_dir, self.ca.cert_pem, issue_member_cert(self.ca, f"member-{i}"))
            self.members[i] = MemberProcess(
                i,
                client,
                peer,
                metrics_port,
                root / f"data-{i}",
                tls_dir,
                root / f"member-{i}.log",
            )
        self.initial_cluster = ",".join(f"{m.id}={m.peer_address}" for m in self.members.values())

    # --- processes -----------------------------------------------------------------------------

    def command(self, m: MemberProcess) -> list[str]:
        args = [
            "--id",
            str(m.id),
            "--name",
            f"member-{m.id}",
            "--data-dir",
            str(m.data_dir),
            "--client-listen",
            m.client_address,
            "--peer-listen",
            m.peer_address,
            "--metrics-listen",
            f"127.0.0.1:{m.metrics_port}",
            "--initial-cluster",
            self.initial_cluster,
            "--cluster-id",
            self.cluster_id,
            "--tls-dir",
            str(m.tls_dir),
            "--tick-ms",
            str(self.tick_ms),
            "--election-ticks",
            str(self.election_ticks),
            "--log-level",
            self.log_level,
            *m.extra_args,
        ]
        return member_argv(args)

    def start(self, member_id: int) -> MemberProcess:
        """Start (or restart, from its data dir) one member; it must not be running."""
        m = self.members[member_id]
        if m.running():
            raise HarnessError(f"member {member_id} is already running (pid {m.pid})")
        m.starts += 1
        with m.log_path.open("ab") as log_file:
            log_file.write(f"=== harness: start #{m.starts} of member {m.id} ===\n".encode())
            log_file.flush()
            m.log_offset = log_file.tell()
            m.popen = subprocess.Popen(
                self.command(m),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        m.expected_running = True
        return m

    def start_all(self) -> None:
        for i in self.members:
            self.start(i)

    def kill(self, member_id: int) -> None:
        """SIGKILL, and reap."""
        m = self.members[member_id]
        m.expected_running = False
        if m.popen is not None and m.popen.poll() is None:
            m.popen.send_signal(signal.SIGKILL)
        if m.popen is not None:
            m.popen.wait(30)

    def terminate(self, member_id: int, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit status. A member that does not
        stop in time is killed and HarnessError raised."""
        m = self.members[member_id]
        m.expected_running = False
        if m.popen is None:
            raise HarnessError(f"member {member_id} was never started")
        if m.popen.poll() is None:
            m.popen.send_signal(signal.SIGTERM)
        try:
            return m.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(member_id)
            raise HarnessError(
                f"member {member_id} did not stop within {timeout_s} s of SIGTERM"
                + self.log_tails([member_id])
            ) from None

    def pause(self, member_id: int) -> None:
        """SIGSTOP: the member stops answering but keeps its sockets open (the kernel still
        accepts and ACKs), as a hung process or a black-holed host looks to its peers."""
        m = self.members[member_id]
        if m.popen is None or m.popen.poll() is not None:
            raise HarnessError(f"member {member_id} is not running")
        m.popen.send_signal(signal.SIGSTOP)

    def resume(self, member_id: int) -> None:
        """SIGCONT a paused member."""
        m = self.members[member_id]
        if m.popen is not None and m.popen.poll() is None:
            m.popen.send_signal(signal.SIGCONT)

    def restart(self, member_id: int) -> MemberProcess:
        """Start a stopped member again from its data directory."""
        return self.start(member_id)

    def close(self) -> None:
        """Kill every member still running and reap it. Idempotent; never raises for a
        member that is already gone."""
        for m in self.members.values():
            m.expected_running = False
            if m.popen is None:
                continue
            if m.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.popen.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.popen.wait(30)

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- observation ---------------------------------------------------------------------------

    def running(self) -> list[MemberProcess]:
        return [m for m in self.members.values() if m.expected_running]

    def log_tails(self, ids: Iterable[int] | None = None, chars: int = 4000) -> str:
        chosen = self.members if ids is None else {i: self.members[i] for i in ids}
        return "".join(
            f"\n--- member {i} (log {m.log_path}) ---\n{m.log()[-chars:]}"
            for i, m in chosen.items()
        )

    def check_alive(self) -> None:
        """HarnessError if a member the harness started has exited on its own."""
        for m in self.members.values():
            if m.expected_running and m.popen is not None and m.popen.poll() is not None:
                m.expected_running = False
                raise HarnessError(
                    f"member {m.id} exited with status {m.popen.returncode}"
                    + self.log_tails([m.id])
                )

    async def wait(self, cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
        await poll_until(cond, timeout_s, what, on_timeout=self.log_tails, check=self.check_alive)

    async def wait_ready(self, ids: Iterable[int] | None = None, timeout_s: float = 30.0) -> None:
        """Until /readyz answers 200 on every member in `ids` (default: every running one)."""
        chosen = [self.members[i] for i in ids] if ids is not None else self.running()

        async def all_ready() -> bool:
            return all(await asyncio.gather(*(m.ready() for m in chosen)))

        names = ", ".join(str(m.id) for m in chosen)
        await self.wait(all_ready, timeout_s, f"/readyz 200 on member(s) {names}")

    async def current_leader(self) -> int:
        """The leader, if one live member says it leads and a majority of the cluster names it
        as leader right now; else 0."""
        pages: dict[int, str] = {}
        for m in self.running():
            try:
                pages[m.id] = await m.metrics()
            except OSError:
                continue
        claims = [i for i, t in pages.items() if metric(t, 'concord_raft_role{role="leader"}')]
        if len(claims) != 1:
            return 0
        leader = claims[0]
        named = sum(metric(t, "concord_raft_leader") == leader for t in pages.values())
        return leader if named > self.size // 2 else 0

    async def leader(self, timeout_s: float = 20.0, *, other_than: int = 0) -> int:
        """Wait for a leader that a majority agrees on (and that is not `other_than`)."""
        found = 0

        async def known() -> bool:
            nonlocal found
            found = await self.current_leader()
            return found not in (0, other_than)

        await self.wait(known, timeout_s, "a leader a majority agrees on")
        return found

    async def status_of(self, member_id: int) -> dict[str, float]:
        """A few Raft gauges from one member's /metrics."""
        text = await self.members[member_id].metrics()
        names = {
            "term": "concord_raft_term",
            "leader": "concord_raft_leader",
            "commit": "concord_raft_commit_index",
            "applied": "concord_raft_applied_index",
            "last": "concord_raft_last_index",
        }
        return {k: metric(text, v) or 0.0 for k, v in names.items()}

    # --- clients -------------------------------------------------------------------------------

    def credentials(self) -> grpc.ChannelCredentials:
        """Client-side mutual TLS: trust the cluster CA, present the client certificate."""
        return channel_credentials(
            self.ca.cert_pem, self.client_cert.cert_pem, self.client_cert.key_pem
        )

    def endpoints(self, ids: Iterable[int] | None = None) -> list[str]:
        chosen = self.members.values() if ids is None else [self.members[i] for i in ids]
        return [m.client_address for m in chosen]

    def client(
        self,
        ids: Iterable[int] | None = None,
        *,
        timeout_s: float = 20.0,
        rpc_timeout_s: float = 2.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> Client:
        """A client of `ids` (default: every member). One client per concurrent task: a client
        sends one mutation at a time (its session's sequence numbers must increase)."""
        return Client(
            self.endpoints(ids),
            credentials=credentials or self.credentials(),
            timeout_s=timeout_s,
            rpc_timeout_s=rpc_timeout_s,
        )


MakeCluster = Callable[..., ProcessCluster]
"""The `make_cluster` fixture: `make_cluster(size=3, **ProcessCluster options)`."""
