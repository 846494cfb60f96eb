"""Child processes of the benchmark: start them so none can outlive it, and read what the kernel
knows about them (resident memory, CPU time).

Every cluster member the benchmark starts (etcd, the PySyncObj nodes; Concord's members are
started the same way by `coordinator/testing/process_cluster.py`) goes through the launcher of
`coordinator.testing.procs.orphan_proof`, which asks the kernel to SIGKILL it when the thread
that started it dies (Linux `PR_SET_PDEATHSIG`), then `exec`s the real program, so the
process id is the member's own. Each runs in a process group
of its own, so a kill takes whatever it forked too (PySyncObj forks to write its dumps). On
top of that the `Supervisor` remembers every process and kills what still runs when the
benchmark ends, fails or is interrupted (Ctrl-C, SIGTERM), then sweeps /proc for any
descendant of the benchmark left over; an `atexit` hook does the same as a last resort. Start
children from the main thread only: the death signal follows the starting thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from coordinator.testing.procs import orphan_proof

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Supervisor:
    """Starts children and guarantees they are gone by the time `close()` returns."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._cleanups: list[Callable[[], None]] = []
        atexit.register(self.close)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` (argv[0] an absolute path) with stdout and stderr appended to
        `log_path`."""
        cmd = orphan_proof(argv)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Also run `cleanup` at `close()` (e.g. a harness that owns its own children)."""
        self._cleanups.append(cleanup)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
        """SIGKILL its process group (it and whatever it forked) and reap it; quiet if it
        already exited."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own group: start_new_session
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)

    def close(self) -> None:
        """Kill every child still running, run the registered cleanups, then every
        descendant left. Idempotent."""
        while self._cleanups:
            cleanup = self._cleanups.pop()
            with contextlib.suppress(Exception):
                cleanup()
        for proc in self._procs:
            self.kill(proc)
        self._procs.clear()
        for pid in descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def running(self) -> list[int]:
        """Descendants of the benchmark still alive (zombies, already dead, not counted)."""
        return descendants(os.getpid())


def descendants(root: int) -> list[int]:
    """Live (non-zombie) processes below `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if state != "Z":
            children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile (KiB) of a live process, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


async def wait_until(
    cond: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.02
) -> float:
    """Await the coroutine function `cond` until it returns true; returns the time waited.
    TimeoutError naming `what` after `timeout_s`."""
    started = time.perf_counter()
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(poll_s)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` is on (ext4, xfs, tmpfs, ...), from /proc/mounts."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, parts[2]
    return kind
