"""Real `concord-coordinator` processes on loopback, wired through the nemesis's gates.

`Cluster` makes a cluster CA, a TLS directory per member and a client certificate, picks free
loopback ports, opens one gate per member (`gate.Network`) and starts `python -m
coordinator.daemon.member` once per member with `--initial-cluster` naming the *gates*, so
every byte between members crosses the test's network (and nothing bypasses it: re-added
members are given their gate's address as their peer URL too). Clients talk to members'
client ports directly, as Jepsen's clients talk to their nodes.

The faults it can deal to a member are real: SIGKILL; SIGSTOP/SIGCONT; removing its data
directory; and a file-size limit (`RLIMIT_FSIZE`, set on the running process with
`prlimit(2)`) so that its next WAL write fails with EFBIG, the same failed-`write` path a
full disk takes (ENOSPC). CPython ignores SIGXFSZ, so the limit fails the write instead of
killing the process. Tearing a WAL tail is done on the files of a stopped member
(`faults.py`).

Every child is started through a launcher that asks the kernel to SIGKILL it when the test
process dies (`PR_SET_PDEATHSIG`), so not even a killed run leaves members behind; `close`
kills and reaps whatever is still running. Start members from the event loop's thread (the
death signal follows the starting thread). Every wait is bounded.

This mirrors `tests/process/harness.py` (which the process tests use) rather than importing
it: `coordinator.testing` is typed, importable by tools (`make soak`) and may not depend on
the tests folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

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

from ..procs import free_ports, http_get, member_argv, metric
from .gate import Network

POLL_S = 0.05
HTTP_TIMEOUT_S = 2.0


class ClusterError(Exception):
    """A member did not reach the state waited for in time (the message says which)."""


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
class Member:
    """One member: its ports, directories and (while it runs) its process."""

    id: int
    client_port: int
    peer_port: int
    metrics_port: int
    data_dir: Path
    tls_dir: Path
    log_path: Path
    gate_port: int = 0
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False
    expected_running: bool = False
    """Started and not stopped by the harness since: an exit now is the member's own."""
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    """Exit statuses of incarnations that ended on their own (not killed by the harness)."""

    @property
    def client_address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def name(self) -> str:
        return f"member-{self.id}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Cluster:
    """N members behind gates (see the module docstring). Use `async with` or `open` and
    `aclose`."""

    def __init__(
        self,
        root: Path,
        size: int,
        *,
        tick_ms: int = 50,
        election_ticks: int = 10,
        cluster_id: str = "nemesis",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        self.root = root
        self.size = size
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.cluster_id = cluster_id
        root.mkdir(parents=True, exist_ok=True)
        self.ca: CertifiedKey = create_ca(cluster_id)
        self.client_cert = issue_client_cert(self.ca, "nemesis-client")
        ports = free_ports(3 * size)
        self.members: dict[int, Member] = {}
        for i in range(1, size + 1):
            client, peer, metrics_port = ports[3 * (i - 1) : 3 * i]
            tls_dir = root / f"tls-{i}"
            cert = issue_member_cert(self.ca, f"member-{i}", member_id=i)  # bound to its id
            write_member_tls(tls_dir, self.ca.cert_pem, cert)
            self.members[i] = Member(
                i, client, peer, metrics_port, root / f"data-{i}", tls_dir, root / f"member-{i}.log"
            )
        self.voters: set[int] = set(self.members)
        """The ids the harness believes are voters (the remove/re-add fault changes it)."""
        self.network = Network(self.pids)
        self.initial_cluster = ""

    @property
    def election_timeout_s(self) -> float:
        return self.tick_ms * self.election_ticks / 1000

    def majority(self) -> int:
        return len(self.voters) // 2 + 1

    async def open(self) -> None:
        """Open the gates and start every member (not waited for)."""
        for m in self.members.values():
            m.gate_port = await self.network.add_gate(m.id, m.peer_port)
        self.initial_cluster = ",".join(
            f"{m.id}=127.0.0.1:{m.gate_port}" for m in self.members.values()
        )
        for i in self.members:
            self.start(i)

    async def add_member_slot(self) -> int:
        """A new member, not started: the next id above every one so far (a cluster never
        reuses a removed id), its ports, a certificate bound to that id and a gate.
        `initial_cluster` names it too; only a member without data reads that."""
        i = max(self.members) + 1
        client, peer, metrics_port = free_ports(3)
        tls_dir = self.root / f"tls-{i}"
        write_member_tls(
            tls_dir, self.ca.cert_pem, issue_member_cert(self.ca, f"member-{i}", member_id=i)
        )
        m = Member(
            i,
            client,
            peer,
            metrics_port,
            self.root / f"data-{i}",
            tls_dir,
            self.root / f"member-{i}.log",
        )
        m.gate_port = await self.network.add_gate(i, peer)
        self.members[i] = m
        self.initial_cluster += f",{i}=127.0.0.1:{m.gate_port}"
        return i

    async def __aenter__(self) -> Cluster:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- processes -----------------------------------------------------------------------------

    def command(self, m: Member) -> list[str]:
        args = [
            *("--id", str(m.id), "--name", m.name, "--data-dir", str(m.data_dir)),
            *("--client-listen", m.client_address),
            *("--peer-listen", f"127.0.0.1:{m.peer_port}"),
            *("--metrics-listen", f"127.0.0.1:{m.metrics_port}"),
            *("--initial-cluster", self.initial_cluster, "--cluster-id", self.cluster_id),
            *("--tls-dir", str(m.tls_dir), "--tick-ms", str(self.tick_ms)),
            *("--election-ticks", str(self.election_ticks), "--log-level", "INFO"),
        ]
        return member_argv(args)

    def start(self, member_id: int) -> None:
        """Start (or restart, from its data dir) a member that is not running."""
        m = self.members[member_id]
        if m.running():
            raise ClusterError(f"member {member_id} is already running (pid {m.pid})")
        self.note_exits()
        m.starts += 1
        m.paused = False
        m.expected_running = True
        with m.log_path.open("ab") as log_file:
            log_file.write(f"=== nemesis: start #{m.starts} of member {m.id} ===\n".encode())
            log_file.flush()
            m.popen = subprocess.Popen(
                self.command(m),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def note_exits(self) -> list[int]:
        """Record members that exited on their own since the last look; returns their ids."""
        ended = []
        for m in self.members.values():
            if m.expected_running and m.popen is not None and m.popen.poll() is not None:
                m.expected_running = False
                m.exits.append(m.popen.returncode)
                ended.append(m.id)
        return ended

    def kill(self, member_id: int) -> None:
        """SIGKILL (a paused member too) and reap."""
        self.note_exits()
        m = self.members[member_id]
        m.expected_running = False
        m.paused = False
        if m.popen is None:
            return
        if m.popen.poll() is None:
            m.popen.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            m.popen.wait(30)

    def pause(self, member_id: int) -> None:
        m = self.members[member_id]
        if m.popen is not None and m.popen.poll() is None:
            m.popen.send_signal(signal.SIGSTOP)
            m.paused = True

    def resume(self, member_id: int) -> None:
        m = self.members[member_id]
        if m.popen is not None and m.popen.poll() is None:
            m.popen.send_signal(signal.SIGCONT)
        m.paused = False

    def wipe(self, member_id: int) -> None:
        """Remove a stopped member's data directory (it starts as a new member)."""
        m = self.members[member_id]
        if m.running():
            raise ClusterError(f"member {member_id} is running: stop it before wiping it")
        shutil.rmtree(m.data_dir, ignore_errors=True)

    def limit_file_size(self, member_id: int, limit_bytes: int | None) -> bool:
        """Set (None: lift) the running member's RLIMIT_FSIZE; False if it is not running."""
        m = self.members[member_id]
        if m.popen is None or m.popen.poll() is not None:
            return False
        _, hard = resource.prlimit(m.popen.pid, resource.RLIMIT_FSIZE)
        soft = hard if limit_bytes is None else limit_bytes
        resource.prlimit(m.popen.pid, resource.RLIMIT_FSIZE, (soft, hard))
        return True

    def pids(self) -> dict[int, int]:
        """Member id -> pid of every member whose process is alive (paused ones too)."""
        return {
            m.id: m.popen.pid
            for m in self.members.values()
            if m.popen is not None and m.popen.poll() is None
        }

    def running(self) -> list[Member]:
        return [m for m in self.members.values() if m.running()]

    async def aclose(self) -> None:
        """Kill every member, reap it and close the gates. Idempotent; never raises."""
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
        await self.network.close()

    # --- observation ---------------------------------------------------------------------------

    def log_tails(self, ids: Iterable[int] | None = None, chars: int = 3000) -> str:
        chosen = self.members if ids is None else {i: self.members[i] for i in ids}
        return "".join(
            f"\n--- member {i} (log {m.log_path}) ---\n{m.log()[-chars:]}"
            for i, m in chosen.items()
        )

    async def status(self, member_id: int) -> MemberStatus | None:
        """The member's Raft state, or None if it does not answer (down, paused, starting)."""
        m = self.members[member_id]
        if not m.running() or m.paused:
            return None
        try:
            code, text = await http_get(m.metrics_port, "/metrics", HTTP_TIMEOUT_S)
        except OSError:
            return None
        if code != 200:
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

    async def statuses(self) -> dict[int, MemberStatus]:
        ids = [m.id for m in self.running() if not m.paused]
        found = await asyncio.gather(*(self.status(i) for i in ids))
        return {s.id: s for s in found if s is not None}

    async def ready(self, member_id: int) -> bool:
        m = self.members[member_id]
        if not m.running() or m.paused:
            return False
        try:
            return (await http_get(m.metrics_port, "/readyz", HTTP_TIMEOUT_S))[0] == 200
        except OSError:
            return False

    async def current_leader(self) -> int:
        """The member that leads with the highest term and that a majority of the voters
        names as leader right now; 0 if there is none."""
        st = await self.statuses()
        claims = sorted((s.term, s.id) for s in st.values() if s.leader_role)
        if not claims:
            return 0
        term, leader = claims[-1]
        named = sum(1 for s in st.values() if s.leader == leader and s.term == term)
        return leader if named >= self.majority() else 0

    async def wait_for(
        self, cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str
    ) -> None:
        """Poll `cond` every POLL_S; ClusterError after `timeout_s`."""
        deadline = time.perf_counter() + timeout_s
        while not await cond():
            if time.perf_counter() > deadline:
                raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            await asyncio.sleep(POLL_S)

    async def wait_ready(self, ids: Iterable[int] | None = None, timeout_s: float = 30.0) -> None:
        chosen = list(ids) if ids is not None else [m.id for m in self.running()]

        async def all_ready() -> bool:
            return all(await asyncio.gather(*(self.ready(i) for i in chosen)))

        await self.wait_for(all_ready, timeout_s, f"/readyz on member(s) {chosen}")

    async def leader(self, timeout_s: float = 20.0) -> int:
        found = 0

        async def known() -> bool:
            nonlocal found
            found = await self.current_leader()
            return found != 0

        await self.wait_for(known, timeout_s, "a leader a majority agrees on")
        return found

    async def wait_converged(self, timeout_s: float = 30.0) -> int:
        """Until there is a leader and every running voter and learner has applied
        everything the leader had committed when we looked; returns that index."""
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
            running = [m.id for m in self.running()]
            return all(i in st and st[i].applied >= target for i in running)

        await self.wait_for(converged, timeout_s, "every running member to catch up")
        return target

    # --- clients -------------------------------------------------------------------------------

    def credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(
            self.ca.cert_pem, self.client_cert.cert_pem, self.client_cert.key_pem
        )

    def endpoints(self, first: int = 1) -> list[str]:
        """Every member's client address, starting with member `first` (clients spread)."""
        ids = sorted(self.members)
        k = ids.index(first) if first in ids else 0
        return [self.members[i].client_address for i in ids[k:] + ids[:k]]

    def client(
        self,
        *,
        first: int = 1,
        only: int | None = None,
        timeout_s: float = 3.0,
        rpc_timeout_s: float = 1.0,
    ) -> Client:
        """A client of every member (starting with `first`), or of member `only`."""
        endpoints = [self.members[only].client_address] if only else self.endpoints(first)
        return Client(
            endpoints,
            credentials=self.credentials(),
            timeout_s=timeout_s,
            rpc_timeout_s=rpc_timeout_s,
        )
