"""`make run`'s main job, end to end: three real member processes over mutual TLS, the demo,
and a clean stop however the demo process is asked to end (its natural end, Ctrl-C, SIGTERM
from a supervisor, SIGHUP from a closed terminal)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

DEVCLUSTER = [sys.executable, "-m", "coordinator.cli.devcluster"]


@pytest.mark.process
def test_make_run_demo_completes_and_stops_every_member(tmp_path: Path) -> None:
    out = subprocess.run(
        [*DEVCLUSTER, "--dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    # The real thing, as the README's cluster runs: mutual TLS, certificates made as
    # `concordctl cluster init` makes them.
    assert f"mutual TLS: CA in {tmp_path / 'run'}" in text
    assert (tmp_path / "run" / "client" / "client.pem").is_file()
    for i in (1, 2, 3):
        assert "INSECURE" not in (tmp_path / "run" / f"member-{i}.log").read_text()
    assert "fence check while holding: current" in text
    assert "fence check after release: stale" in text
    assert "sequence 'orders' next -> [1, 2, 3]" in text
    assert "cas config v1->v2: True" in text and "cas config v1->v3: False" in text
    assert "next -> [4]" in text  # the sequence continued past the killed leader
    assert "config = v2 (nothing acknowledged lost)" in text
    assert "all members stopped" in text
    assert _members_of(tmp_path / "run") == [], "member processes outlived the demo"


@pytest.fixture
def devcluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    keep = ["--keep"] if request.param else []
    proc = subprocess.Popen(
        [*DEVCLUSTER, "--dir", str(tmp_path / "run"), *keep],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    killer = threading.Timer(120, proc.kill)  # a hung demo fails the test, never the suite
    killer.start()
    try:
        yield proc
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        for pid in _members_of(tmp_path / "run"):  # only if the test already failed
            os.kill(pid, signal.SIGKILL)


def _read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or marker not in lines[-1]:
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            stderr = proc.stderr.read() if proc.stderr is not None else ""
            pytest.fail(f"devcluster ended early:\n{''.join(lines)}\nstderr:\n{stderr}")
        lines.append(line)
    return lines


@pytest.mark.process
@pytest.mark.parametrize("devcluster", [True], indirect=True)
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"]
)
def test_keep_says_how_to_reach_it_and_any_stop_signal_stops_every_member(
    devcluster: subprocess.Popen[str], tmp_path: Path, sig: signal.Signals
) -> None:
    lines = _read_until(devcluster, "stops it")
    # The lines it prints for concordctl work as printed: endpoints, TLS dir, the command.
    env = dict(os.environ)
    for line in lines:
        if line.strip().startswith("export "):
            name, _, value = line.strip().removeprefix("export ").partition("=")
            env[name] = value
    assert env["CONCORD_TLS_DIR"] == str(tmp_path / "run" / "client")
    [command] = [line for line in lines if line.strip().endswith("member list")]
    listed = subprocess.run(
        shlex.split(command), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 4 and "Leader" in listed.stdout
    assert len(_members_of(tmp_path / "run")) == 3

    devcluster.send_signal(sig)
    out, err = devcluster.communicate(timeout=60)
    assert devcluster.returncode == 0, err  # with --keep, a signal is the way to end
    assert "all members stopped" in out
    assert _members_of(tmp_path / "run") == [], f"members outlived {sig.name}"


@pytest.mark.process
@pytest.mark.parametrize("devcluster", [False], indirect=True)
def test_sigterm_during_the_demo_stops_every_member_and_exits_130(
    devcluster: subprocess.Popen[str], tmp_path: Path
) -> None:
    _read_until(devcluster, "cluster up")
    devcluster.send_signal(signal.SIGTERM)
    out, err = devcluster.communicate(timeout=60)
    assert devcluster.returncode == 130, out + err
    assert "interrupted (SIGTERM); stopping the members" in err
    assert "Traceback" not in err
    assert "all members stopped" in out
    assert _members_of(tmp_path / "run") == [], "members outlived SIGTERM"


def _members_of(root: Path) -> list[int]:
    """Live processes whose command line names `root` (the members' data dirs are in it)."""
    marker = str(root).encode()
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and marker in _cmdline(p)
        and b"coordinator.daemon.member" in _cmdline(p)
    ]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
