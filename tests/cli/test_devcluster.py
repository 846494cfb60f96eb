"""`make run`'s main job, end to end: three real member processes, the demo, a clean stop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.process
def test_make_run_demo_completes_and_stops_every_member(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "coordinator.cli.devcluster", "--dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "fence check while holding: current" in text
    assert "fence check after release: stale" in text
    assert "sequence 'orders' next -> [1, 2, 3]" in text
    assert "cas config v1->v2: True" in text and "cas config v1->v3: False" in text
    assert "next -> [4]" in text  # the sequence continued past the killed leader
    assert "config = v2 (nothing acknowledged lost)" in text
    assert "all members stopped" in text
    marker = str(tmp_path / "run").encode()
    leftover = [
        p.name for p in Path("/proc").iterdir() if p.name.isdigit() and marker in _cmdline(p)
    ]
    assert leftover == [], "member processes outlived the demo"


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
