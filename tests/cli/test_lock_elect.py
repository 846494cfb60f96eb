"""`concordctl lock` and `concordctl elect` against the in-process 3-member cluster: the
--timeout of each (exit 1, the place in line withdrawn), a command that cannot be run (127,
one line, no traceback, the lock released), the child killed when the lock is lost, and the
exit status 130 after SIGTERM (elect resigns, lock stops its child and lets go)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import SyncClient
from tests.cli.threaded import ThreadedCluster, concordctl

REPO = Path(__file__).resolve().parents[2]
CONCORDCTL = [sys.executable, "-m", "coordinator.cli.main"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCluster]:
    c = ThreadedCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.shutdown()


def lock_info(cluster: ThreadedCluster, name: str) -> pb.LockInfoResponse:
    async def info() -> pb.LockInfoResponse:
        leader = await cluster.cluster.leader()
        resp: pb.LockInfoResponse = await leader.client.lock.Info(
            pb.LockInfoRequest(name=name), timeout=5
        )
        return resp

    return cluster.call(info())


class Proc:
    """concordctl as a process of its own (it installs signal handlers), killed after 60 s
    whatever happens, so reading its output is bounded."""

    def __init__(self, endpoints: list[str], *args: str) -> None:
        self.popen = subprocess.Popen(
            [*CONCORDCTL, "--endpoints", ",".join(endpoints), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._killer = threading.Timer(60, self.popen.kill)
        self._killer.daemon = True
        self._killer.start()

    def finish(self) -> tuple[int, str, str]:
        try:
            out, err = self.popen.communicate(timeout=30)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.communicate(timeout=10)
            self._killer.cancel()
        return self.popen.returncode, out, err


def test_lock_timeout_exits_1_and_leaves_the_queue(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    with SyncClient(eps) as holder, holder.lock("cli-busy", ttl_ms=10_000) as held:
        res = concordctl(eps, "lock", "--timeout", "500ms", "cli-busy", "--", "true")
        assert res.exit_code == 1, res.output
        assert res.stderr == (
            "Error: DEADLINE_EXCEEDED: lock 'cli-busy' not obtained within the timeout of 0.5 s\n"
        )
        info = lock_info(cluster, "cli-busy")
        assert [h.lease for h in info.holders] == [held.lease] and info.waiters == 0


def test_lock_runs_the_command_with_its_token_and_releases(cluster: ThreadedCluster) -> None:
    res = concordctl(
        cluster.endpoints,
        "lock",
        "--timeout",
        "10s",
        "cli-run",
        "--",
        "sh",
        "-c",
        'test "$CONCORD_LOCK_NAME" = cli-run && test "$CONCORD_FENCING_TOKEN" -gt 0 && exit 3',
    )
    assert res.exit_code == 3, res.output
    assert not lock_info(cluster, "cli-run").holders


def test_lock_with_a_missing_command_says_so_in_one_line(cluster: ThreadedCluster) -> None:
    res = concordctl(cluster.endpoints, "lock", "cli-missing", "--", "/no/such/command", "x")
    assert res.exit_code == 127, res.output
    assert res.stderr == "Error: /no/such/command: command not found\n"
    assert "Traceback" not in res.output
    info = lock_info(cluster, "cli-missing")
    assert not info.holders and info.waiters == 0


def test_lock_kills_the_command_when_the_lock_is_lost(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    proc = Proc(eps, "lock", "--ttl", "3s", "cli-lost", "--", "sleep", "120")
    try:
        with SyncClient(eps) as other:
            holders = _wait_for_holder(cluster, "cli-lost", proc)
            other.lease_revoke(holders[0].lease)  # the lease ends behind the holder's back
    finally:
        code, _, err = proc.finish()
    assert code == 1, err
    assert "lock 'cli-lost' is lost" in err and "killing the command" in err
    assert "Traceback" not in err


def _wait_for_holder(cluster: ThreadedCluster, name: str, proc: Proc) -> list[pb.LockHolder]:
    """Until `proc` holds `name` (bounded by the process's own 60 s kill)."""
    while True:
        holders = list(lock_info(cluster, name).holders)
        if holders:
            return holders
        assert proc.popen.poll() is None, proc.finish()
        time.sleep(0.05)  # a bounded poll of another process's state


def test_lock_interrupted_stops_the_command_and_lets_go(cluster: ThreadedCluster) -> None:
    proc = Proc(cluster.endpoints, "lock", "cli-term", "--", "sleep", "120")
    try:
        _wait_for_holder(cluster, "cli-term", proc)
        proc.popen.send_signal(signal.SIGTERM)
    finally:
        code, _, err = proc.finish()
    assert code == 130, err
    assert "interrupted; lock 'cli-term' released (or the wait withdrawn)" in err
    assert not lock_info(cluster, "cli-term").holders


def test_lock_interrupted_while_waiting_withdraws(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    with SyncClient(eps) as holder, holder.lock("cli-wait", ttl_ms=10_000) as held:
        proc = Proc(eps, "lock", "cli-wait", "--", "true")
        try:
            while lock_info(cluster, "cli-wait").waiters != 1:
                assert proc.popen.poll() is None, proc.finish()
                time.sleep(0.05)  # a bounded poll of another process's state
            proc.popen.send_signal(signal.SIGTERM)
        finally:
            code, _, err = proc.finish()
        assert code == 130, err
        info = lock_info(cluster, "cli-wait")
        assert [h.lease for h in info.holders] == [held.lease] and info.waiters == 0


def test_elect_timeout_exits_1_and_withdraws(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    with SyncClient(eps) as incumbent:
        with incumbent.leadership("cli-chief", b"incumbent"):
            res = concordctl(eps, "elect", "--timeout", "500ms", "cli-chief", "challenger")
            assert res.exit_code == 1, res.output
            assert (
                "Error: DEADLINE_EXCEEDED: the leadership of election 'cli-chief' not "
                "obtained within the timeout of 0.5 s" in res.stderr
            )
        assert incumbent.leader("cli-chief") is None  # the challenger is not in line


def test_elect_exits_130_after_resigning_on_sigterm(cluster: ThreadedCluster) -> None:
    proc = Proc(cluster.endpoints, "elect", "cli-term-elect", "worker-1", "--ttl", "5s")
    try:
        assert proc.popen.stdout is not None
        line = proc.popen.stdout.readline()  # until elected
        assert line.startswith("elected: cli-term-elect = worker-1 (lease "), line
        proc.popen.send_signal(signal.SIGTERM)
    finally:
        code, _, err = proc.finish()
    assert code == 130, err
    assert "resigned from 'cli-term-elect'" in err
    res = concordctl(cluster.endpoints, "elect", "--leader", "cli-term-elect")
    assert res.exit_code == 1 and "has no leader" in res.stderr
