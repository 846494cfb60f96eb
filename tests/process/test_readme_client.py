"""The README's client-library example, run as written against real members over mutual TLS:
a reader copies it into a file, sets CONCORD_ENDPOINTS and CONCORD_TLS_DIR, and runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.testing.process_cluster import ProcessCluster, run

pytestmark = pytest.mark.process

README = Path(__file__).resolve().parents[2] / "README.md"


def client_example() -> str:
    """The ```python block under the README's "Using the client library" heading."""
    text = README.read_text()
    section = text.split("## Using the client library", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's client-library example is gone"
    return match.group(1)


def test_the_readme_client_example_runs_as_written(cluster: ProcessCluster, tmp_path: Path) -> None:
    async def seed() -> None:
        await cluster.wait_ready()
        async with cluster.client() as client:
            await client.put(b"app/a", b"1")
            await client.put(b"app/b", b"2")

    run(seed(), 60)
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "ca.pem").write_bytes(cluster.ca.cert_pem)
    (tls / "client.pem").write_bytes(cluster.client_cert.cert_pem)
    (tls / "client-key.pem").write_bytes(cluster.client_cert.key_pem)
    (tmp_path / "example.py").write_text(client_example())
    env = {
        **os.environ,
        "CONCORD_ENDPOINTS": ",".join(cluster.endpoints()),
        "CONCORD_TLS_DIR": str(tls),
    }
    out = subprocess.run(
        [sys.executable, str(tmp_path / "example.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"fencing token \d+", lines[0]), lines
    assert lines[1:] == ["b'app/a' b'1'", "b'app/b' b'2'"]
