"""The member process: command line, HTTP endpoints, autolock, and three real processes.

The process tests start `python -m coordinator.daemon.member` on ephemeral loopback ports
and talk to it over HTTP. Every wait is bounded and waits for a condition.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.daemon.config import (
    ConfigError,
    MemberConfig,
    build_parser,
    config_from_args,
    parse_initial_cluster,
)
from coordinator.daemon.httpd import HttpServer, Response
from coordinator.daemon.member import Member, main
from coordinator.pki import create_ca, issue_member_cert, write_member_tls
from coordinator.storage import KeyStore
from coordinator.testing.ports import free_ports
from coordinator.testing.procs import MEMBER_MODULE

REPO = Path(__file__).resolve().parents[2]


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def wait_for(cond: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async def poll() -> None:
        while not cond():  # noqa: ASYNC110  (no change notification to wait on)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


# --- command line ------------------------------------------------------------------------------


def test_command_line_is_checked() -> None:
    assert parse_initial_cluster("1=a:1, 2=b:2,3=[::1]:3") == {1: "a:1", 2: "b:2", 3: "[::1]:3"}
    for bad, why in [
        ("1=a", "HOST:PORT"),
        ("x=a:1", "positive ID"),
        ("1=a:1,1=b:2", "twice"),
        ("", "empty"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_initial_cluster(bad)
    base = ["--id", "1", "--data-dir", "/tmp/x", "--initial-cluster", "1=a:1", "--cluster-id", "c"]
    cfg = config_from_args(build_parser().parse_args([*base, "--insecure"]))
    assert cfg.name == "member-1" and cfg.insecure and cfg.tls_dir is None
    assert cfg.read_mode == "barrier"  # lease reads only when asked for, on every member
    lease = config_from_args(
        build_parser().parse_args([*base, "--insecure", "--read-mode", "lease"])
    )
    assert lease.read_mode == "lease"
    with pytest.raises(SystemExit):
        main([*base, "--insecure", "--read-mode", "clock"])
    # A first member lists itself under the address its peers dial (--initial-cluster, maybe
    # a proxy in front of --peer-listen), unless told otherwise.
    assert cfg.advertise_peer_url == "http://a:1"
    told = [*base, "--insecure", "--advertise-peer-url", "http://b:2"]
    assert config_from_args(build_parser().parse_args(told)).advertise_peer_url == "http://b:2"
    # TLS or an explicit --insecure, never neither (and never both).
    with pytest.raises(SystemExit) as exit_info:
        main(base)
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main([*base, "--insecure", "--tls-dir", "/tmp/t"])
    with pytest.raises(SystemExit):
        main([*base, "--insecure", "--election-ticks", "1"])


def test_workload_identity_flags_are_checked(tmp_path: Path) -> None:
    base = [
        "--id", "1", "--data-dir", str(tmp_path / "d"), "--initial-cluster", "1=a:1",
        "--cluster-id", "c", "--tls-dir", str(tmp_path / "tls"),
    ]  # fmt: skip
    off = config_from_args(build_parser().parse_args(base))
    assert off.workload_identity == "off" and off.workload_listen == ""
    on = [*base, "--workload-identity", "kubernetes", "--workload-listen", "127.0.0.1:7073"]
    cfg = config_from_args(build_parser().parse_args(on))
    assert (cfg.workload_identity, cfg.workload_listen, cfg.token_audience) == (
        "kubernetes",
        "127.0.0.1:7073",
        "concord",
    )
    assert cfg.token_review_kubeconfig is None  # in-cluster
    for bad, why in [
        ([*base, "--workload-identity", "kubernetes"], "needs --workload-listen"),
        ([*base, "--workload-listen", "127.0.0.1:7073"], "used with --workload-identity"),
        ([*on[:-2], "--workload-listen", "nope"], "HOST:PORT"),
        ([*on, "--token-audience", " "], "must not be empty"),
    ]:
        with pytest.raises(ConfigError, match=why):
            config_from_args(build_parser().parse_args(bad))
    insecure = [a for a in on if a not in ("--tls-dir", str(tmp_path / "tls"))]
    with pytest.raises(ConfigError, match="needs TLS"):
        config_from_args(build_parser().parse_args([*insecure, "--insecure"]))


# --- HTTP --------------------------------------------------------------------------------------


def test_http_server_serves_fixed_paths() -> None:
    async def scenario() -> None:
        server = HttpServer({"/ok": lambda: Response.text(200, "fine"), "/boom": _boom})
        port = await server.start("127.0.0.1", 0)
        try:
            assert await http_get(port, "/ok") == (200, "fine\n")
            assert await http_get(port, "/ok?x=1") == (200, "fine\n")
            assert await http_get(port, "/ok", "HEAD") == (200, "")
            assert (await http_get(port, "/nope"))[0] == 404
            assert (await http_get(port, "/ok", "POST"))[0] == 405
            assert (await http_get(port, "/boom"))[0] == 500
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"garbage\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert raw.startswith(b"HTTP/1.1 400 ")
        finally:
            await server.close()

    asyncio.run(scenario())


def _boom() -> Response:
    raise RuntimeError("handler bug")


# --- in process: autolock ----------------------------------------------------------------------


def _config(tmp_path: Path, **overrides: object) -> MemberConfig:
    peer = free_ports(1)[0]
    fields: dict[str, object] = {
        "id": 1,
        "name": "solo",
        "data_dir": tmp_path / "data",
        "client_listen": "127.0.0.1:0",
        "peer_listen": f"127.0.0.1:{peer}",
        "metrics_listen": "127.0.0.1:0",
        "initial_cluster": {1: f"127.0.0.1:{peer}"},
        "cluster_id": "solo-cluster",
        "tls_dir": None,
        "insecure": True,
        "unlock_key_file": None,
        "tick_ms": 10,
        "election_ticks": 10,
    }
    fields.update(overrides)
    return MemberConfig(**fields)  # type: ignore[arg-type]


def test_a_locked_member_serves_only_healthz_until_its_key_arrives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = KeyStore.create(tmp_path / "data", autolock=True)
    unlock_key = keys.unlock_key
    assert unlock_key is not None
    key_file = tmp_path / "secret" / "unlock-key"

    async def scenario() -> None:
        member = Member(_config(tmp_path, unlock_key_file=key_file), client_api=False)
        task = asyncio.create_task(member.run())
        try:
            await wait_for(lambda: member.phase == "locked")
            port = member.http_port
            assert await http_get(port, "/healthz") == (200, "ok (locked)\n")
            status, body = await http_get(port, "/readyz")
            assert status == 503 and body.startswith("locked: waiting for the unlock key")
            assert (await http_get(port, "/metrics"))[0] == 503

            # A wrong key keeps it locked (and is logged); the right one unlocks it.
            key_file.parent.mkdir()
            key_file.write_text("CONCORD-UNLOCK-NOT-A-KEY\n")
            await wait_for(lambda: "is refused" in caplog.text)
            assert member.phase == "locked"
            key_file.write_text(unlock_key + "\n")
            await wait_for(lambda: member.phase == "running")

            async def ready() -> None:
                while (await http_get(port, "/readyz"))[0] != 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(ready(), 15)
            status, body = await http_get(port, "/readyz")
            assert body.startswith("ready: leader 1")
            status, text = await http_get(port, "/metrics")
            assert status == 200
            assert 'concord_raft_role{role="leader"} 1.0' in text
            assert "concord_member_locked 0.0" in text
            assert "concord_wal_fsync_duration_seconds_count" in text
        finally:
            member.request_stop("test over")
            assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(scenario())


def test_a_stop_while_locked_exits_cleanly(tmp_path: Path) -> None:
    KeyStore.create(tmp_path / "data", autolock=True)

    async def scenario() -> None:
        member = Member(_config(tmp_path), client_api=False)
        task = asyncio.create_task(member.run())
        await wait_for(lambda: member.phase == "locked")
        member.request_stop("test over")
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(scenario())


def test_a_new_data_dir_must_be_one_of_the_initial_voters(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = _config(tmp_path, initial_cluster={2: "127.0.0.1:1", 3: "127.0.0.1:2"})
        assert await asyncio.wait_for(Member(cfg, client_api=False).run(), 10) == 1

    asyncio.run(scenario())


# --- three real processes ----------------------------------------------------------------------


class Proc:
    def __init__(
        self,
        tmp_path: Path,
        member_id: int,
        ports: dict[str, int],
        cluster: str,
        security: list[str],
    ) -> None:
        self.id = member_id
        self.ports = ports
        self.log_path = tmp_path / f"member-{member_id}.log"
        args = [
            sys.executable,
            "-m",
            MEMBER_MODULE,
            "--id",
            str(member_id),
            "--data-dir",
            str(tmp_path / f"data-{member_id}"),
            "--client-listen",
            f"127.0.0.1:{ports['client']}",
            "--peer-listen",
            f"127.0.0.1:{ports['peer']}",
            "--metrics-listen",
            f"127.0.0.1:{ports['metrics']}",
            "--initial-cluster",
            cluster,
            "--cluster-id",
            "process-test",
            *security,
            "--tick-ms",
            "20",
            "--election-ticks",
            "10",
        ]
        with self.log_path.open("wb") as log_file:
            self.popen = subprocess.Popen(
                args,
                cwd=REPO,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["metrics"], timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _poll(cond: Callable[[], bool], timeout_s: float, what: str, procs: list[Proc]) -> None:
    deadline = time.perf_counter() + timeout_s
    while not cond():
        if time.perf_counter() > deadline:
            logs = "\n".join(f"--- member {p.id}\n{p.log()[-3000:]}" for p in procs)
            pytest.fail(f"timed out waiting for {what}\n{logs}")
        for p in procs:
            if p.popen.poll() is not None:
                pytest.fail(f"member {p.id} exited with {p.popen.returncode}\n{p.log()}")
        time.sleep(0.05)  # a bounded poll of another process's state


@pytest.fixture(params=["insecure", "tls"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Proc]]:
    ports = free_ports(9)
    by_member = {
        i: dict(zip(("client", "peer", "metrics"), ports[3 * (i - 1) : 3 * i], strict=True))
        for i in (1, 2, 3)
    }
    initial = ",".join(f"{i}=127.0.0.1:{p['peer']}" for i, p in by_member.items())
    security = {i: ["--insecure"] for i in (1, 2, 3)}
    if request.param == "tls":
        ca = create_ca("process-test")
        for i in (1, 2, 3):
            tls_dir = tmp_path / f"tls-{i}"
            write_member_tls(tls_dir, ca.cert_pem, issue_member_cert(ca, f"member-{i}"))
            security[i] = ["--tls-dir", str(tls_dir)]
    procs = [Proc(tmp_path, i, by_member[i], initial, security[i]) for i in (1, 2, 3)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait(10)


def _ready(p: Proc) -> bool:
    try:
        return p.get("/readyz")[0] == 200
    except OSError:
        return False  # not listening yet


@pytest.mark.process
def test_three_member_processes_elect_serve_metrics_and_stop_on_sigterm(
    cluster: list[Proc],
) -> None:
    _poll(lambda: all(_ready(p) for p in cluster), 30, "/readyz 200 on every member", cluster)
    assert all(p.get("/healthz") == (200, "ok (running)\n") for p in cluster)
    leaders = set()
    for p in cluster:
        status, text = p.get("/metrics")
        assert status == 200
        assert "\nconcord_raft_term " in text
        leader_line = next(x for x in text.splitlines() if x.startswith("concord_raft_leader "))
        leaders.add(float(leader_line.split()[1]))
        assert 'concord_peer_reachable{peer="' in text
        assert "# TYPE concord_wal_fsync_duration_seconds histogram" in text
    assert len(leaders) == 1 and leaders != {0.0}, leaders
    roles = [p.get("/metrics")[1] for p in cluster]
    assert sum('concord_raft_role{role="leader"} 1.0' in t for t in roles) == 1

    if importlib.util.find_spec("coordinator.server.server") is not None:
        for p in cluster:  # the client API is up too (its behaviour is tested elsewhere)
            socket.create_connection(("127.0.0.1", p.ports["client"]), timeout=5).close()

    started = time.perf_counter()
    for p in cluster:
        p.popen.send_signal(signal.SIGTERM)
    for p in cluster:
        assert p.popen.wait(10) == 0, p.log()
        out = p.log()
        assert "SIGTERM: stopping" in out and "WAL closed" in out, out
        secure = "--insecure" not in p.popen.args
        assert ("INSECURE MODE" in out) is not secure
        assert ("mutual TLS with certificates from" in out) is secure
    print(f"all three stopped {time.perf_counter() - started:.2f} s after SIGTERM")
