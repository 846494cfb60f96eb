"""Process tests: an operator's mistakes with a member's data dir are refused, not obeyed.

A second `concord-coordinator` started on a data dir that a running member holds (autolocked
and waiting for its key, or serving) is refused at once, before it listens or anyone could
unlock it, and says which process holds the dir. A restart with another `--cluster-id` than
the one the data dir was created under is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from coordinator.storage import KeyStore
from coordinator.testing.ports import free_ports
from coordinator.testing.process_cluster import (
    REPO,
    MakeCluster,
    MemberProcess,
    ProcessCluster,
    run,
)

pytestmark = pytest.mark.process


def _second_process(cluster: ProcessCluster, m: MemberProcess) -> subprocess.CompletedProcess[str]:
    """Run another member process on `m`'s data dir (its own ports) until it exits."""
    client, peer, metrics_port = free_ports(3)
    twin = dataclasses.replace(
        m, client_port=client, peer_port=peer, metrics_port=metrics_port, popen=None
    )
    return subprocess.run(
        cluster.command(twin),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _files(data_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under `data_dir`: (size, mtime in ns), to show nothing was written."""
    return {
        str(p.relative_to(data_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(data_dir.rglob("*"))
        if p.is_file()
    }


def test_a_second_process_on_a_data_dir_is_refused_even_while_the_first_is_locked(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(1)
    m = cluster.members[1]
    run(cluster.wait_ready(), 60)

    # Serving, not autolocked: the second process is refused and the first goes on.
    second = _second_process(cluster, m)
    assert second.returncode == 1, second.stderr
    assert f"data dir {m.data_dir} is in use by process {m.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert m.running()
    run(cluster.wait_ready(), 30)

    # Autolocked and restarted: the member waits for its key. A second process must not get
    # as far as waiting too (whoever unlocked it would be talking to the wrong one).
    assert cluster.terminate(1) == 0
    KeyStore.open(m.data_dir).enable_autolock()
    cluster.start(1)

    async def locked() -> bool:
        try:
            status, body = await m.get("/readyz")
        except OSError:
            return False
        return status == 503 and body.startswith("locked")

    run(cluster.wait(locked, 30, "member 1 to report itself locked"), 60)
    before = _files(m.data_dir)
    second = _second_process(cluster, m)
    assert second.returncode == 1, second.stderr
    assert f"data dir {m.data_dir} is in use by process {m.pid}" in second.stderr
    assert "LOCKED" not in second.stderr  # refused before it opened any key
    assert _files(m.data_dir) == before
    assert m.running()
    # Once the holder is gone (even by SIGKILL) the lock goes with it: a restart just works.
    cluster.kill(1)
    cluster.start(1)
    run(cluster.wait(locked, 30, "member 1 to come back locked after a kill -9"), 60)


def test_a_restart_with_another_cluster_id_is_refused_and_writes_nothing(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(1)
    m = cluster.members[1]
    run(cluster.wait_ready(), 60)

    async def write() -> None:
        async with cluster.client() as c:
            await c.put(b"k", b"v")

    run(write(), 30)
    assert cluster.terminate(1) == 0
    assert (m.data_dir / "CLUSTER_ID").read_text() == f"{cluster.cluster_id}\n"
    before = _files(m.data_dir)

    cluster.cluster_id = "another-cluster"
    wrong = subprocess.run(
        cluster.command(m), cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert wrong.returncode == 2, wrong.stderr
    assert (
        f"{m.data_dir} belongs to cluster 'process-test', not --cluster-id 'another-cluster'"
        in wrong.stderr
    )
    assert "Nothing was changed" in wrong.stderr and "Traceback" not in wrong.stderr
    assert _files(m.data_dir) == before

    # The right id: it starts, with its data.
    cluster.cluster_id = "process-test"
    cluster.start(1)
    run(cluster.wait_ready(), 60)

    async def read() -> None:
        async with cluster.client() as c:
            kv = await c.get(b"k")
            assert kv is not None and kv.value == b"v"

    run(read(), 30)
