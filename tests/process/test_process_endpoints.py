"""Process tests: a wrong endpoint or TLS setting against a real member says what is wrong
and what to do, quickly, with no gRPC core log on stderr (issue 13).

One real member process with mutual TLS; the client is pointed at its metrics port, its peer
port, its client port without TLS, and (the right way) its client port with the TLS
directory `concordctl cluster init` would write or the member's own. `concordctl` runs as a
real subprocess, so what reaches stderr is exactly what a person would see.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.client import Client, JoinTokenInfo, NewJoinToken, Unavailable
from coordinator.testing.process_cluster import REPO, MakeCluster, ProcessCluster, run

pytestmark = pytest.mark.process

QUICK_S = 5.0
"""Generous: the client gives up on a wrong endpoint within about connect_timeout_s (2 s)."""


def client_tls_dir(cluster: ProcessCluster) -> Path:
    d = cluster.root / "client-tls"
    d.mkdir(exist_ok=True)
    (d / "ca.pem").write_bytes(cluster.ca.cert_pem)
    (d / "client.pem").write_bytes(cluster.client_cert.cert_pem)
    (d / "client-key.pem").write_bytes(cluster.client_cert.key_pem)
    return d


def concordctl(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    started = time.perf_counter()
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    base.pop("GRPC_VERBOSITY", None)
    res = subprocess.run(
        [sys.executable, "-m", "coordinator.cli.main", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return res.returncode, res.stdout, res.stderr, time.perf_counter() - started


def test_wrong_ports_and_tls_settings_are_explained(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(1)
    run(cluster.wait_ready(), 60)
    m = cluster.members[1]
    tls_dir = client_tls_dir(cluster)
    metrics = f"127.0.0.1:{m.metrics_port}"
    cases = [
        # (endpoint, with TLS, what the message must say)
        (metrics, False, f"{metrics} answered in HTTP/1.x, not gRPC"),
        (metrics, True, "does not speak TLS"),
        (m.peer_address, True, "is it a member's peer port?"),
        (m.peer_address, False, "the member speaks TLS: pass the TLS directory"),
        (m.client_address, False, "the member speaks TLS: pass the TLS directory"),
    ]

    async def library() -> None:
        for endpoint, tls, message in cases:
            make = Client.from_tls_dir if tls else None
            client = (
                make(endpoint, tls_dir, timeout_s=10.0)
                if make
                else Client(endpoint, timeout_s=10.0)
            )
            started = time.perf_counter()
            async with client:
                with pytest.raises(Unavailable) as caught:
                    await client.get(b"k")
            took = time.perf_counter() - started
            assert message in caught.value.message, (endpoint, tls, caught.value.message)
            assert "cluster init" in caught.value.message or "--tls-dir" in caught.value.message
            assert took < QUICK_S, (endpoint, tls, took)
        # The right way, with a client directory or the member's own.
        for d in (tls_dir, m.tls_dir):
            async with Client.from_tls_dir(m.client_address, d) as good:
                assert await good.put(b"k", b"v") > 0
        env = {"CONCORD_ENDPOINTS": m.client_address, "CONCORD_TLS_DIR": str(tls_dir)}
        async with Client.from_env(env) as from_env:
            kv = await from_env.get(b"k")
            assert kv is not None and kv.value == b"v"
            # Join tokens need a TLS cluster (the token names its CA): typed results too.
            token = await from_env.join_token_create()
            assert isinstance(token, NewJoinToken) and token.token.startswith("CONCORD-JOIN-")
            assert token.token not in repr(token)
            assert [t.id for t in await from_env.join_token_list()] == [token.info.id]
            revoked = await from_env.join_token_revoke(token.info.id)
            assert isinstance(revoked, JoinTokenInfo) and revoked.revoked_ms > 0

    run(library(), 120)

    for endpoint, tls, message in cases:
        args = ["--endpoints", endpoint, *(["--tls-dir", str(tls_dir)] if tls else []), "get", "k"]
        code, _, err, took = concordctl(*args)
        assert code == 1, (args, err)
        assert err.startswith("Error: UNAVAILABLE: "), err
        assert message in err, err
        assert err.count("\n") == 1, f"one line, no gRPC core log: {err!r}"
        assert took < QUICK_S + 3.0, (args, took)  # + the interpreter's start-up
    code, out, err, _ = concordctl(
        "get", "k", env={"CONCORD_ENDPOINTS": m.client_address, "CONCORD_TLS_DIR": str(tls_dir)}
    )
    assert (code, err) == (0, ""), err
    assert "v" in out
