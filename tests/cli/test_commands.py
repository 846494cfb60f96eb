"""concordctl against the in-process 3-member cluster (tests/server/harness.py, on a loop in
a background thread): leases, watch, elections, membership; tables and `-o json`; the
service's refusals as exit 1 with its message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.client import SyncClient
from tests.cli.threaded import ThreadedCluster, concordctl

REPO = Path(__file__).resolve().parents[2]
CONCORDCTL = [sys.executable, "-m", "coordinator.cli.main"]
_KILLERS: dict[int, threading.Timer] = {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCluster]:
    c = ThreadedCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.shutdown()


def test_leases_grant_ttl_revoke(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    res = concordctl(eps, "-o", "json", "lease", "grant", "30s")
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.stdout)
    lease = row["id"]
    assert row["ttl_ms"] == 30_000

    res = concordctl(eps, "-o", "json", "lease", "ttl", str(lease))
    assert res.exit_code == 0, res.output
    [info] = json.loads(res.stdout)
    assert info["id"] == lease and info["ttl_ms"] == 30_000
    assert 0 < info["remaining_ms"] <= 30_000

    res = concordctl(eps, "lease", "revoke", str(lease))
    assert res.exit_code == 0 and "True" in res.stdout
    for args in (["lease", "ttl", str(lease)], ["lease", "revoke", str(lease)]):
        res = concordctl(eps, *args)
        assert res.exit_code == 1, res.output
        assert res.stderr.startswith("Error: NOT_FOUND:") and str(lease) in res.stderr

    res = concordctl(eps, "lease", "grant", "500ms")  # valid input, but below the service's floor
    assert res.exit_code == 1
    assert "INVALID_ARGUMENT: lease TTL 500 ms is outside 1000..86400000 ms" in res.stderr


def test_get_prefix_lists_every_key_under_it(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    for key in ("pfx/b", "pfx/a", "pfx0", "pfx/c"):
        assert concordctl(eps, "put", key, key.upper()).exit_code == 0
    res = concordctl(eps, "-o", "json", "get", "--prefix", "pfx/")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["key"], r["value"]) for r in rows] == [
        ("pfx/a", "PFX/A"),
        ("pfx/b", "PFX/B"),
        ("pfx/c", "PFX/C"),
    ]
    res = concordctl(eps, "get", "--prefix", "--limit", "2", "pfx/")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "VERSION", "MOD_REVISION"]
    assert [line.split()[0] for line in lines[1:]] == ["pfx/a", "pfx/b"]
    res = concordctl(eps, "-o", "json", "get", "--prefix", "nothing-here/")
    assert (res.exit_code, json.loads(res.stdout)) == (0, [])
    res = concordctl(eps, "get", "--limit", "2", "pfx/a")
    assert res.exit_code == 2 and "--limit goes with --prefix" in res.stderr
    res = concordctl(eps, "get", "pfx/a")
    assert res.exit_code == 0 and "PFX/A" in res.stdout


def test_put_with_a_lease_and_watch_replays_in_order(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    lease = json.loads(concordctl(eps, "-o", "json", "lease", "grant", "60").stdout)[0]["id"]
    first = json.loads(concordctl(eps, "-o", "json", "put", "w/a", "1").stdout)[0]["revision"]
    assert concordctl(eps, "put", "w/b", "2", "--lease", str(lease)).exit_code == 0
    assert concordctl(eps, "put", "other", "x").exit_code == 0
    assert concordctl(eps, "del", "w/a").exit_code == 0
    assert concordctl(eps, "lease", "revoke", str(lease)).exit_code == 0  # deletes w/b

    res = concordctl(
        eps, "-o", "json", "watch", "w/", "--prefix", "--rev", str(first), "--limit", "4"
    )
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(e["type"], e["key"], e.get("value")) for e in events] == [
        ("put", "w/a", "1"),
        ("put", "w/b", "2"),
        ("delete", "w/a", None),
        ("delete", "w/b", None),
    ]
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(revisions) and revisions[0] == first

    table = concordctl(eps, "watch", "w/a", "--rev", str(first), "--limit", "1")
    assert table.exit_code == 0, table.output
    header, line = table.stdout.splitlines()
    assert header.split() == ["REVISION", "TYPE", "KEY", "VALUE"]
    assert line.split() == [str(first), "put", "w/a", "1"]


def test_elect_leader_shows_the_current_leader(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    res = concordctl(eps, "elect", "--leader", "nobody-runs")
    assert res.exit_code == 1
    assert "election 'nobody-runs' has no leader" in res.stderr

    with SyncClient(eps) as client:
        lease = client.lease_grant(30_000)
        leadership = client.campaign("cli-elect", lease, b"node-a")
        res = concordctl(eps, "-o", "json", "elect", "--leader", "cli-elect")
        assert res.exit_code == 0, res.output
        [row] = json.loads(res.stdout)
        assert row == {
            "election": "cli-elect",
            "value": "node-a",
            "lease": lease,
            "fencing_token": leadership.fencing_token,
        }
        client.resign(leadership)
        client.lease_revoke(lease)


def _elect(endpoints: list[str], name: str, value: str) -> subprocess.Popen[str]:
    """`concordctl elect` as a process of its own (it installs signal handlers), killed
    after 60 s whatever happens, so reading its output is bounded."""
    proc = subprocess.Popen(
        [*CONCORDCTL, "--endpoints", ",".join(endpoints), "elect", name, value, "--ttl", "5s"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    killer = threading.Timer(60, proc.kill)
    killer.daemon = True
    killer.start()
    _KILLERS[proc.pid] = killer
    return proc


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        _KILLERS.pop(proc.pid).cancel()


def test_elect_campaigns_leads_and_resigns_on_ctrl_c(cluster: ThreadedCluster) -> None:
    proc = _elect(cluster.endpoints, "proc-elect", "worker-1")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # until elected
        assert line.startswith("elected: proc-elect = worker-1 (lease "), line
        shown = concordctl(cluster.endpoints, "elect", "--leader", "proc-elect")
        assert shown.exit_code == 0 and "worker-1" in shown.stdout
        proc.send_signal(signal.SIGINT)
    finally:
        _, err = _finish(proc)
    assert proc.returncode == 130, err  # interrupted (after resigning), as the README says
    assert "resigned from 'proc-elect'" in err
    res = concordctl(cluster.endpoints, "elect", "--leader", "proc-elect")
    assert res.exit_code == 1 and "has no leader" in res.stderr


def test_elect_interrupted_while_waiting_withdraws(cluster: ThreadedCluster) -> None:
    with SyncClient(cluster.endpoints) as client:
        lease = client.lease_grant(30_000)
        leadership = client.campaign("busy", lease, b"incumbent")
        proc = _elect(cluster.endpoints, "busy", "challenger")
        try:
            assert proc.stderr is not None
            assert "campaigning in 'busy'" in proc.stderr.readline()
            proc.send_signal(signal.SIGINT)
        finally:
            out, err = _finish(proc)
        assert proc.returncode == 130, err
        assert "interrupted before being elected; withdrawn" in err and out == ""
        current = client.leader("busy")
        assert current is not None and current.value == b"incumbent"
        client.resign(leadership)
        assert client.leader("busy") is None  # the challenger is no longer in line
        client.lease_revoke(lease)


def test_membership_add_promote_remove_transfer(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    res = concordctl(eps, "member", "add", "4", "m4", "http://127.0.0.1:1", "http://127.0.0.1:2")
    assert res.exit_code == 0, res.output
    assert "member promote 4" in res.stderr
    listed = json.loads(concordctl(eps, "-o", "json", "member", "list").stdout)
    m4 = next(m for m in listed if m["id"] == 4)
    assert (m4["name"], m4["role"], m4["status"]) == ("m4", "learner", "Unreachable")

    res = concordctl(eps, "member", "promote", "4")  # nobody runs it: it never catches up
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: FAILED_PRECONDITION:")
    res = concordctl(eps, "member", "transfer", "4")
    assert res.exit_code == 1 and "is not a voter and cannot lead" in res.stderr

    assert concordctl(eps, "member", "remove", "4").exit_code == 0
    res = concordctl(eps, "member", "remove", "4")
    assert res.exit_code == 1
    assert "NOT_FOUND: member 4 is neither in the Raft configuration" in res.stderr

    leader = cluster.leader_id()
    target = next(m.id for m in cluster.cluster.running() if m.id != leader)
    res = concordctl(eps, "-o", "json", "member", "transfer", str(target))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == [{"leader": target}]
    assert cluster.leader_id() == target


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_watch_streams_until_ctrl_c_and_exits_130(
    cluster: ThreadedCluster, sig: signal.Signals
) -> None:
    """A real concordctl process and a real signal: Ctrl-C (or a SIGTERM from a supervisor)
    ends the watch quietly with 130, the README's "interrupted", not 0 (which `--limit`
    reaching its count returns)."""
    with SyncClient(cluster.endpoints) as client:
        start = client.put(b"not-live", b"") + 1  # so no event can slip by the watch's start
    eps = ",".join(cluster.endpoints)
    proc = subprocess.Popen(
        [*CONCORDCTL, "--endpoints", eps, "watch", "live/", "--prefix", "--rev", str(start)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    killer = threading.Timer(60, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["REVISION", "TYPE", "KEY", "VALUE"]
        with SyncClient(cluster.endpoints) as client:
            rev = client.put(b"live/x", b"42")
            line = proc.stdout.readline().split()
            assert line[1:] == ["put", "live/x", "42"] and int(line[0]) == rev
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err
        assert out == "" and err == ""
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
