"""Secrets as files (coordinator/sidecar/_secretfiles.py) against a real in-process 3-member
cluster with mutual TLS, the sidecar's client holding the operator identity (the one Unseal
answers today): records written as the operator writes them are unsealed into DIR/NAME/KEY,
swapped as a set on change, with HTTP and signal notifications; bad updates keep the files;
/startupz waits for the first delivery. Plus the flags' and notify specs' parsing."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from coordinator import sealing
from coordinator.client import Client
from coordinator.pki import OPERATOR_ROLE, create_ca, issue_client_cert, issue_member_cert
from coordinator.runtime.tls import channel_credentials, server_credentials
from coordinator.sealing import Scope, SealedRecord, sealed_record_key
from coordinator.sidecar import Sidecar
from coordinator.sidecar._main import parser
from coordinator.sidecar._namespace import SERVICE_ACCOUNT_NAMESPACE
from coordinator.sidecar._notify import HttpNotifier, SignalNotifier, parse_notify
from coordinator.sidecar._secretfiles import SecretFiles, SecretFilesConfig, config_from
from tests.server.harness import Cluster, run, wait_for

CA = create_ca("secretfiles-test")
MEMBER = issue_member_cert(CA, "member")
OPERATOR = issue_client_cert(CA, "concord-operator", roles=[OPERATOR_ROLE])
NS = "shop"


def client(c: Cluster) -> Client:
    creds = channel_credentials(CA.cert_pem, OPERATOR.cert_pem, OPERATOR.key_pem)
    ends = [f"127.0.0.1:{m.served.port}" for m in c.running()]
    return Client(ends, credentials=creds, timeout_s=10.0, rpc_timeout_s=5.0)


def with_cluster(root: Path, scenario: Callable[[Cluster], Awaitable[None]]) -> None:
    async def main() -> None:
        creds = server_credentials(CA.cert_pem, MEMBER.cert_pem, MEMBER.key_pem)
        c = await Cluster.start(root, credentials=creds)
        try:
            await scenario(c)
        finally:
            await c.close()

    run(main())


class Sealer:
    def __init__(self, pem: bytes) -> None:
        self.cert = sealing.load_sealing_certificate(pem, dt.datetime.now(dt.UTC))

    def record(self, name: str, values: dict[str, bytes], generation: int = 1) -> bytes:
        data = {
            k: sealing.seal(self.cert.public_key, v, Scope.STRICT, NS, name)
            for k, v in values.items()
        }
        return SealedRecord(data, uid="uid-" + name, generation=generation).encode()


def files(root: Path, name: str) -> dict[str, bytes]:
    d = root / name
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith("..")}


def test_records_become_files_swapped_as_a_set_with_http_and_signal_notifications(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out = tmp_path / "secrets"
    pid_file = tmp_path / "app.pid"
    pid_file.write_text(str(os.getpid()))

    async def scenario(c: Cluster) -> None:
        posts: list[dict[str, Any]] = []
        signals: list[int] = []
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: signals.append(1))

        async def hook(request: web.Request) -> web.Response:
            posts.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/reload", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with client(c) as cl:
            sealer = Sealer((await cl.sealing_certificate()).current.certificate_pem)
            config = SecretFilesConfig(
                NS,
                ("db", "api"),
                out,
                (
                    HttpNotifier(f"http://127.0.0.1:{port}/reload"),
                    SignalNotifier(str(pid_file), signal.SIGUSR1),
                ),
            )
            sidecar = Sidecar(cl, probe_interval_s=0.05)
            delivery = SecretFiles(cl, config, sidecar.metrics.registry, retry_s=0.05)
            sidecar.startup_checks.append(delivery.startup_problem)
            http_port = await sidecar.start("127.0.0.1", 0)
            task = asyncio.create_task(delivery.run())
            try:
                async with aiohttp.ClientSession() as http:

                    async def startupz() -> tuple[int, str]:
                        async with http.get(f"http://127.0.0.1:{http_port}/startupz") as r:
                            return r.status, await r.text()

                    # "db" is there before the sidecar starts; "api" only later.
                    await cl.put(
                        sealed_record_key(NS, "db"),
                        sealer.record("db", {"user": b"app", "password": b"pw-1"}),
                    )
                    await wait_for((out / "db" / "password").exists)
                    assert files(out, "db") == {"password": b"pw-1", "user": b"app"}
                    await wait_for(lambda: sidecar.started)
                    status, text = await startupz()
                    assert status == 503 and "secrets not delivered yet: api" in text

                    await cl.put(sealed_record_key(NS, "api"), sealer.record("api", {"t": b"1"}))
                    await wait_for(lambda: delivery.startup_problem() is None)
                    assert (await startupz())[0] == 200
                    assert not posts and not signals  # first deliveries are not notified

                    # An update: a changed value, a removed key, a new key, one swap.
                    started = loop.time()
                    await cl.put(
                        sealed_record_key(NS, "db"),
                        sealer.record("db", {"password": b"pw-2", "host": b"h"}, 2),
                    )
                    await wait_for(lambda: bool(posts) and bool(signals))
                    print(f"\nrecord put -> files swapped and both notified: "
                          f"{(loop.time() - started) * 1000:.0f} ms")  # fmt: skip
                    assert files(out, "db") == {"host": b"h", "password": b"pw-2"}
                    (change,) = posts[0]["changed"]
                    assert posts[0]["namespace"] == NS
                    assert change["name"] == "db" and change["generation"] == 2
                    assert change["keys"] == ["host", "password"]
                    assert "pw-2" not in json.dumps(posts)

                    # A value that does not unseal (sealed for another name): files kept.
                    bad = SealedRecord(
                        {"password": sealing.seal(sealer.cert.public_key, b"x", Scope.STRICT,
                                                  NS, "other")}
                    ).encode()  # fmt: skip
                    await cl.put(sealed_record_key(NS, "db"), bad)
                    await cl.put(sealed_record_key(NS, "db"), b"not json")
                    await wait_for(lambda: "Malformed" in caplog.text)
                    assert "ScopeMismatch" in caplog.text
                    assert files(out, "db") == {"host": b"h", "password": b"pw-2"}
                    assert len(posts) == 1

                    # Deleted: the files stay.
                    await cl.delete(sealed_record_key(NS, "db"))
                    await wait_for(lambda: "was deleted" in caplog.text)
                    assert files(out, "db") == {"host": b"h", "password": b"pw-2"}
                    assert (await startupz())[0] == 200  # started stays started
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await delivery.close()
                await sidecar.shutdown()
                await runner.cleanup()
                loop.remove_signal_handler(signal.SIGUSR1)
        for secret in (b"pw-1", b"pw-2"):
            assert secret.decode() not in caplog.text

    with_cluster(tmp_path / "cluster", scenario)


def test_a_failed_notification_is_counted_and_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "secrets"

    async def scenario(c: Cluster) -> None:
        async with client(c) as cl:
            sealer = Sealer((await cl.sealing_certificate()).current.certificate_pem)
            config = SecretFilesConfig(
                NS,
                ("db",),
                out,
                (
                    HttpNotifier("http://127.0.0.1:1/nothing-listens"),
                    SignalNotifier(str(tmp_path / "no.pid"), signal.SIGUSR1),
                ),
            )
            sidecar = Sidecar(cl)
            delivery = SecretFiles(cl, config, sidecar.metrics.registry, retry_s=0.05)
            task = asyncio.create_task(delivery.run())
            try:
                key = sealed_record_key(NS, "db")
                await cl.put(key, sealer.record("db", {"a": b"1"}))
                await wait_for((out / "db" / "a").exists)
                await cl.put(key, sealer.record("db", {"a": b"2"}, 2))
                await wait_for(lambda: (out / "db" / "a").read_bytes() == b"2")
                failed = delivery.metrics.notifications

                def count(method: str) -> float:
                    return failed.labels(method, "failed")._value.get()

                await wait_for(lambda: count("http") == 1 and count("signal") == 1)
                await cl.put(key, sealer.record("db", {"a": b"3"}, 3))  # still running
                await wait_for(lambda: (out / "db" / "a").read_bytes() == b"3")
                assert not task.done()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await delivery.close()

    with_cluster(tmp_path / "cluster", scenario)


def args_of(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def test_flags_and_environment() -> None:
    assert config_from(args_of(), {}) is None  # no secrets asked: nothing to do
    cfg = config_from(args_of("--secrets", "db, api,db", "--namespace", "shop"), {})
    assert cfg is not None
    assert (cfg.names, cfg.namespace, str(cfg.directory)) == (("db", "api"), "shop", "/run/secrets")
    assert cfg.file_mode == 0o400 and cfg.notifiers == ()
    env = {
        "CONCORD_SECRETS": "db",
        "POD_NAMESPACE": "prod",
        "CONCORD_SECRETS_DIR": "/tmp/s",
        "CONCORD_SECRETS_NOTIFY": "signal:/run/app.pid:HUP",
        "CONCORD_SECRETS_MODE": "0440",
    }
    cfg = config_from(args_of(), env)
    assert cfg is not None
    assert (cfg.names, cfg.namespace, str(cfg.directory), cfg.file_mode) == (
        ("db",), "prod", "/tmp/s", 0o440
    )  # fmt: skip
    (n,) = cfg.notifiers
    assert isinstance(n, SignalNotifier) and (n.target, n.signum) == ("/run/app.pid", signal.SIGHUP)
    with pytest.raises(ValueError, match="not a SealedSecret name"):
        config_from(args_of("--secrets", "Bad_Name", "--namespace", "x"), {})


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("signal:nginx", "signal:TARGET:SIG"),
        ("signal:nginx:NOPE", "not a signal"),
        ("http:http://10.0.0.1:80/x", "loopback"),
        ("http:https://127.0.0.1:80/x", "loopback"),
        ("http:http://127.0.0.1/x", "loopback"),
        ("mail:me", "--secrets-notify is none"),
    ],
)
def test_bad_notify_specs_are_refused(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_notify(spec)


def test_notify_specs() -> None:
    assert parse_notify("none") is None
    n = parse_notify("signal:nginx:usr1")
    assert isinstance(n, SignalNotifier) and (n.target, n.signum) == ("nginx", signal.SIGUSR1)
    n = parse_notify("signal:/run/x:y.pid:10")
    assert isinstance(n, SignalNotifier) and n.target == "/run/x:y.pid"
    h = parse_notify("http:http://localhost:8080/-/reload")
    assert isinstance(h, HttpNotifier) and h.url == "http://localhost:8080/-/reload"


def test_a_signal_by_process_name_finds_comm_or_argv0_and_never_the_sidecar(
    tmp_path: Path,
) -> None:
    proc = tmp_path / "proc"
    for pid, comm, argv0 in [
        ("101", "nginx", "nginx: master process"),
        ("102", "python3", "/usr/local/bin/app"),
        ("103", "sh", "/bin/sh"),
        (str(os.getpid()), "nginx", "nginx"),  # the sidecar itself: never signalled
    ]:
        (proc / pid).mkdir(parents=True)
        (proc / pid / "comm").write_text(comm + "\n")
        (proc / pid / "cmdline").write_bytes(argv0.encode() + b"\0--flag\0")
    (proc / "self").mkdir()
    assert SignalNotifier("nginx", signal.SIGHUP, proc)._pids() == [101]
    assert SignalNotifier("app", signal.SIGHUP, proc)._pids() == [102]
    assert SignalNotifier("absent", signal.SIGHUP, proc)._pids() == []


@pytest.mark.parametrize(
    ("argv", "env", "problem"),
    [
        (["--secrets", "Bad_Name", "--namespace", "x"], {}, "not a SealedSecret name"),
        pytest.param(
            ["--secrets", "db"], {}, "needs the pod's namespace",
            marks=pytest.mark.skipif(
                SERVICE_ACCOUNT_NAMESPACE.exists(), reason="runs in a pod: the namespace is known"
            ),
        ),
        ([], {"CONCORD_SECRETS": "db", "POD_NAMESPACE": "x", "CONCORD_SECRETS_NOTIFY": "mail:x"},
         "--secrets-notify is none"),
    ],
)  # fmt: skip
def test_bad_secret_flags_exit_2_before_connecting(
    argv: list[str], env: dict[str, str], problem: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONCORD_", "POD_"))}
    done = subprocess.run(
        [sys.executable, "-m", "coordinator.sidecar", "--endpoints", "127.0.0.1:1", *argv],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert problem in done.stderr
