"""Secrets as files end to end: a SealedSecret sealed by `concordctl seal` and applied with
kubectl to the real control plane; the operator (a real process) keeps its ciphertext in a
real 3-member coordinator (mutual TLS); a real `concord-sidecar` process delivers it under
DIR/NAME/KEY, swaps the files when the SealedSecret changes, and tells an "app" process by
SIGUSR1 (pid file) and a loopback HTTP endpoint by POST. /startupz answers 503 until the first
delivery, 200 after. Deleting the SealedSecret removes its record from the coordinator (the
finalizer) and leaves the delivered files in place.

The sidecar authenticates with the operator's client certificate, the one identity Unseal
answers today (workload identities come with the sidecar's token support).

Timing-dependent (processes, an API server): every wait is a bounded poll; the update
latency (kubectl apply to the file changed) is printed (`pytest -s`), never asserted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from aiohttp import web

from coordinator.sealing import SealedRecord, sealed_record_key
from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.ports import free_ports
from coordinator.testing.process_cluster import ProcessCluster
from coordinator.testing.procs import http_get, orphan_proof
from tests.kube.operator_harness import (
    REPO,
    KubeObjects,
    OperatorProcess,
    client_tls_dir,
    eventually,
    now,
)
from tests.kube.test_sealed import (
    apply,
    concordctl,
    published,
    read_secret,
    reason_is,
    secret_manifest,
)

pytestmark = [pytest.mark.kube, pytest.mark.process]

WAIT_S = 30

APP = """
import os, pathlib, signal, sys
pid_file, secret, out = sys.argv[1:4]
def reload(*_):
    with open(out, "a") as f:
        f.write(pathlib.Path(secret).read_text() + "\\n")
signal.signal(signal.SIGUSR1, reload)
pathlib.Path(pid_file).write_text(str(os.getpid()))
while True:
    signal.pause()
"""
"""The app: writes its pid file; on SIGUSR1, appends the password file's content to `out`."""


class Proc:
    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                orphan_proof(argv),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def start_sidecar(
    coord: ProcessCluster, ns: str, secrets_dir: Path, log_path: Path, *notify: str
) -> tuple[Proc, int]:
    """`concord-sidecar` with the operator identity, asked for "db" through the environment
    (as an injection webhook would set it); returns it and its HTTP port."""
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CONCORD_ENDPOINTS": ",".join(coord.endpoints()),
        "CONCORD_TLS_DIR": str(client_tls_dir(coord)),
        "CONCORD_SECRETS": "db",
        "POD_NAMESPACE": ns,
    }
    argv = [sys.executable, "-m", "coordinator.sidecar", "--listen", f"127.0.0.1:{port}"]
    argv += ["--secrets-dir", str(secrets_dir)]
    for spec in notify:
        argv += ["--secrets-notify", spec]
    return Proc(argv, log_path, env), port


async def startupz(port: int) -> tuple[int, str]:
    try:
        return await http_get(port, "/startupz", 2.0)
    except OSError:
        return 0, ""


@pytest.fixture
def operator(
    tmp_path: Path, coord: ProcessCluster, control_plane: ControlPlane, kube_namespace: str
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        tmp_path,
        "op-1",
        coord.endpoints(),
        client_tls_dir(coord),
        control_plane.kubeconfig,
        kube_namespace,
        "--sealing-certificate-interval-seconds",
        "0.5",
    ).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator ---\n{op.log()[-6000:]}")


def test_a_sealed_secret_is_delivered_as_files_updated_atomically_and_notified(
    coord: ProcessCluster,
    kube: KubeObjects,
    operator: OperatorProcess,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    ns = kube.namespace
    secrets_dir = tmp_path / "run-secrets"
    pid_file, reloads = tmp_path / "app.pid", tmp_path / "app-reloads.txt"
    posts: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        posts.append(await request.json())
        return web.Response(text="ok")

    async def scenario() -> None:
        web_app = web.Application()
        web_app.router.add_post("/reload", hook)
        runner = web.AppRunner(web_app)
        await runner.setup()
        (hook_port,) = free_ports(1)
        await web.TCPSite(runner, "127.0.0.1", hook_port).start()
        app = Proc(
            [sys.executable, "-c", APP, str(pid_file), str(secrets_dir / "db" / "password"),
             str(reloads)],
            tmp_path / "app.log",
            dict(os.environ),
        )  # fmt: skip
        sidecar, sidecar_port = start_sidecar(
            coord,
            ns,
            secrets_dir,
            tmp_path / "sidecar.log",
            f"http:http://127.0.0.1:{hook_port}/reload",
            f"signal:{pid_file}:USR1",
        )

        try:
            await eventually(lambda: bool(published(control_plane, ns)), WAIT_S, "certificate")
            await eventually(pid_file.exists, WAIT_S, "the app's pid file")

            # The session is up, but the secret is not there yet: not started.
            async def waiting_for_db() -> bool:
                status, body = await startupz(sidecar_port)
                return status == 503 and "secrets not delivered yet: db" in body

            await eventually(waiting_for_db, WAIT_S, "/startupz 503 for db", sidecar.log)

            plain = secret_manifest(ns, "db", {"username": "admin", "password": "s3cret-one"})
            sealed = concordctl(coord, "seal", stdin=plain)
            applied_at = now()
            apply(control_plane, sealed)
            password = secrets_dir / "db" / "password"
            await eventually(password.exists, WAIT_S, "the first delivery", sidecar.log)
            print(f"\nkubectl apply (new) to files delivered: {(now() - applied_at) * 1000:.0f} ms")
            assert password.read_text() == "s3cret-one"
            assert (secrets_dir / "db" / "username").read_text() == "admin"
            assert os.readlink(password) == "..data/password"
            assert stat.S_IMODE(os.stat(password).st_mode) == 0o400

            async def started() -> bool:
                return (await startupz(sidecar_port))[0] == 200

            await eventually(started, WAIT_S, "/startupz 200", sidecar.log)

            # The coordinator holds the ciphertext only, under the namespace's prefix.
            async with coord.client() as cl:
                kv = await cl.get(sealed_record_key(ns, "db"))
            assert kv is not None and b"s3cret" not in kv.value
            record = SealedRecord.decode(kv.value)
            assert sorted(record.data) == ["password", "username"]

            # Updated: a new password and a new key, the username gone: one swap.
            update = secret_manifest(ns, "db", {"password": "s3cret-two", "token": "tok3n-two"})
            sealed = concordctl(coord, "seal", stdin=update)
            applied_at = now()
            apply(control_plane, sealed)
            await eventually(
                lambda: password.read_text() == "s3cret-two", WAIT_S, "the update", sidecar.log
            )
            latency_ms = (now() - applied_at) * 1000
            await eventually(lambda: bool(posts), WAIT_S, "the HTTP notification", sidecar.log)
            http_ms = (now() - applied_at) * 1000
            await eventually(
                lambda: reloads.exists() and "s3cret-two" in reloads.read_text(),
                WAIT_S,
                "the app signalled (and reading the new file)",
                sidecar.log,
            )
            signal_ms = (now() - applied_at) * 1000
            print(
                f"kubectl apply (update) to file changed: {latency_ms:.0f} ms; "
                f"HTTP notification by {http_ms:.0f} ms; app signalled by {signal_ms:.0f} ms"
            )
            names = sorted(p for p in os.listdir(secrets_dir / "db") if not p.startswith(".."))
            assert names == ["password", "token"]
            (change,) = posts[0]["changed"]
            assert (change["name"], change["keys"]) == ("db", ["password", "token"])
            assert posts[0]["namespace"] == ns
            assert "s3cret" not in str(posts)
            assert reloads.read_text().splitlines() == ["s3cret-two"]  # one signal, one swap

            # Deleted: the finalizer removes the record; the files stay as delivered.
            control_plane.kubectl("delete", "csealed", "db", "-n", ns)

            async def record_gone() -> bool:
                async with coord.client() as cl:
                    return await cl.get(sealed_record_key(ns, "db")) is None

            await eventually(record_gone, WAIT_S, "the record deleted", operator.log)
            await eventually(
                lambda: "was deleted" in sidecar.log(), WAIT_S, "the sidecar saw it", sidecar.log
            )
            assert password.read_text() == "s3cret-two"

            log = sidecar.log() + operator.log()
            # Values no log line can hold by chance: namespaces here are t-<10 hex digits>,
            # and a token value once read "t-2" (one namespace in 16 starts with it).
            for value in ("s3cret-one", "s3cret-two", "tok3n-two"):
                assert value not in log
        finally:
            sidecar.stop()
            app.stop()
            await runner.cleanup()
            print(f"--- sidecar ---\n{sidecar.log()[-6000:]}")

    asyncio.run(scenario())


def test_files_follow_a_change_made_while_the_coordinator_had_no_quorum(
    coord: ProcessCluster,
    kube: KubeObjects,
    operator: OperatorProcess,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """Two of three members killed: the operator cannot publish the change (the SealedSecret
    says CoordinatorUnavailable), the sidecar is not ready but stays started and keeps the
    files; the members back, the change reaches the files without anyone's help."""
    ns = kube.namespace
    secrets_dir = tmp_path / "run-secrets"
    password = secrets_dir / "db" / "password"

    async def scenario() -> None:
        sidecar, port = start_sidecar(coord, ns, secrets_dir, tmp_path / "sidecar.log")
        try:
            await eventually(lambda: bool(published(control_plane, ns)), WAIT_S, "certificate")
            first = secret_manifest(ns, "db", {"password": "quorum-one"})
            apply(control_plane, concordctl(coord, "seal", stdin=first))
            await eventually(password.exists, WAIT_S, "the first delivery", sidecar.log)
            second = concordctl(
                coord, "seal", stdin=secret_manifest(ns, "db", {"password": "quorum-two"})
            )

            coord.kill(2)
            coord.kill(3)
            apply(control_plane, second)
            await eventually(
                reason_is(kube, "db", "CoordinatorUnavailable"),
                WAIT_S,
                "the SealedSecret says the coordinator is unavailable",
                operator.log,
            )

            async def not_ready() -> bool:
                try:
                    return (await http_get(port, "/readyz", 2.0))[0] == 503
                except OSError:
                    return False

            await eventually(not_ready, WAIT_S, "the sidecar not ready", sidecar.log)
            assert (await startupz(port))[0] == 200  # started stays started
            assert password.read_text() == "quorum-one"

            back_at = now()
            coord.start(2)
            coord.start(3)
            await eventually(
                lambda: password.read_text() == "quorum-two",
                60,
                "the change delivered after the quorum came back",
                lambda: sidecar.log() + operator.log(),
            )
            print(f"\nmembers restarted to the file changed: {(now() - back_at) * 1000:.0f} ms")
            assert "quorum-" not in sidecar.log() + operator.log()
        finally:
            sidecar.stop()
            print(f"--- sidecar ---\n{sidecar.log()[-6000:]}")

    asyncio.run(scenario())


def test_create_secret_false_delivers_files_with_no_secret_and_removes_an_old_one(
    coord: ProcessCluster,
    kube: KubeObjects,
    operator: OperatorProcess,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """spec.createSecret: false: the files arrive, no Secret is ever made (the operator only
    validates, it never fetches the plaintext); turned on, the Secret appears; turned off
    again, the Secret the operator made is deleted, the files stay."""
    ns = kube.namespace
    secrets_dir = tmp_path / "run-secrets"
    password = secrets_dir / "db" / "password"
    core = kubernetes.client.CoreV1Api(kube.api_client)

    async def scenario() -> None:
        sidecar, _ = start_sidecar(coord, ns, secrets_dir, tmp_path / "sidecar.log")
        try:
            await eventually(lambda: bool(published(control_plane, ns)), WAIT_S, "certificate")
            sealed = yaml.safe_load(
                concordctl(
                    coord, "seal", stdin=secret_manifest(ns, "db", {"password": "only-files"})
                )
            )
            sealed["spec"]["createSecret"] = False
            apply(control_plane, yaml.safe_dump(sealed))
            await eventually(password.exists, WAIT_S, "the files", sidecar.log)
            assert password.read_text() == "only-files"
            await eventually(reason_is(kube, "db", "Published"), WAIT_S, "Published", operator.log)
            assert kube.status("sealedsecrets", "db")["keyIds"]
            assert read_secret(core, ns, "db") is None

            kube.patch("sealedsecrets", "db", {"spec": {"createSecret": True}})
            await eventually(
                lambda: read_secret(core, ns, "db") is not None, WAIT_S, "Secret", operator.log
            )
            await eventually(reason_is(kube, "db", "Unsealed"), WAIT_S, "Unsealed", operator.log)

            kube.patch("sealedsecrets", "db", {"spec": {"createSecret": False}})
            await eventually(
                lambda: read_secret(core, ns, "db") is None, WAIT_S, "Secret gone", operator.log
            )
            await eventually(reason_is(kube, "db", "Published"), WAIT_S, "Published", operator.log)
            assert password.read_text() == "only-files"
            assert "only-files" not in sidecar.log() + operator.log()
        finally:
            sidecar.stop()
            print(f"--- sidecar ---\n{sidecar.log()[-6000:]}")

    asyncio.run(scenario())
