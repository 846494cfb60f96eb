"""The node agent: three Nodes, their heartbeats, their Pods as processes, volumes, names.

`NodeAgent` stands in for the kubelets of kind-config.yaml's three workers, plus the two
cluster add-ons a kubelet relies on, in their simplest honest form:

- Nodes: registered with capacity and a Ready condition; every `heartbeat_s` their Lease in
  kube-node-lease is renewed and their Ready condition re-stamped, so the node lifecycle
  controller never taints them unreachable while the agent runs.
- Pods: one sync loop lists the Pods (and claims and Services) every `poll_s`; each Pod bound
  to one of our nodes gets a `PodRunner` thread (`_pod.py`) and an address of its own,
  in a loopback /24 chosen per session (`POD_NETWORK`; the whole of 127.0.0.0/8 is local on
  Linux: nothing to configure, nothing leaves the host).
- Names (the cluster DNS add-on): one hosts file, rewritten in place (it is bind-mounted
  into every pod's mount namespace, so its inode must stay) whenever pods come and go:
  `HOST.SUBDOMAIN.NS.svc[.cluster.local]` for pods with a hostname and subdomain (a
  StatefulSet's pods under their headless Service), and `SVC.NS.svc[.cluster.local]` for
  each Service, resolving to the pod addresses it selects (ready ones, or all of them with
  publishNotReadyAddresses). A Service name never resolves to its ClusterIP: nothing routes
  the service CIDR here, so the names stand in for kube-proxy too. A pod sees a copy for
  its namespace that adds the short names (`SVC`, `SVC.NS`, `HOST.SUBDOMAIN`) its DNS search
  path would resolve (hosts files know no search path).
- Endpoints (the EndpointSlice controller's part, for the API server only): an FQDN-typed
  EndpointSlice per Service with the selected pods' addresses and readiness, so that the
  API server (`--enable-aggregator-routing`) reaches a webhook through its Service
  (`_slices.py` says why FQDN: slices of type IPv4 refuse loopback addresses).
- Volumes (a provisioner): a PersistentVolumeClaim with no storage class (or the agent's)
  gets a PersistentVolume of its own, a `hostPath` directory under the state dir, pre-bound
  to the claim; the claim's directory outlives its pods, as a PVC does, and is never
  deleted by the agent (Retain).

Everything runs on loopback. Pods get KUBERNETES_SERVICE_HOST/PORT of the API server's real
address. `stop()` ends every container by PID (SIGTERM, SIGKILL after 5 s) and removes the
agent's Node objects.

This is test and demo tooling: nothing in `coordinator` or `concord_operator` imports it
(an import-linter contract), and the chart does not depend on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from coordinator.testing.procs import orphan_proof

from ._container import AgentContext, namespace_wrapper
from ._kube import Kube, KubeError, Obj
from ._pod import IMAGE_MAP, PodRunner
from ._slices import Endpoint, SliceMirror

log = logging.getLogger("concord.nodeagent")

DEFAULT_NODES = ("concord-worker", "concord-worker2", "concord-worker3")
"""As kind names the workers of kind-config.yaml (cluster `concord`)."""

POD_NETWORK_ENV = "CONCORD_POD_NETWORK"


def _pod_network() -> ipaddress.IPv4Network:
    """A /24 of loopback for this session's pods, named by $CONCORD_POD_NETWORK or chosen
    at random (and then exported, so the processes this one starts agree on it). Random
    because two sessions on one machine (`make run RUN_ARGS=--keep` left up while `make test`
    runs, or two suites at once) would otherwise hand out the same 127.0.1.N addresses and
    meet each other's pods on the same ports."""
    chosen = os.environ.get(POD_NETWORK_ENV, "")
    if not chosen:
        rng = random.SystemRandom()
        chosen = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.0/24"
        os.environ[POD_NETWORK_ENV] = chosen
    network = ipaddress.ip_network(chosen)
    if (
        not isinstance(network, ipaddress.IPv4Network)
        or not network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
        or network.subnet_of(ipaddress.IPv4Network("127.0.0.0/24"))
        or network.num_addresses < 16
    ):
        raise ValueError(
            f"${POD_NETWORK_ENV}={chosen!r}: give a loopback network outside 127.0.0.0/24 "
            "with room for pods, e.g. 127.0.1.0/24"
        )
    return network


POD_NETWORK = _pod_network()
"""Pod addresses: a loopback /24 (e.g. 127.23.117.1 to .254), like everything else here."""

NODE_LABEL = "node.concord.dev/agent"
STORAGE_CLASS = "concord-nodeagent"
"""Claims of this class, or of none, are provisioned by the agent."""

KUBELET_VERSION = "v1.34.12"

_BASE_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_RESOLV = (
    "# Written by the Concord node agent: no DNS server; cluster names are in /etc/hosts.\n"
    "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
)


def _micro_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rewrite(path: Path, text: str) -> None:
    """`path` holds `text` afterwards; written in place, never by rename: pods see the file's
    inode through their bind mounts."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if path.read_text() != text:
        with path.open("r+") as f:
            f.write(text)
            f.truncate()


def default_env() -> dict[str, str]:
    """What pods inherit from the agent: a PATH whose first entry is the directory of this
    interpreter (the venv's console scripts: concord-coordinator, concord-operator, ...), and
    PYTHONPATH, so a pod runs the checkout the agent runs. Nothing else leaks in."""
    path = os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")]
    )
    env = {"PATH": path, "LANG": "C.UTF-8", "HOME": "/root"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


class NodeAgent:
    """Registers `nodes` and runs the Pods bound to them (see the module doc).

    `with NodeAgent(kubeconfig, state_dir) as agent:` or `start()` / `stop()`."""

    def __init__(
        self,
        kubeconfig: Path,
        state_dir: Path,
        *,
        nodes: Sequence[str] = DEFAULT_NODES,
        env: Mapping[str, str] | None = None,
        image_map: Mapping[str, Sequence[str]] = IMAGE_MAP,
        poll_s: float = 0.5,
        heartbeat_s: float = 10.0,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.kube = Kube(kubeconfig, self.state_dir / "credentials")
        self.nodes = tuple(nodes)
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.hosts_file = self.state_dir / "hosts"
        self.resolv_file = self.state_dir / "resolv.conf"
        self.hosts_file.write_text(_BASE_HOSTS)
        self.resolv_file.write_text(_RESOLV)
        self.ctx = AgentContext(
            kube=self.kube,
            state_dir=self.state_dir,
            hosts_file=self.hosts_file,
            resolv_file=self.resolv_file,
            base_env=dict(env if env is not None else default_env()),
            image_map=image_map,
        )
        self._runners: dict[str, PodRunner] = {}
        self._ips: dict[str, str] = {}  # pod uid -> address, until its runner has ended
        self._last_host = -1  # index in POD_NETWORK.hosts() of the last address handed out
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_heartbeat = 0.0
        self._node_transition = _rfc3339()
        self.sync_errors = 0
        self._slices = SliceMirror(self.kube)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes:
            self._register(node)
        self._heartbeat()
        self._thread = threading.Thread(target=self._loop, name="nodeagent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Every container ended by PID (SIGTERM, then SIGKILL), the Nodes deleted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            runners = list(self._runners.values())
        for r in runners:
            r.shutdown()
        for r in runners:
            r.join()
        with contextlib.suppress(KubeError, OSError):
            self._slices.close()
        for node in self.nodes:
            with contextlib.suppress(KubeError, OSError):
                self.kube.delete(f"/api/v1/nodes/{node}")

    def __enter__(self) -> NodeAgent:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- for tests and the demo -----------------------------------------------------------------

    def pod_ip(self, namespace: str, name: str) -> str | None:
        """The address of a running pod of ours, by name (None if we run no such pod)."""
        with self._lock:
            for r in self._runners.values():
                if (r.namespace, r.pod_name) == (namespace, name) and r.is_alive():
                    return r.ip
        return None

    def pids(self) -> dict[str, list[int]]:
        """`namespace/name` -> the PIDs of its running containers."""
        with self._lock:
            return {f"{r.namespace}/{r.pod_name}": r.pids() for r in self._runners.values()}

    def client_prefix(self, workdir: str | None = None) -> list[str]:
        """The argv prefix that runs what follows it where the cluster's names resolve, as
        they do inside a pod (same hosts file, no DNS server), in `workdir` (default this
        process' cwd; "." keeps the caller's): `run` and `spawn` use it, and a script can
        too while the agent runs."""
        return namespace_wrapper(
            [], self.hosts_file, self.resolv_file, "nodeagent-client", workdir or os.getcwd()
        )

    def run(
        self, argv: Sequence[str], *, timeout_s: float = 60.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` (a client, e.g. concordctl) where the cluster's names resolve, as they
        do inside a pod: same hosts file, no DNS server; output captured as text."""
        return subprocess.run(
            [*self.client_prefix(), *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
            env=dict(env) if env is not None else None,
        )

    def spawn(self, argv: Sequence[str], log: Path) -> subprocess.Popen[str]:
        """Start `argv` in the background where the cluster's names resolve (as `run`):
        stdout a pipe (text), stderr to `log`; orphan-proof. Stopping it is the caller's."""
        with log.open("ab") as err:
            return subprocess.Popen(
                orphan_proof([*self.client_prefix(), *argv]),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    # --- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            if time.perf_counter() >= self._next_heartbeat:
                try:
                    self._heartbeat()
                except (KubeError, OSError) as err:
                    log.warning("heartbeat: %s", err)
            try:
                self._sync()
            except (KubeError, OSError) as err:
                self.sync_errors += 1
                log.warning("sync: %s", err)
            self._stop.wait(self.poll_s)

    def _sync(self) -> None:
        self._provision(self.kube.get("/api/v1/persistentvolumeclaims")["items"])
        pods = self.kube.get("/api/v1/pods")["items"]
        ours = {p["metadata"]["uid"]: p for p in pods if p["spec"].get("nodeName") in self.nodes}
        with self._lock:
            for uid, pod in ours.items():
                runner = self._runners.get(uid)
                if runner is not None:
                    runner.update(pod)
                    continue
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue  # finished before this agent started: nothing to run
                ip = self._allocate(uid)
                if ip is None:
                    log.warning("no pod address left for %s", pod["metadata"]["name"])
                    continue
                namespace_hosts = self.ctx.hosts_for(pod["metadata"]["namespace"])
                if not namespace_hosts.exists():  # bind-mounted when the pod starts
                    _rewrite(namespace_hosts, self.hosts_file.read_text())
                runner = PodRunner(self.ctx, pod, ip, "127.0.0.1")
                self._runners[uid] = runner
                runner.start()
            for uid, runner in list(self._runners.items()):
                if uid not in ours:
                    runner.gone()
                if not runner.is_alive():
                    del self._runners[uid]
                    self._ips.pop(uid, None)
            runners = list(self._runners.values())
        services = self.kube.get("/api/v1/services")["items"]
        self._write_hosts(runners, services)
        self._slices.sync(
            services,
            [
                Endpoint(
                    namespace=r.namespace,
                    name=r.pod_name,
                    uid=r.pod["metadata"]["uid"],
                    ip=r.ip,
                    ready=r.ready,
                    labels=r.pod["metadata"].get("labels") or {},
                    containers=[
                        *r.pod["spec"].get("initContainers", []),
                        *r.pod["spec"]["containers"],
                    ],
                )
                for r in runners
                if r.is_alive() and not r.pod["metadata"].get("deletionTimestamp")
            ],
        )

    def _allocate(self, uid: str) -> str | None:
        """The next free address after the last one handed out, wrapping around: a pod's
        address is reused as late as possible, so a client still holding the old address of
        a recreated pod (gRPC re-resolves a name at most every 30 s) meets a closed port,
        not another pod answering at it (as many CNI IPAMs allocate)."""
        used = set(self._ips.values())
        hosts = list(POD_NETWORK.hosts())
        for step in range(1, len(hosts) + 1):
            candidate = str(hosts[(self._last_host + step) % len(hosts)])
            if candidate not in used:
                self._last_host = (self._last_host + step) % len(hosts)
                self._ips[uid] = candidate
                return candidate
        return None

    # --- names ----------------------------------------------------------------------------------

    def _write_hosts(self, runners: Sequence[PodRunner], services: Sequence[Obj]) -> None:
        """The cluster-wide hosts file (full names), and one per namespace that adds the
        short names a pod of that namespace would reach through cluster DNS's search path
        (`svc`, `svc.ns`, `host.subdomain`, `host.subdomain.ns`)."""
        entries: list[tuple[str, str, str]] = []  # (namespace, address, name under NS.svc)
        live = [
            r for r in runners if r.is_alive() and not r.pod["metadata"].get("deletionTimestamp")
        ]
        for r in sorted(live, key=lambda r: (r.namespace, r.pod_name)):
            spec = r.pod["spec"]
            if spec.get("hostname") and spec.get("subdomain"):
                entries.append((r.namespace, r.ip, f"{spec['hostname']}.{spec['subdomain']}"))
        for svc in sorted(
            services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])
        ):
            meta, spec = svc["metadata"], svc.get("spec", {})
            selector = spec.get("selector") or {}
            if not selector:
                continue
            for r in live:
                labels = r.pod["metadata"].get("labels") or {}
                if r.namespace != meta["namespace"]:
                    continue
                if any(labels.get(k) != v for k, v in selector.items()):
                    continue
                if r.ready or spec.get("publishNotReadyAddresses"):
                    entries.append((r.namespace, r.ip, meta["name"]))
        full = [f"{ip}\t{name}.{ns}.svc {name}.{ns}.svc.cluster.local" for ns, ip, name in entries]
        _rewrite(self.hosts_file, _BASE_HOSTS + "".join(line + "\n" for line in full))
        for ns in {r.namespace for r in runners}:
            short = [f"{ip}\t{name} {name}.{ns}" for n, ip, name in entries if n == ns]
            text = _BASE_HOSTS + "".join(line + "\n" for line in [*full, *short])
            _rewrite(self.ctx.hosts_for(ns), text)

    # --- volumes --------------------------------------------------------------------------------

    def _provision(self, claims: Sequence[Obj]) -> None:
        for pvc in claims:
            meta, spec = pvc["metadata"], pvc["spec"]
            if pvc.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
                continue
            if spec.get("storageClassName") not in (None, "", STORAGE_CLASS):
                continue
            ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
            pv_name = f"pvc-{uid}"
            path = self.state_dir / "volumes" / ns / f"{name}-{uid[:8]}"
            path.mkdir(parents=True, exist_ok=True)
            pv: Obj = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": pv_name,
                    "labels": {NODE_LABEL: "true"},
                    "annotations": {"pv.kubernetes.io/provisioned-by": "concord-nodeagent"},
                },
                "spec": {
                    "capacity": {
                        "storage": spec.get("resources", {})
                        .get("requests", {})
                        .get("storage", "1Gi")
                    },
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": spec.get("storageClassName") or "",
                    "volumeMode": spec.get("volumeMode", "Filesystem"),
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": ns,
                        "name": name,
                        "uid": uid,
                    },
                },
            }
            try:
                self.kube.create("/api/v1/persistentvolumes", pv)
            except KubeError as err:
                if err.status != 409:
                    raise
            # Naming the volume in the claim lets the PV controller bind on this update
            # instead of on its next periodic resync (15 s).
            with contextlib.suppress(KubeError):
                self.kube.patch(
                    f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}",
                    {"metadata": {"uid": uid}, "spec": {"volumeName": pv_name}},
                )
            log.info("provisioned %s for claim %s/%s at %s", pv_name, ns, name, path)

    # --- nodes ----------------------------------------------------------------------------------

    def _node_status(self, node: str) -> Obj:
        now = _rfc3339()
        resources = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"}
        return {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": node},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "the Concord node agent runs this node's pods as processes",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": self._node_transition,
                }
            ],
            "nodeInfo": {
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "concord-nodeagent://1",
                "kernelVersion": os.uname().release,
                "osImage": "concord node agent",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def _register(self, node: str) -> None:
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node,
                "labels": {
                    "kubernetes.io/hostname": node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    NODE_LABEL: "true",
                },
            },
            "status": self._node_status(node),
        }
        try:
            self.kube.create("/api/v1/nodes", body)
        except KubeError as err:
            if err.status != 409:
                raise

    def _heartbeat(self) -> None:
        self._next_heartbeat = time.perf_counter() + self.heartbeat_s
        for node in self.nodes:
            self.kube.patch(
                f"/api/v1/nodes/{node}/status",
                {"status": self._node_status(node)},
                strategic=True,
            )
            path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
            if self.kube.get_or_none(path) is None:
                self.kube.create(
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": node},
                        "spec": {
                            "holderIdentity": node,
                            "leaseDurationSeconds": 40,
                            "renewTime": _micro_time(),
                        },
                    },
                )
            else:
                self.kube.patch(path, {"spec": {"renewTime": _micro_time()}})
