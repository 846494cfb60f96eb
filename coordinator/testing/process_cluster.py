"""Real `concord-coordinator` processes on loopback, with mutual TLS: the one harness of the
process tests (`tests/process`), the nemesis (`coordinator.testing.nemesis`), the benchmark
(`bench/`) and the measuring scripts.

`ProcessCluster` creates a cluster CA in its root directory, a TLS directory per member and a
client certificate, picks ephemeral loopback ports, and starts one member process per member
(`procs.member_argv`). It can SIGKILL, SIGTERM, SIGSTOP/SIGCONT (`pause`, `resume`) and restart
a member from its data directory, and `close` kills whatever is still running. Children are
started through a launcher that asks the kernel to SIGKILL them when the process that started
them dies (Linux `PR_SET_PDEATHSIG`), so not even a killed run leaves members behind. Start
members from the main thread only: the death signal follows the starting *thread*.

Peers reach a member at its `advertised_peer_port` (its own peer port unless a subclass puts
something in between, as the nemesis puts its gates). Every wait is bounded and waits for a
condition on the members (`/readyz`, `/metrics`), never for a fixed time; a timeout raises
`HarnessError` with the tail of every member's log, and each member's log file stays in the
root directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
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

from .ports import free_ports
from .procs import http_get, member_argv, metric

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]

POLL_S = 0.05
"""How often a wait re-reads the members' state (another process: nothing to await)."""


class HarnessError(Exception):
    """A member did not reach the state waited for, or exited unexpectedly."""


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


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """A member's Raft state, from its /metrics."""

    id: int
    leader_role: bool
    term: int
    leader: int
    commit: int
    applied: int
    last: int
    voters: int


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
    http_timeout_s: float = 5.0
    """How long a /metrics or /readyz read may take (a paused member never answers)."""
    advertised_peer_port: int = 0
    """Where peers reach it (0: its own peer port)."""
    extra_args: list[str] = field(default_factory=list)
    """Added to the command line at the next start (e.g. --unlock-key-file)."""
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False
    expected_running: bool = False
    """Started and not stopped by the harness since: an exit now is the member's own."""
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    """Exit statuses of incarnations that ended on their own (not stopped by the harness)."""
    log_offset: int = 0
    """Size of the log file when the current process started."""

    @property
    def name(self) -> str:
        return f"member-{self.id}"

    @property
    def client_address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_address(self) -> str:
        return f"127.0.0.1:{self.peer_port}"

    @property
    def advertised_peer_address(self) -> str:
        return f"127.0.0.1:{self.advertised_peer_port or self.peer_port}"

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
        return await http_get(self.metrics_port, path, self.http_timeout_s)

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
    """N members on loopback with mutual TLS (see the module docstring).

    `exits_are_errors`: a member that exits on its own fails the next wait (the process
    tests); otherwise the exit is only recorded in `MemberProcess.exits` (the nemesis, whose
    faults may make a member stop). `bind_member_ids`: each member's certificate names its
    id, so it can serve only as that member."""

    client_timeout_s = 20.0
    client_rpc_timeout_s = 2.0

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        tick_ms: int = 50,
        election_ticks: int = 10,
        cluster_id: str = "process-test",
        log_level: str = "INFO",
        http_timeout_s: float = 5.0,
        exits_are_errors: bool = True,
        bind_member_ids: bool = False,
        client_name: str = "process-test-client",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        self.root = root
        self.size = size
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.cluster_id = cluster_id
        self.log_level = log_level
        self.http_timeout_s = http_timeout_s
        self.exits_are_errors = exits_are_errors
        self.bind_member_ids = bind_member_ids
        root.mkdir(parents=True, exist_ok=True)
        self.ca: CertifiedKey = create_ca(cluster_id)
        self.client_cert: CertifiedKey = issue_client_cert(self.ca, client_name)
        ports = free_ports(3 * size)  # in one go: distinct
        self.members: dict[int, MemberProcess] = {}
        for i in range(1, size + 1):
            self.members[i] = self._new_member(i, ports[3 * (i - 1) : 3 * i])
        self.voters: set[int] = set(self.members)
        """The ids the harness believes are voters (a membership change may change it)."""
        self.initial_cluster = self.peer_list()

    def _new_member(self, member_id: int, ports: list[int]) -> MemberProcess:
        client, peer, metrics_port = ports
        tls_dir = self.root / f"tls-{member_id}"
        bound = member_id if self.bind_member_ids else None
        cert = issue_member_cert(self.ca, f"member-{member_id}", member_id=bound)
        write_member_tls(tls_dir, self.ca.cert_pem, cert)
        return MemberProcess(
            member_id,
            client,
            peer,
            metrics_port,
            self.root / f"data-{member_id}",
            tls_dir,
            self.root / f"member-{member_id}.log",
            http_timeout_s=self.http_timeout_s,
        )

    def add_member_slot(self) -> MemberProcess:
        """A new member, not started: the next id above every one so far (a cluster never
        reuses a removed id), its ports and a certificate."""
        m = self._new_member(max(self.members) + 1, free_ports(3))
        self.members[m.id] = m
        return m

    def peer_list(self) -> str:
        """`--initial-cluster`: every member at the address its peers reach it at."""
        return ",".join(f"{m.id}={m.advertised_peer_address}" for m in self.members.values())

    @property
    def election_timeout_s(self) -> float:
        return self.tick_ms * self.election_ticks / 1000

    def majority(self) -> int:
        return len(self.voters) // 2 + 1

    # --- processes -----------------------------------------------------------------------------

    def command(self, m: MemberProcess) -> list[str]:
        args = [
            *("--id", str(m.id), "--name", m.name, "--data-dir", str(m.data_dir)),
            *("--client-listen", m.client_address),
            *("--peer-listen", m.peer_address),
            *("--metrics-listen", f"127.0.0.1:{m.metrics_port}"),
            *("--initial-cluster", self.initial_cluster, "--cluster-id", self.cluster_id),
            *("--tls-dir", str(m.tls_dir), "--tick-ms", str(self.tick_ms)),
            *("--election-ticks", str(self.election_ticks), "--log-level", self.log_level),
            *m.extra_args,
        ]
        return member_argv(args)

    def start(self, member_id: int) -> MemberProcess:
        """Start (or restart, from its data dir) one member; it must not be running."""
        m = self.members[member_id]
        if m.running():
            raise HarnessError(f"member {member_id} is already running (pid {m.pid})")
        self.note_exits()
        m.starts += 1
        m.paused = False
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

    def restart(self, member_id: int) -> MemberProcess:
        """Start a stopped member again from its data directory."""
        return self.start(member_id)

    def note_exits(self) -> list[int]:
        """Record members that exited on their own since the last look; returns their ids."""
        ended = []
        for m in self.members.values():
            if m.expected_running and m.popen is not None and m.popen.poll() is not None:
                m.expected_running = False
                m.exits.append(m.popen.returncode)
                ended.append(m.id)
        return ended

    def check_alive(self) -> None:
        """Record members that exited on their own; HarnessError for the first of them if
        `exits_are_errors`."""
        ended = self.note_exits()
        if ended and self.exits_are_errors:
            m = self.members[ended[0]]
            raise HarnessError(
                f"member {m.id} exited with status {m.exits[-1]}" + self.log_tails([m.id])
            )

    def kill(self, member_id: int) -> None:
        """SIGKILL (a paused member too), and reap."""
        self.note_exits()
        m = self.members[member_id]
        m.expected_running = False
        m.paused = False
        if m.popen is None:
            return
        if m.popen.poll() is None:
            m.popen.send_signal(signal.SIGKILL)
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
        accepts and ACKs), as a hung process or a black-holed host looks to its peers. A
        member that is not running is left alone (the next wait reports an exit)."""
        m = self.members[member_id]
        if m.popen is not None and m.popen.poll() is None:
            m.popen.send_signal(signal.SIGSTOP)
            m.paused = True

    def resume(self, member_id: int) -> None:
        """SIGCONT a paused member."""
        m = self.members[member_id]
        if m.popen is not None and m.popen.poll() is None:
            m.popen.send_signal(signal.SIGCONT)
        m.paused = False

    def pids(self) -> dict[int, int]:
        """Member id -> pid of every member whose process is alive (paused ones too)."""
        return {
            m.id: m.popen.pid
            for m in self.members.values()
            if m.popen is not None and m.popen.poll() is None
        }

    def close(self) -> None:
        """Kill every member still running and reap it. Idempotent; never raises for a
        member that is already gone."""
        self.note_exits()
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
        """Members the harness started and has not stopped (paused ones too)."""
        return [m for m in self.members.values() if m.expected_running and m.running()]

    def log_tails(self, ids: Iterable[int] | None = None, chars: int = 4000) -> str:
        chosen = self.members if ids is None else {i: self.members[i] for i in ids}
        return "".join(
            f"\n--- member {i} (log {m.log_path}) ---\n{m.log()[-chars:]}"
            for i, m in chosen.items()
        )

    async def wait(self, cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
        """Poll `cond` every POLL_S; HarnessError (with the members' log tails) after
        `timeout_s`, or as soon as a member exits on its own if `exits_are_errors`."""
        await poll_until(cond, timeout_s, what, on_timeout=self.log_tails, check=self.check_alive)

    async def wait_ready(self, ids: Iterable[int] | None = None, timeout_s: float = 30.0) -> None:
        """Until /readyz answers 200 on every member in `ids` (default: every running one)."""
        chosen = [self.members[i] for i in ids] if ids is not None else self.running()

        async def all_ready() -> bool:
            return all(await asyncio.gather(*(m.ready() for m in chosen)))

        names = ", ".join(str(m.id) for m in chosen)
        await self.wait(all_ready, timeout_s, f"/readyz 200 on member(s) {names}")

    async def status(self, member_id: int) -> MemberStatus | None:
        """The member's Raft state, or None if it does not answer (down, paused, starting)."""
        m = self.members[member_id]
        if not m.running() or m.paused:
            return None
        try:
            text = await m.metrics()
        except OSError:
            return None

        def num(name: str) -> int:
            return int(metric(text, name) or 0)

        return MemberStatus(
            id=m.id,
            leader_role=bool(metric(text, 'concord_raft_role{role="leader"}')),
            term=num("concord_raft_term"),
            leader=num("concord_raft_leader"),
            commit=num("concord_raft_commit_index"),
            applied=num("concord_raft_applied_index"),
            last=num("concord_raft_last_index"),
            voters=num("concord_raft_voters"),
        )

    async def status_of(self, member_id: int) -> MemberStatus:
        """The member's Raft state; OSError if it does not answer."""
        st = await self.status(member_id)
        if st is None:
            raise OSError(f"member {member_id} does not answer on /metrics")
        return st

    async def statuses(self) -> dict[int, MemberStatus]:
        """The state of every running member that answers."""
        ids = [m.id for m in self.running() if not m.paused]
        found = await asyncio.gather(*(self.status(i) for i in ids))
        return {s.id: s for s in found if s is not None}

    async def current_leader(self) -> int:
        """The member that leads with the highest term and that a majority of the voters
        names as leader in that term right now; 0 if there is none."""
        st = await self.statuses()
        claims = sorted((s.term, s.id) for s in st.values() if s.leader_role)
        if not claims:
            return 0
        term, leader = claims[-1]
        named = sum(1 for s in st.values() if s.leader == leader and s.term == term)
        return leader if named >= self.majority() else 0

    async def leader(self, timeout_s: float = 20.0, *, other_than: int = 0) -> int:
        """Wait for a leader that a majority agrees on (and that is not `other_than`)."""
        found = 0

        async def known() -> bool:
            nonlocal found
            found = await self.current_leader()
            return found not in (0, other_than)

        await self.wait(known, timeout_s, "a leader a majority agrees on")
        return found

    async def wait_converged(self, timeout_s: float = 30.0) -> int:
        """Until there is a leader and every running member has applied everything the
        leader had committed when we looked; returns that index."""
        target = 0

        async def converged() -> bool:
            nonlocal target
            leader = await self.current_leader()
            if not leader:
                return False
            st = await self.statuses()
            if leader not in st:
                return False
            target = max(target, st[leader].commit)
            return all(m.id in st and st[m.id].applied >= target for m in self.running())

        await self.wait(converged, timeout_s, "every running member to catch up")
        return target

    # --- clients -------------------------------------------------------------------------------

    def credentials(self) -> grpc.ChannelCredentials:
        """Client-side mutual TLS: trust the cluster CA, present the client certificate."""
        return channel_credentials(
            self.ca.cert_pem, self.client_cert.cert_pem, self.client_cert.key_pem
        )

    def endpoints(self, ids: Iterable[int] | None = None, *, first: int | None = None) -> list[str]:
        """The client addresses of `ids` (default: every member), rotated to start with
        member `first` (so that clients spread over the members)."""
        chosen = sorted(self.members) if ids is None else list(ids)
        if first in chosen:
            k = chosen.index(first)
            chosen = chosen[k:] + chosen[:k]
        return [self.members[i].client_address for i in chosen]

    def client(
        self,
        ids: Iterable[int] | None = None,
        *,
        first: int | None = None,
        timeout_s: float | None = None,
        rpc_timeout_s: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> Client:
        """A client of `ids` (default: every member, starting with `first`). One client per
        concurrent task: a client sends one mutation at a time (its session's sequence
        numbers must increase)."""
        return Client(
            self.endpoints(ids, first=first),
            credentials=credentials or self.credentials(),
            timeout_s=self.client_timeout_s if timeout_s is None else timeout_s,
            rpc_timeout_s=self.client_rpc_timeout_s if rpc_timeout_s is None else rpc_timeout_s,
        )


MakeCluster = Callable[..., ProcessCluster]
"""The `make_cluster` fixture: `make_cluster(size=3, **ProcessCluster options)`."""
