"""A real concord-sidecar process (`python -m coordinator.sidecar`) in front of three real
member processes with mutual TLS (coordinator/testing/process_cluster.py):
SIGTERM releases what it holds
and resigns, ends the event streams, and exits 0; a non-loopback bind is refused without
--listen-any."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from coordinator.testing.process_cluster import REPO, ProcessCluster, run

pytestmark = pytest.mark.process


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    """Three members with mutual TLS, always torn down (their logs printed on failure)."""
    c = ProcessCluster(tmp_path / "cluster")
    c.start_all()
    try:
        yield c
    except BaseException:
        print(c.log_tails(chars=6000))
        raise
    finally:
        c.close()


def write_client_tls(cluster: ProcessCluster, tls_dir: Path) -> Path:
    tls_dir.mkdir(parents=True, exist_ok=True)
    (tls_dir / "ca.pem").write_bytes(cluster.ca.cert_pem)
    (tls_dir / "client.pem").write_bytes(cluster.client_cert.cert_pem)
    (tls_dir / "client-key.pem").write_bytes(cluster.client_cert.key_pem)
    return tls_dir


def start_sidecar(cluster: ProcessCluster, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CONCORD_ENDPOINTS": ",".join(cluster.endpoints()),
        "CONCORD_TLS_DIR": str(write_client_tls(cluster, tmp_path / "client-tls")),
    }
    log_path = tmp_path / "sidecar.log"
    with log_path.open("wb") as log_file:  # a file, not a pipe: nothing can fill up and block
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.sidecar", "--listen", "127.0.0.1:0"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text().splitlines():  # the port bound, once it is
            if line.startswith("concord-sidecar listening on "):
                return proc, int(line.rsplit(":", 1)[1])
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"the sidecar did not start: {log_path.read_text()}")


def test_sigterm_releases_locks_resigns_and_exits_0(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    async def scenario() -> None:
        await cluster.wait_ready()
        proc, port = start_sidecar(cluster, tmp_path)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:

                async def started() -> bool:
                    async with http.get(base + "/startupz") as resp:
                        return resp.status == 200

                for _ in range(300):
                    if await started():
                        break
                    await asyncio.sleep(0.05)
                async with http.post(base + "/v1/locks/term", json={"ttl_ms": 30_000}) as resp:
                    assert resp.status == 201
                    hold = await resp.json()
                async with http.post(base + "/v1/elections/lead/campaign", json={}) as resp:
                    assert resp.status == 201
                async with http.get(f"{base}/v1/locks/term/holds/{hold['lease']}/events") as stream:
                    first = await stream.content.readline()
                    assert first == b"event: held\n"
                    proc.send_signal(signal.SIGTERM)
                    rest = (await asyncio.wait_for(stream.content.read(), 20)).decode()
                    assert "event: released" in rest
            assert await asyncio.to_thread(proc.wait, 20) == 0
            # Released and resigned at once, not left to the 30 s TTL.
            async with cluster.client() as c:
                assert (await c.lock_info("term")).holders == ()
                assert await c.leader("lead") is None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    run(scenario(), 90)


def test_a_non_loopback_bind_is_refused_without_listen_any() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coordinator.sidecar", "--listen", "0.0.0.0:0"],
        cwd=REPO,
        env={**os.environ, "CONCORD_ENDPOINTS": "127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr and "--listen-any" in done.stderr
