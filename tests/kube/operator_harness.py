"""The operator as a real process against the real control plane and a real coordinator.

`OperatorProcess` runs `python -m concord_operator` (orphan-proof, its log in a file) with the
coordinator's endpoints and client TLS directory and the control plane's admin kubeconfig;
it reads the operator's own /metrics and /readyz. `KubeObjects` reads and writes the custom
resources through the Kubernetes API (the python client: a poll through kubectl would cost a
process per read) and counts the writes to one object with a watch on it, as the API server
reports them. Every wait is bounded and polls a condition; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes.watch

from coordinator.pki import OPERATOR_ROLE, issue_client_cert
from coordinator.testing.ports import free_ports
from coordinator.testing.process_cluster import ProcessCluster
from coordinator.testing.procs import http_get, metric, orphan_proof

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "concord.dev", "v1alpha1"
POLL_S = 0.02


def client_tls_dir(cluster: ProcessCluster) -> Path:
    """The operator's TLS directory as `concordctl cluster init` writes it (`operator/`:
    ca.pem, client.pem, client-key.pem): a client certificate with the operator's role, the
    one identity the coordinator unseals for."""
    d = cluster.root / "operator"
    if not (d / "client.pem").exists():
        d.mkdir(exist_ok=True)
        cert = issue_client_cert(cluster.ca, "concord-operator", roles=[OPERATOR_ROLE])
        (d / "ca.pem").write_bytes(cluster.ca.cert_pem)
        (d / "client.pem").write_bytes(cert.cert_pem)
        (d / "client-key.pem").write_bytes(cert.key_pem)
    return d


def plain_client_tls_dir(cluster: ProcessCluster) -> Path:
    """A client's TLS directory (`client/` of `concordctl cluster init`): any client of the
    cluster, not the operator (for `concordctl` itself)."""
    d = cluster.root / "client"
    d.mkdir(exist_ok=True)
    (d / "ca.pem").write_bytes(cluster.ca.cert_pem)
    (d / "client.pem").write_bytes(cluster.client_cert.cert_pem)
    (d / "client-key.pem").write_bytes(cluster.client_cert.key_pem)
    return d


class OperatorProcess:
    def __init__(  # noqa: PLR0917 (a command line's parts, each named)
        self,
        root: Path,
        name: str,
        endpoints: list[str],
        tls_dir: Path,
        kubeconfig: Path,
        namespace: str,
        *extra: str,
    ) -> None:
        self.name = name
        self.port = free_ports(1)[0]
        self.log_path = root / f"operator-{name}.log"
        self.argv = [
            sys.executable,
            "-m",
            "concord_operator",
            "--endpoints",
            ",".join(endpoints),
            "--tls-dir",
            str(tls_dir),
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            namespace,
            "--http-listen",
            f"127.0.0.1:{self.port}",
            "--identity",
            name,
            *extra,
        ]
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                orphan_proof(self.argv),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(30)

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    async def get(self, path: str) -> tuple[int, str]:
        return await http_get(self.port, path, 2.0)

    async def readyz(self) -> int:
        try:
            return (await self.get("/readyz"))[0]
        except OSError:
            return 0

    async def metric(self, name: str) -> float:
        try:
            _, text = await self.get("/metrics")
        except OSError:
            return 0.0
        return metric(text, name) or 0.0


class KubeObjects:
    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
        self.api_client = kubernetes.client.ApiClient(config)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.namespace = namespace

    def close(self) -> None:
        self.api_client.close()

    def create(self, plural: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        out: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, body
        )
        return out

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, name
            )
        except kubernetes.client.exceptions.ApiException as err:
            if err.status == 404:
                return None
            raise
        return out

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, body
        )

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def status(self, plural: str, name: str) -> dict[str, Any]:
        obj = self.get(plural, name)
        return dict((obj or {}).get("status") or {})

    @contextlib.contextmanager
    def count_writes(self, plural: str, name: str) -> Iterator[list[str]]:
        """Every resourceVersion the API server gives the object while the block runs, from
        a watch on it: each write (a status patch included) is one MODIFIED event."""
        seen: list[str] = []
        stop = threading.Event()
        first = self.get(plural, name)
        start_rv = str((first or {}).get("metadata", {}).get("resourceVersion", ""))

        def follow() -> None:
            w = kubernetes.watch.Watch()
            stream = w.stream(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
                field_selector=f"metadata.name={name}",
                resource_version=start_rv,
                timeout_seconds=120,
            )
            for event in stream:
                if event["type"] == "MODIFIED":
                    seen.append(event["object"]["metadata"]["resourceVersion"])
                if stop.is_set():
                    w.stop()
                    return

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            yield seen
        finally:
            stop.set()
            # A write of our own wakes the watch so that it sees `stop`; it is not counted.
            with contextlib.suppress(kubernetes.client.exceptions.ApiException):
                woke = self.custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self.namespace,
                    plural,
                    name,
                    {"metadata": {"labels": {"test-watch": "done"}}},
                )
                thread.join(10)
                with contextlib.suppress(ValueError):
                    seen.remove(woke["metadata"]["resourceVersion"])


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout_s: float,
    what: str,
    on_timeout: Callable[[], str] = lambda: "",
) -> float:
    """Poll `check` until it holds; returns the seconds it took. AssertionError (with
    `on_timeout()`, e.g. the operator's log) if it does not within `timeout_s`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}\n{on_timeout()[-6000:]}")
        await asyncio.sleep(POLL_S)


def now() -> float:
    return time.monotonic()
