"""A real Kubernetes control plane for the Kubernetes tests and the `make run` demo (test
and demo tooling, as the node agent): etcd, kube-apiserver, kube-controller-manager and
kube-scheduler as processes on 127.0.0.1, or an existing cluster.

`start_control_plane(bin_dir, root)` does what kubeadm does, minus the kubelet:

- a throw-away PKI made with `cryptography` (no openssl): a CA, the apiserver's serving
  certificate (127.0.0.1, localhost and the in-cluster `kubernetes.default.svc` names), client
  certificates for an admin in `system:masters` and for the controller-manager and scheduler
  under the user names RBAC's bootstrap policy binds (`system:kube-controller-manager`,
  `system:kube-scheduler`), and the service-account signing key pair;
- etcd on two free loopback ports, then kube-apiserver with RBAC (`Node,RBAC`, as kubeadm);
- the CRDs (`crds/` by default) applied and Established *before* the controller-manager
  starts, because its garbage collector learns about new kinds only on a 30 s rescan: owned
  objects of a kind created later linger 20-60 s after their owner is gone;
- kube-controller-manager with every default controller (garbage collector and StatefulSet
  controller included), each under its own service account as kubeadm runs it
  (`--use-service-account-credentials`), and kube-scheduler;
- then it waits until the controllers really work, not just until /healthz answers: the
  controller-manager's /healthz is up in ~1 s but its controllers act ~5 s later. The proof
  is the `default` ServiceAccount in namespace `default` (made by the serviceaccount
  controller under its own, token-requested identity) and the scheduler's /readyz.

Every process is started orphan-proof (the kernel SIGKILLs it if the test process dies, see
`coordinator.testing.procs`) in a process group of its own, and `ControlPlane.close` stops
them by PID (SIGTERM, then SIGKILL); an `atexit` hook does the same if nobody called close.
Nothing here is pytest: `python -m coordinator.testing.controlplane` starts one, prints its figures
(time to ready, RSS of each process) and stops it.

`existing_cluster(kubeconfig)` wraps a cluster someone else runs (kind, a real one) in the
same `ControlPlane` face, for CONCORD_KUBE_EXISTING=1 runs; it stops nothing.

The PKI is in `controlplane_pki.py`, one component's process in `controlplane_procs.py`.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from coordinator import pki
from coordinator.testing.ports import free_ports

from .controlplane_pki import _Pki, _write, kubeconfig_yaml
from .controlplane_procs import Component, _http_status

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
BUILD_SCRIPT = REPO / "scripts" / "build_kube_tools.sh"

KUBE_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "helm",
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
"""The `iss` of the ServiceAccount tokens our API server mints (and accepts)."""

SERVICE_CIDR = "10.0.0.0/24"
"""The apiserver must allocate ClusterIPs from some range; nothing routes it (no kube-proxy,
no CNI here), so it only names Services. Its first address is the `kubernetes` Service's."""

READY_TIMEOUT_S = 120.0
"""Whole control plane; ~10 s on an idle 2-core machine, several times that when it is busy."""

POLL_S = 0.1

KUBECTL_TIMEOUT_S = 120.0
_DURATION = re.compile(r"^--timeout=(\d+)(s|m)$")


def _wait_timeout_s(args: tuple[str, ...]) -> float:
    """The `--timeout=` a kubectl command was given in seconds (0 without one)."""
    for arg in args:
        found = _DURATION.match(arg)
        if found:
            return float(found.group(1)) * (60 if found.group(2) == "m" else 1)
    return 0.0


class ControlPlaneError(Exception):
    """A component did not start, exited, or did not become ready in time (the message
    carries the tail of its log)."""


# --- locating the binaries ----------------------------------------------------------------------


def locate_binaries() -> tuple[Path | None, str]:
    """(bin dir, "") when every pinned binary is present, else (None, why not and how to get
    them). CONCORD_KUBE_BIN wins; otherwise `scripts/build_kube_tools.sh --check` says where
    the pinned build lives (it never builds: that is `make kube-tools`, ~10 min cold)."""
    override = os.environ.get("CONCORD_KUBE_BIN")
    if override:
        bin_dir = Path(override)
        missing = [b for b in KUBE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
        if missing:
            return None, (
                f"CONCORD_KUBE_BIN={override} lacks {', '.join(missing)} (unset it to use "
                "the pinned build from `make kube-tools`)"
            )
        return bin_dir, ""
    check = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    lines = check.stdout.strip().splitlines()
    if check.returncode == 0 and lines:
        return Path(lines[-1]), ""
    why = check.stderr.strip().splitlines()[-1:] or [f"exit status {check.returncode}"]
    how = (
        "run `make kube-tools` (builds Kubernetes v1.34.12, etcd and helm from the Go module "
        "proxy; needs Go >= 1.24, ~10 min cold) or set CONCORD_KUBE_BIN"
    )
    return None, f"{why[0]}; {how}"


@dataclass
class ControlPlane:
    """A Kubernetes API to test against: ours (started here) or an existing cluster.

    `kubeconfig` gives cluster-admin (a `system:masters` client certificate for ours);
    `kubectl(...)` runs the pinned kubectl against it. `components` is empty for an existing
    cluster, which `close` leaves alone."""

    kubeconfig: Path
    server: str
    kubectl_path: Path
    helm_path: Path | None
    bin_dir: Path | None
    root: Path
    components: list[Component] = field(default_factory=list, repr=False)
    ready_s: float | None = None
    """Seconds from the first process start until the controllers worked."""
    existing: bool = False

    def env(self) -> dict[str, str]:
        """This environment with KUBECONFIG pointing here (for kopf, helm, subprocesses)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout_s: float = KUBECTL_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl --kubeconfig=... *args`; raises ControlPlaneError (with stderr) on a
        non-zero exit when `check`, else returns it for the caller to read stderr. A
        `--timeout=Ns` among the args (kubectl wait) gets N + 30 s before the process is
        killed, so kubectl's own message says what it waited for."""
        timeout_s = max(timeout_s, _wait_timeout_s(args) + 30.0)
        done = subprocess.run(
            [
                str(self.kubectl_path),
                f"--kubeconfig={self.kubeconfig}",
                # Discovery cache under our root, not ~/.kube/cache (one dir per port, forever).
                f"--cache-dir={self.root / 'kubectl-cache'}",
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )
        if check and done.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        """`kubectl ... -o json`, parsed (JSON: Any inside, as the API gives it)."""
        out = self.kubectl(*args, "-o", "json").stdout
        parsed = json.loads(out)
        if not isinstance(parsed, dict):
            raise ControlPlaneError(f"kubectl {' '.join(args)} gave no JSON object")
        return parsed

    def service_account_signing_key(self) -> Path | None:
        """The key our API server signs ServiceAccount tokens with (PEM, EC P-256; issuer
        `SERVICE_ACCOUNT_ISSUER`), for tests that mint tokens it must judge (an expired one);
        None for an existing cluster, whose key is not ours to read."""
        if self.existing:
            return None
        path = self.root / "pki" / "sa.key"
        return path if path.is_file() else None

    def as_user(self, kubeconfig: Path) -> ControlPlane:
        """The same cluster through another kubeconfig (e.g. service_account_kubeconfig's);
        the view owns no process, so closing it stops nothing."""
        return dataclasses.replace(self, kubeconfig=kubeconfig, components=[])

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The pinned helm against this cluster."""
        if self.helm_path is None:
            raise ControlPlaneError("no helm binary (set CONCORD_KUBE_BIN or make kube-tools)")
        done = subprocess.run(
            [str(self.helm_path), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=KUBECTL_TIMEOUT_S,
            env=self.env(),
        )
        if check and done.returncode != 0:
            raise ControlPlaneError(
                f"helm {' '.join(args)} exited {done.returncode}: {done.stderr}"
            )
        return done

    def apply_crds(self, crd_dir: Path = CRD_DIR) -> None:
        """Apply every CRD in `crd_dir` (server-side) and wait until each is Established."""
        if not crd_dir.is_dir() or not any(crd_dir.glob("*.yaml")):
            return
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crd_dir))
        # kubectl cached discovery before the new kinds existed; a stale cache would not know
        # their short names or the `concord` category.
        shutil.rmtree(self.root / "kubectl-cache", ignore_errors=True)

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, duration: str = "1h"
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/name` with a bound
        token from the TokenRequest API (as a pod's projected token does), for testing what
        RBAC lets a component do. Works on an existing cluster too."""
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        view = self.kubectl_json("config", "view", "--raw", "--minify")
        clusters = view["clusters"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": clusters[0]["cluster"]}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "sa",
                    "context": {"cluster": "cluster", "user": name, "namespace": namespace},
                }
            ],
            "current-context": "sa",
        }
        path = self.root / f"sa-{namespace}-{name}.kubeconfig"
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)
        return path

    def rss_mib(self) -> dict[str, float | None]:
        """RSS of each component now (empty for an existing cluster)."""
        return {c.name: c.rss_mib() for c in self.components}

    def log_tails(self, chars: int = 3000) -> str:
        return "".join(
            f"\n--- {c.name} (pid {c.pid}) {c.log_path}:\n{c.log_tail(chars)}"
            for c in self.components
        )

    def check_running(self) -> None:
        """ControlPlaneError if a component has exited."""
        for c in self.components:
            if c.popen is not None and not c.running():
                raise ControlPlaneError(
                    f"{c.name} exited with {c.popen.returncode}:\n{c.log_tail()}"
                )

    def close(self) -> None:
        """Stop every component we started, in reverse order (etcd last). Idempotent."""
        for c in reversed(self.components):
            c.stop()
        with contextlib.suppress(ValueError):
            atexit.unregister(self.close)


# --- readiness ----------------------------------------------------------------------------------


def _wait(
    cond: Callable[[], bool],
    what: str,
    deadline: float,
    plane: ControlPlane,
    component: Component | None = None,
) -> None:
    while True:
        plane.check_running()
        if cond():
            if component is not None:
                component.ready_after_s = time.perf_counter() - component.started_at
            return
        if time.perf_counter() > deadline:
            raise ControlPlaneError(f"timed out waiting for {what}:{plane.log_tails()}")
        time.sleep(POLL_S)


# --- starting ours ------------------------------------------------------------------------------


def start_control_plane(
    bin_dir: Path,
    root: Path,
    *,
    crd_dir: Path | None = CRD_DIR,
    timeout_s: float = READY_TIMEOUT_S,
) -> ControlPlane:
    """Start etcd, kube-apiserver, (the CRDs from `crd_dir`), kube-controller-manager and
    kube-scheduler under `root` (certificates, data, logs, kubeconfigs) and return once the
    controllers work. On any failure everything started is stopped before the error rises."""
    root.mkdir(parents=True, exist_ok=True)
    pki_dir = root / "pki"
    pki_dir.mkdir(exist_ok=True)
    (root / "etcd").mkdir(exist_ok=True, mode=0o700)

    certs = _Pki()
    ca = _write(pki_dir / "ca.crt", certs.ca_pem, 0o644)
    ca_key = _write(pki_dir / "ca.key", certs.ca_key_pem)
    serving = certs.issue(
        "kube-apiserver",
        server_names=[
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            str(next(ipaddress.ip_network(SERVICE_CIDR).hosts())),
        ],
    )
    _write(pki_dir / "apiserver.crt", serving.cert_pem, 0o644)
    _write(pki_dir / "apiserver.key", serving.key_pem)
    admin = certs.issue("concord-test-admin", organization="system:masters")
    _write(pki_dir / "admin.crt", admin.cert_pem, 0o644)
    _write(pki_dir / "admin.key", admin.key_pem)
    sa_key = pki.new_key()
    _write(pki_dir / "sa.key", pki.key_pem(sa_key))
    _write(
        pki_dir / "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        0o644,
    )

    etcd_client, etcd_peer, api_port, cm_port, sched_port = free_ports(5)
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = root / "admin.kubeconfig"
    kubeconfig.write_text(kubeconfig_yaml(server, certs.ca_pem, "concord-test-admin", admin))
    kubeconfig.chmod(0o600)
    cm_kubeconfig = root / "controller-manager.kubeconfig"
    cm_kubeconfig.write_text(
        kubeconfig_yaml(
            server,
            certs.ca_pem,
            "system:kube-controller-manager",
            certs.issue("system:kube-controller-manager"),
        )
    )
    sched_kubeconfig = root / "scheduler.kubeconfig"
    sched_kubeconfig.write_text(
        kubeconfig_yaml(
            server, certs.ca_pem, "system:kube-scheduler", certs.issue("system:kube-scheduler")
        )
    )

    def component(name: str, *args: str) -> Component:
        return Component(name, [str(bin_dir / name), *args], root / f"{name}.log")

    etcd_url = f"http://127.0.0.1:{etcd_client}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"
    etcd = component(
        "etcd",
        "--name=concord-test",
        f"--data-dir={root / 'etcd'}",
        f"--listen-client-urls={etcd_url}",
        f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=concord-test={peer_url}",
        # A throw-away store on a disk shared with five other test runs: an fsync per write
        # would make the apiserver (not what is tested) the slowest thing here.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    )
    apiserver = component(
        "kube-apiserver",
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        f"--secure-port={api_port}",
        "--advertise-address=127.0.0.1",
        # With a loopback advertise address the default endpoint reconciler loops on an
        # error; nothing here needs the `kubernetes` Service's endpoints.
        "--endpoint-reconciler-type=none",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
        f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
        f"--client-ca-file={ca}",
        "--authorization-mode=Node,RBAC",
        # MutatingAdmissionWebhook and ValidatingAdmissionWebhook are on by default.
        "--enable-admission-plugins=NodeRestriction",
        # Webhooks named by a service reference (the chart's sidecar injector) are called at
        # a ready endpoint of the Service, read from its EndpointSlices, instead of at its
        # ClusterIP, which nothing routes here (no kube-proxy). EndpointSlice validation
        # refuses loopback IPs, so the node agent publishes its pods' loopback addresses
        # in slices of type FQDN (an IP is a valid FQDN, and the resolver uses the address
        # as it is): see coordinator/testing/nodeagent/_slices.py.
        "--enable-aggregator-routing=true",
        "--allow-privileged=true",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki_dir / 'sa.pub'}",
        f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
        "--profiling=false",
        "--v=1",
    )
    controller_manager = component(
        "kube-controller-manager",
        f"--kubeconfig={cm_kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={cm_port}",
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki_dir / 'sa.key'}",
        f"--root-ca-file={ca}",
        f"--cluster-signing-cert-file={ca}",
        f"--cluster-signing-key-file={ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # One instance: no lease to win first (it would add ~2 s to every start).
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    )
    scheduler = component(
        "kube-scheduler",
        f"--kubeconfig={sched_kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={sched_port}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    )

    bin_helm = bin_dir / "helm"
    plane = ControlPlane(
        kubeconfig=kubeconfig,
        server=server,
        kubectl_path=bin_dir / "kubectl",
        helm_path=bin_helm if bin_helm.exists() else None,
        bin_dir=bin_dir,
        root=root,
    )
    atexit.register(plane.close)

    # The apiserver's client certificate check, for /readyz as the admin.
    admin_ctx = ssl.create_default_context(cafile=str(ca))
    admin_ctx.load_cert_chain(pki_dir / "admin.crt", pki_dir / "admin.key")
    # controller-manager and scheduler serve self-signed certificates of their own; their
    # /healthz and /readyz are open to anyone (--authorization-always-allow-paths).
    anon_ctx = ssl.create_default_context()
    anon_ctx.check_hostname = False
    anon_ctx.verify_mode = ssl.CERT_NONE

    def default_sa_exists() -> bool:
        done = plane.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
        return done.returncode == 0

    try:
        started = time.perf_counter()
        deadline = started + timeout_s
        plane.components.append(etcd)
        etcd.start()
        _wait(
            lambda: _http_status(f"{etcd_url}/health", anon_ctx) == 200,
            "etcd /health",
            deadline,
            plane,
            etcd,
        )
        plane.components.append(apiserver)
        apiserver.start()
        _wait(
            lambda: _http_status(f"{server}/readyz", admin_ctx) == 200,
            "kube-apiserver /readyz",
            deadline,
            plane,
            apiserver,
        )
        if crd_dir is not None:
            plane.apply_crds(crd_dir)
        plane.components.append(controller_manager)
        controller_manager.start()
        plane.components.append(scheduler)
        scheduler.start()
        _wait(
            lambda: _http_status(f"https://127.0.0.1:{sched_port}/readyz", anon_ctx) == 200,
            "kube-scheduler /readyz",
            deadline,
            plane,
            scheduler,
        )
        _wait(
            default_sa_exists,
            "the serviceaccount controller (ServiceAccount default/default)",
            deadline,
            plane,
            controller_manager,
        )
        plane.ready_s = time.perf_counter() - started
    except BaseException:
        plane.close()
        raise
    return plane


def existing_cluster(kubeconfig: Path, bin_dir: Path | None, root: Path) -> ControlPlane:
    """An existing cluster behind `kubeconfig` (e.g. kind), driven with the pinned kubectl
    when there is one, else the `kubectl` on PATH."""
    kubectl = bin_dir / "kubectl" if bin_dir is not None else None
    if kubectl is None or not kubectl.exists():
        found = shutil.which("kubectl")
        if found is None:
            raise ControlPlaneError("no kubectl: make kube-tools, or put one on PATH")
        kubectl = Path(found)
    helm = bin_dir / "helm" if bin_dir is not None else None
    if helm is None or not helm.exists():
        found_helm = shutil.which("helm")
        helm = Path(found_helm) if found_helm else None
    plane = ControlPlane(
        kubeconfig=kubeconfig,
        server="",
        kubectl_path=kubectl,
        helm_path=helm,
        bin_dir=bin_dir,
        root=root,
        existing=True,
    )
    plane.server = plane.kubectl(
        "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
    ).stdout.strip()
    plane.kubectl("get", "--raw", "/readyz")
    return plane


@contextlib.contextmanager
def control_plane(crd_dir: Path | None = CRD_DIR) -> Iterator[ControlPlane]:
    """Our own control plane in a temporary directory, for scripts (pytest uses the fixture)."""
    bin_dir, why = locate_binaries()
    if bin_dir is None:
        raise ControlPlaneError(why)
    with tempfile.TemporaryDirectory(prefix="concord-kube-") as tmp:
        plane = start_control_plane(bin_dir, Path(tmp), crd_dir=crd_dir)
        try:
            yield plane
        finally:
            plane.close()


def main() -> int:
    """Start a control plane, print how long it took and each process' RSS, stop it."""
    with control_plane() as plane:
        print(f"ready in {plane.ready_s:.1f} s at {plane.server}")
        for c in plane.components:
            print(f"  {c.name:<24} pid {c.pid:<8} ready after {c.ready_after_s or 0:5.1f} s")
        # RSS settles once the informers have listed everything: read it a bit later too.
        for when in (0, 10):
            time.sleep(when)
            rss = ", ".join(f"{k} {v:.0f} MiB" for k, v in plane.rss_mib().items() if v)
            print(f"RSS at ready+{when} s: {rss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
