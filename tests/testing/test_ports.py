"""The test port allocator: ports below the ephemeral range, never the same to two processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.testing import ports
from coordinator.testing.ports import free_port_block, free_ports, port_range

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cursor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cursor"
    monkeypatch.setattr(ports, "CURSOR_FILE", path)
    return path


def test_ports_lie_below_the_ephemeral_range_where_connect_never_takes_one(cursor: Path) -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    handed = free_ports(50)
    assert len(set(handed)) == 50
    assert all(ports.FLOOR <= p < low for p in handed), handed
    assert port_range(32768) == range(32768 - ports.SPAN, 32768)
    with pytest.raises(RuntimeError, match="ip_local_port_range"):
        port_range(ports.FLOOR + 10)


def test_a_port_something_holds_is_skipped(cursor: Path) -> None:
    (first,) = free_ports(1)
    cursor.write_text(str(first))  # the cursor comes round to it again
    with socket.socket() as held:
        held.bind(("127.0.0.1", first))
        held.listen(1)
        (second,) = free_ports(1)
    assert second != first


def test_a_block_is_consecutive_and_wraps_at_the_end_of_the_range(cursor: Path) -> None:
    top = port_range().stop
    cursor.write_text(str(top - 3))
    base = free_port_block(12)  # 12 do not fit before the top: it starts again at the bottom
    assert base < top - 3 and base + 12 <= top
    for p in range(base, base + 12):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_two_processes_asking_at_once_never_get_the_same_port(cursor: Path) -> None:
    # Each process asks 200 times for 3 ports; the shared cursor file is the only link.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from coordinator.testing import ports\n"
        "ports.CURSOR_FILE = Path(sys.argv[1])\n"
        "for _ in range(200):\n"
        "    print(*ports.free_ports(3))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(cursor)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    got = [set(int(p) for p in proc.communicate(timeout=120)[0].split()) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert len(got[0]) == len(got[1]) == 600
    assert not got[0] & got[1]
