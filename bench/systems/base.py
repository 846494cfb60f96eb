"""What the benchmark needs from each system: a 3-member cluster it can start, kill, restart
and observe, and per-task sessions that do one figure's operation.

A `Session` is one task's connection (one client, one channel) and offers the operations the
figures are made of. A system that lacks a primitive says so in `Cluster.unsupported` (figure
-> the reason, printed in the table) and its session raises `Unsupported` if asked anyway; the
benchmark builds a missing primitive out of others only where the system's users must, the
way they do (etcd's sequence: a client-side compare-and-swap loop), and counts the requests
it takes.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..procs import Supervisor, wait_until


async def poll_leader(current: Callable[[], Awaitable[int]], system: str, timeout_s: float) -> int:
    """Ask `current` every 50 ms until it names a leader (0: none agreed on yet); TimeoutError
    naming `system` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = await current()
        if found:
            return found
        if loop.time() > deadline:
            raise TimeoutError(f"no {system} leader within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


class Unsupported(Exception):
    """The system has no such primitive."""


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: int
    pid: int
    data_dir: Path


class Session(abc.ABC):
    """One task's connection to the cluster (to the leader when it was opened)."""

    async def warm(self) -> None:  # noqa: B027 (optional: most systems connect lazily)
        """Open the connection now (TLS handshake included), so the first timed request does
        not pay for it."""

    @abc.abstractmethod
    async def put(self, key: bytes, value: bytes) -> None: ...

    async def cas(self, key: bytes, expected: bytes | None, new: bytes) -> bool:
        """Set `key` to `new` iff it holds `expected` (None: iff absent); True if it did."""
        raise Unsupported("compare-and-swap")

    async def prepare_locks(self) -> None:  # noqa: B027 (optional)
        """Whatever the lock figures need before the clock starts (a lease)."""

    async def lock_cycle(self, name: str) -> int:
        """Acquire `name` (waiting as long as it takes), then release it; returns the number
        of acquire requests it took (1 for a system that queues waiters)."""
        raise Unsupported("lock")

    async def seq_next(self, name: str) -> tuple[int, int]:
        """The next value of sequence `name`, and the number of requests it took (1 for a
        system with a sequence primitive)."""
        raise Unsupported("sequence")

    async def read(self, key: bytes) -> bytes | None:
        """A linearizable read of `key`."""
        raise Unsupported("linearizable read")

    @abc.abstractmethod
    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Write every (key, value) in one request (one log entry)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Give back what the session holds (a lease), and its connection if it owns it."""


class Cluster(abc.ABC):
    """A 3-member cluster on loopback with its data on disk."""

    name: str
    """"concord", "etcd", "pysyncobj"."""
    unsupported: dict[str, str] = {}  # noqa: RUF012 (read-only per class)
    """figure -> why this system cannot run it."""
    batch_max: int = 128
    """Most writes one request may carry (put_many)."""

    def __init__(self, root: Path, supervisor: Supervisor) -> None:
        self.root = root
        self.supervisor = supervisor

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Version, how it was obtained, and the settings used (for the JSON and the docs)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start every member and wait until each is ready and a leader is known."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Kill every member (idempotent)."""

    @abc.abstractmethod
    def member_ids(self) -> list[int]: ...

    @abc.abstractmethod
    def member(self, member_id: int) -> MemberInfo:
        """A running member's pid and data directory."""

    @abc.abstractmethod
    async def leader(self, timeout_s: float = 30.0) -> int:
        """Wait for a leader the running members agree on; its member id."""

    @abc.abstractmethod
    def kill(self, member_id: int) -> None:
        """SIGKILL one member and reap it."""

    @abc.abstractmethod
    def restart(self, member_id: int) -> None:
        """Start a killed member again from its data directory."""

    @abc.abstractmethod
    async def member_ready(self, member_id: int) -> bool:
        """Does the member serve (the system's own readiness signal)?"""

    @abc.abstractmethod
    async def connect(
        self, first: int, *, timeout_s: float = 10.0, ids: list[int] | None = None
    ) -> Any:  # noqa: ANN401 (each system's own client object)
        """A client connection aimed at member `first`, each request bounded by `timeout_s`
        (a lock waiter needs a generous one). A client library that follows redirects may use
        the members `ids` (default: all) after `first`. Many sessions may share it."""

    @abc.abstractmethod
    def session_on(self, conn: Any, *, owns: bool) -> Session:  # noqa: ANN401
        """A task's session over `conn`; `owns`: closing the session closes `conn`."""

    @abc.abstractmethod
    async def disconnect(self, conn: Any) -> None:  # noqa: ANN401
        """Close a connection from `connect`."""

    async def session(
        self, first: int, *, timeout_s: float = 10.0, ids: list[int] | None = None
    ) -> Session:
        """A session with a connection of its own."""
        conn = await self.connect(first, timeout_s=timeout_s, ids=ids)
        return self.session_on(conn, owns=True)

    async def prepare(self, figure: str, leader: int) -> None:  # noqa: B027 (optional hook)
        """Once per cluster before `figure` runs (create a sequence, seed a key)."""

    def snapshot_covers(self, member_id: int, last_index: int, since: float) -> str | None:
        """Does `member_id`'s on-disk snapshot hold every key loaded (the last load entry is
        `last_index` where the system reports one; the load started at `since`,
        time.perf_counter)? A sentence saying what was found, or None while it does not."""
        return "state on disk (no snapshot to wait for)"

    def mark_load_done(self) -> None:  # noqa: B027 (optional hook)
        """The bulk load has finished (for `snapshot_covers`)."""

    def pids(self) -> dict[str, int]:
        """Running members' pids by name (for CPU accounting)."""
        out: dict[str, int] = {}
        for i in self.member_ids():
            try:
                out[f"{self.name}-{i}"] = self.member(i).pid
            except LookupError:
                continue
        return out

    async def settle(self, timeout_s: float = 120.0) -> None:
        """Until the cluster is whole again after a restart (every member ready, a leader
        agreed on), so a failover trial does not start from a half-healed cluster."""
        await self.wait_all_ready(timeout_s)
        await self.leader(timeout_s)

    async def wait_all_ready(self, timeout_s: float = 60.0) -> float:
        """Until every member answers ready; returns the time it took."""
        ids = self.member_ids()

        async def ready() -> bool:
            return all([await self.member_ready(i) for i in ids])

        return await wait_until(ready, timeout_s, f"every {self.name} member ready")
