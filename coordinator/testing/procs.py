"""Real child processes for tests, fault-injection runs and benchmarks: started so that none
can outlive whoever started it, on ports that were free, and read over plain HTTP.

One copy, used by the process tests (`coordinator/testing/process_cluster.py`), the nemesis
(`coordinator.testing.nemesis`) and the benchmark (`bench/`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

_LAUNCHER = """\
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit(70)  # the starter is already gone
os.execv(sys.argv[2], sys.argv[2:])
"""


def orphan_proof(argv: Sequence[str]) -> list[str]:
    """`argv` (argv[0] an absolute path) behind a tiny launcher that asks the kernel to SIGKILL
    the child when the thread that started it dies (Linux `PR_SET_PDEATHSIG`), then `exec`s
    it, so the process id is the program's own. Unchanged on other systems."""
    cmd = [str(a) for a in argv]
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *cmd]


MEMBER_MODULE = "coordinator.daemon.member"
"""The module `concord-coordinator` runs: every test, nemesis and benchmark member is started
as `python -m MEMBER_MODULE` (the one place to change if it moves)."""


def member_argv(args: Sequence[str]) -> list[str]:
    """The command line of a `concord-coordinator` member with `args`, orphan-proof."""
    return orphan_proof([sys.executable, "-m", MEMBER_MODULE, *args])


async def http_get(port: int, path: str, timeout_s: float) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; OSError if nothing answers within
    `timeout_s` (a paused process accepts the connection and never answers)."""

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        raw = await asyncio.wait_for(fetch(), timeout_s)
    except TimeoutError:
        raise OSError(f"GET {path} on port {port} took over {timeout_s} s") from None
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), body.decode(errors="replace")
    except (IndexError, ValueError):
        raise OSError(f"GET {path} on port {port}: malformed response {raw[:80]!r}") from None


def metric(text: str, name: str) -> float | None:
    """The value of the sample `name` (with its labels, exactly as exposed) in a /metrics
    page, or None if it is not there."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


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
