"""Real `concord-coordinator` processes on loopback, wired through the nemesis's gates.

`Cluster` is the process harness (`coordinator.testing.process_cluster`) with one gate per
member (`gate.Network`): `--initial-cluster` names the *gates*, so every byte between members
crosses the test's network (and nothing bypasses it: re-added members are given their gate's
address as their peer URL too). Clients talk to members' client ports directly, as Jepsen's
clients talk to their nodes. A member that exits on its own is recorded, not an error: the
runner judges it.

The faults it can deal to a member are real: SIGKILL; SIGSTOP/SIGCONT; removing its data
directory; and a file-size limit (`RLIMIT_FSIZE`, set on the running process with
`prlimit(2)`) so that its next WAL write fails with EFBIG, the same failed-`write` path a
full disk takes (ENOSPC). CPython ignores SIGXFSZ, so the limit fails the write instead of
killing the process. Tearing a WAL tail is done on the files of a stopped member
(`faults.py`). Start members from the event loop's thread (the death signal follows the
starting thread).
"""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

from ..process_cluster import HarnessError, ProcessCluster
from .gate import Network

ClusterError = HarnessError


class Cluster(ProcessCluster):
    """N members behind gates (see the module docstring). Use `async with` or `open` and
    `aclose`."""

    client_timeout_s = 3.0
    client_rpc_timeout_s = 1.0

    def __init__(
        self,
        root: Path,
        size: int,
        *,
        tick_ms: int = 50,
        election_ticks: int = 10,
        cluster_id: str = "nemesis",
    ) -> None:
        super().__init__(
            root,
            size,
            tick_ms=tick_ms,
            election_ticks=election_ticks,
            cluster_id=cluster_id,
            http_timeout_s=2.0,
            exits_are_errors=False,
            bind_member_ids=True,
            client_name="nemesis-client",
        )
        self.network = Network(self.pids)

    async def open(self) -> None:
        """Open the gates and start every member (not waited for)."""
        for m in self.members.values():
            m.advertised_peer_port = await self.network.add_gate(m.id, m.peer_port)
        self.initial_cluster = self.peer_list()
        self.start_all()

    async def add_gated_member(self) -> int:
        """A new member slot (`add_member_slot`) behind a gate of its own; `initial_cluster`
        names it too (only a member without data reads that)."""
        m = self.add_member_slot()
        m.advertised_peer_port = await self.network.add_gate(m.id, m.peer_port)
        self.initial_cluster += f",{m.id}={m.advertised_peer_address}"
        return m.id

    async def __aenter__(self) -> Cluster:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

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

    async def aclose(self) -> None:
        """Kill every member, reap it and close the gates. Idempotent; never raises."""
        self.close()
        await self.network.close()
