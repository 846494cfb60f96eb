"""Loopback ports for test servers, which two test processes never both get.

A port found by binding port 0 and closing comes from the kernel's ephemeral range, the same
range every outgoing connection takes its local port from: between the close and the server's
bind, any `connect()` on the machine (a client in another pytest-xdist worker, another run's
cluster) may take it, and the server fails with "address already in use". The ports handed out
here lie below that range, where the kernel never picks a port on its own, and a cursor shared
by every process on the machine (a file under an exclusive lock) hands each one out once per
lap of the range: a port is only given again after every other port in the range was, so it
is not given to two processes that both still want it.

A port handed out and never bound (an address "nothing listens on") stays dead until the
cursor comes round again, which is what those tests want.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

SPAN = 12_000
"""How many ports the cursor cycles through."""

FLOOR = 10_000
"""Never below this (well-known and registered services live lower)."""

CURSOR_FILE = Path(tempfile.gettempdir()) / "concord-test-ports"
"""The shared cursor: the next port to try, as decimal text."""


def port_range(ephemeral_low: int | None = None) -> range:
    """The ports handed out: the SPAN ports just below the ephemeral range (32768 and up by
    default on Linux), never below FLOOR."""
    low = _ephemeral_low() if ephemeral_low is None else ephemeral_low
    start = max(FLOOR, low - SPAN)
    if low - start < 100:
        raise RuntimeError(
            f"the ephemeral port range starts at {low}: too low to keep test ports below it "
            "(raise net.ipv4.ip_local_port_range's first number)"
        )
    return range(start, low)


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports, free now and given to no other caller on this machine
    until the cursor has gone round the range."""
    with _cursor() as take:
        return [take(1) for _ in range(n)]


def free_port_block(n: int) -> int:
    """The first of `n` consecutive free ports (for tools that lay members out from a base
    port), on the same terms as `free_ports`."""
    with _cursor() as take:
        return take(n)


@contextlib.contextmanager
def _cursor() -> Iterator[_Take]:
    ports = port_range()
    with open(CURSOR_FILE, "a+", encoding="ascii") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        text = f.read().strip()
        start = int(text) if text.isdigit() and int(text) in ports else ports.start
        take = _Take(ports, start)
        yield take
        f.seek(0)
        f.truncate()
        f.write(str(take.next))
        f.flush()


class _Take:
    """Walks the range from the cursor, skipping ports something already holds."""

    def __init__(self, ports: range, start: int) -> None:
        self.ports = ports
        self.next = start

    def __call__(self, n: int) -> int:
        for _ in range(len(self.ports)):
            base = self.next
            if base + n > self.ports.stop:
                base = self.ports.start
            self.next = base + n if base + n < self.ports.stop else self.ports.start
            if all(_bindable(p) for p in range(base, base + n)):
                return base
        raise RuntimeError(
            f"no {n} free consecutive loopback port(s) in {self.ports.start}-{self.ports.stop - 1}"
        )


def _bindable(port: int) -> bool:
    # No SO_REUSEADDR: a port with connections still in TIME_WAIT is skipped too.
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
