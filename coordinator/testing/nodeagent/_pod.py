"""One Pod run as local processes: what a kubelet's pod worker does, without a container engine.

A `PodRunner` thread owns one Pod (by uid) from the moment it is bound to one of the agent's
nodes until its object is gone:

1. volumes become host directories: emptyDir and downwardAPI under the pod's own directory,
   Secret, ConfigMap and projected (service-account token, `kube-root-ca.crt`, namespace)
   sources materialized as files, a PersistentVolumeClaim as its bound volume's directory
   (`hostPath`, provisioned by the agent). A missing Secret or an unbound claim is retried,
   as the kubelet waits in ContainerCreating.
2. each container runs as `unshare --mount --uts` -> `bash` -> `exec` of its command in a
   private mount namespace where the volume directories are bind-mounted at their
   mountPaths (read-only where asked), the agent's hosts file over /etc/hosts (the cluster's
   DNS names: see `_agent.py`) and a resolv.conf naming only 127.0.0.1 (a name the hosts
   file lacks fails at once instead of leaving loopback), under the pod's hostname. Each
   `exec` keeps the PID, so the PID the runner holds is the program's own: SIGTERM reaches
   it directly, and its process group (a session of its own) is what SIGKILL ends.
3. init containers run one after the other to exit 0 (a native sidecar, restartPolicy
   Always, only to its startup: it keeps running beside the containers, restarted whatever
   the pod's restartPolicy, is stopped after them, and counts for Ready); then the
   containers start together;
   startup, liveness and readiness probes (httpGet, tcpSocket, exec) run against the
   process at the pod's own address; a process that exits, or fails its liveness or startup
   probe, is restarted as restartPolicy says, with a doubling back-off (1 s to 30 s here,
   10 s to 5 min in a kubelet: tests should not wait minutes for a crash loop).
4. status (phase, podIP, hostIP, startTime, the Initialized / ContainersReady / Ready
   conditions and containerStatuses) is patched whenever it changes.
5. when the object gets a deletionTimestamp: SIGTERM to every container, SIGKILL after the
   grace period the deletion carries, then the object is deleted with grace period 0 (the
   kubelet's final step, which lets a StatefulSet recreate the pod).

A container's program is its `command`, or the entrypoint its image maps to (`IMAGE_MAP`):
there are no images here, only the project's console scripts on PATH.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.testing.procs import orphan_proof

from ._kube import Kube, KubeError, Obj, pod_path

log = logging.getLogger("concord.nodeagent")

IMAGE_MAP: Mapping[str, tuple[str, ...]] = {
    "concord-coordinator": ("concord-coordinator",),
    "concord": ("concord-coordinator",),
    "concord-operator": ("concord-operator",),
    "concord-sidecar": ("concord-sidecar",),
    "concordctl": ("concordctl",),
}
"""The entrypoint of an image, by the last path component of its repository (registry, tag
and digest stripped): `ghcr.io/x/concord-coordinator:1.2` runs `concord-coordinator`. A
container that gives `command` runs that instead, whatever its image."""

# Deadlines (probe periods, back-off, grace periods) use time.perf_counter: monotonic, and
# time.monotonic itself is read in one module of the project only (runtime/clock.py).
TICK_S = 0.2
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_S = 60.0
"""A container that ran this long before exiting restarts without waiting again."""


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_entrypoint(image: str, image_map: Mapping[str, Sequence[str]]) -> list[str] | None:
    """The mapped entrypoint of `image`, or None when the image is not one of ours."""
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    last = last.split(":", 1)[0]
    entry = image_map.get(last)
    return list(entry) if entry is not None else None


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, an undefined one left as
    written, and `$$` escapes a dollar."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR.sub(one, value)


class NotYet(Exception):
    """A volume's source is not there yet (Secret missing, claim unbound): retry later."""


@dataclass
class Mount:
    source: Path
    target: str
    read_only: bool


@dataclass
class _Probe:
    spec: Obj
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0


@dataclass
class ContainerRun:
    """One container's process and what its status shows."""

    spec: Obj
    init: bool = False
    popen: subprocess.Popen[bytes] | None = None
    started_mono: float = 0.0
    started_at: str = ""
    restart_count: int = 0
    started: bool = False
    """The startup probe passed (or there is none) while this process runs."""
    ready: bool = False
    done: bool = False
    """Exited and will not run again (restartPolicy)."""
    last_exit: Obj | None = None
    terminated: Obj | None = None
    backoff_s: float = 0.0
    backoff_until: float = 0.0
    waiting_reason: str = "ContainerCreating"
    probes: dict[str, _Probe] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def sidecar(self) -> bool:
        """A native sidecar: an init container with restartPolicy Always (Kubernetes >= 1.29).
        It starts in its turn among the init containers, the next one starts once it has
        *started* (not exited), and it runs beside the containers, restarted whatever the
        pod's restartPolicy, until they are done."""
        return self.init and self.spec.get("restartPolicy") == "Always"

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class AgentContext:
    """What every pod runner shares with the agent."""

    kube: Kube
    state_dir: Path
    hosts_file: Path
    """Every pod's and Service's full name (`NAME.NS.svc[.cluster.local]`)."""
    resolv_file: Path
    base_env: Mapping[str, str]
    image_map: Mapping[str, Sequence[str]]

    def hosts_for(self, namespace: str) -> Path:
        """The hosts file pods of `namespace` see: the full names, and that namespace's
        short ones (what cluster DNS's search path gives a pod)."""
        return self.state_dir / "hosts.d" / namespace


def namespace_wrapper(
    mounts: Sequence[Mount],
    hosts_file: Path,
    resolv_file: Path,
    hostname: str,
    workdir: str,
) -> list[str]:
    """The argv prefix that runs what follows it in a private mount (and UTS) namespace with
    the pod's mounts, hosts file and hostname; the program itself is `exec`ed by bash.

    Every source is opened first and bound from /proc/self/fd: a volume mounted at /tmp
    would otherwise hide sources that live under /tmp (the state dir often does) from the
    mounts that follow it. `--no-canonicalize`, because mount(8) otherwise resolves the
    /proc/self/fd link to its path name, which by then names what the earlier mount put
    there."""
    ordered = sorted(mounts, key=lambda m: m.target.count("/"))  # parents before children
    binds = [
        *ordered,
        *_kept_visible(ordered),
        Mount(hosts_file, "/etc/hosts", read_only=False),
        Mount(resolv_file, "/etc/resolv.conf", read_only=False),
    ]
    fds = range(10, 10 + len(binds))
    lines = ["set -e"]
    lines += [f"exec {fd}< {shlex.quote(str(m.source))}" for fd, m in zip(fds, binds, strict=True)]
    for fd, m in zip(fds, binds, strict=True):
        target = shlex.quote(m.target)
        if m.source.is_dir():
            lines.append(f"mkdir -p {target}")
        else:
            parent = shlex.quote(os.path.dirname(m.target) or "/")
            lines.append(f"mkdir -p {parent}; [ -e {target} ] || touch {target}")
        lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{fd} {target}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    lines.append(" ".join(f"exec {fd}<&-;" for fd in fds))
    lines.append(f"hostname {shlex.quote(hostname[:63])}")
    lines.append(f"cd {shlex.quote(workdir)} 2>/dev/null || cd /")
    lines.append('exec "$@"')
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    bash = shutil.which("bash") or "/bin/bash"
    script = "\n".join(lines)
    return [unshare, "--mount", "--uts", "--propagation", "private", bash, "-c", script, "pod"]


HOST_PATHS = tuple(
    dict.fromkeys(
        str(Path(p).resolve()) for p in (Path(__file__).parents[3], sys.prefix, sys.base_prefix)
    )
)
"""What a pod's program is on the host, there being no image: the checkout (an editable
install imports from it) and the Python environment."""


def _kept_visible(mounts: Sequence[Mount]) -> list[Mount]:
    """Each host path a pod's program runs from that one of the pod's volumes would hide (an
    emptyDir at /tmp hides a checkout under /tmp), bound back over it, as an image's files
    would stay visible beside its volumes."""
    hidden = [
        path
        for path in HOST_PATHS
        if any(path == m.target or path.startswith(m.target.rstrip("/") + "/") for m in mounts)
    ]
    return [Mount(Path(path), path, read_only=True) for path in hidden]


class PodRunner(threading.Thread):
    """Runs one Pod (see the module doc). `update` hands it the newest object; `gone` says
    the object disappeared; the thread ends once its processes are gone."""

    def __init__(self, ctx: AgentContext, pod: Obj, ip: str, host_ip: str) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.ctx = ctx
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.ip = ip
        self.host_ip = host_ip
        self._pod = pod
        self._lock = threading.Lock()
        self._gone = threading.Event()
        self._shutdown = threading.Event()
        self.dir = ctx.state_dir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        spec = pod["spec"]
        self.inits = [ContainerRun(c, init=True) for c in spec.get("initContainers", [])]
        self.containers = [ContainerRun(c) for c in spec.get("containers", [])]
        self.init_index = 0
        self.start_time = now_rfc3339()
        self.mounts_by_volume: dict[str, Path] = {}
        self.volumes_ready = False
        self._conditions: dict[str, tuple[bool, str]] = {}
        self._last_status: Obj | None = None
        self.ready = False

    # --- what the agent reads and tells --------------------------------------------------------

    @property
    def pod(self) -> Obj:
        with self._lock:
            return self._pod

    def update(self, pod: Obj) -> None:
        with self._lock:
            self._pod = pod

    def gone(self) -> None:
        """The object no longer exists (deleted with grace 0 by someone else, or its
        namespace went): stop the processes without waiting for a grace period."""
        self._gone.set()

    def shutdown(self) -> None:
        """The agent stops: end the processes (SIGTERM, SIGKILL after a short grace)."""
        self._shutdown.set()

    def pids(self) -> list[int]:
        return [c.popen.pid for c in self.inits + self.containers if c.running() and c.popen]

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("%s/%s: pod runner failed", self.namespace, self.pod_name)
            self._kill_all(0.0)

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._patch_status()
        while True:
            pod = self.pod
            if self._shutdown.is_set():
                self._kill_all(5.0)
                return
            if self._gone.is_set():
                self._kill_all(2.0)
                return
            if pod["metadata"].get("deletionTimestamp"):
                grace = pod["metadata"].get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                self._kill_all(float(grace))
                self._finalize_delete()
                return
            if not self.volumes_ready:
                try:
                    self._prepare_volumes()
                    self.volumes_ready = True
                except NotYet as why:
                    for c in self.inits + self.containers:
                        c.waiting_reason = "ContainerCreating"
                    log.debug("%s/%s: %s", self.namespace, self.pod_name, why)
            if self.volumes_ready:
                self._step_containers()
            self._patch_status()
            self._shutdown.wait(TICK_S)

    def _finalize_delete(self) -> None:
        """Grace period 0 with the uid as a precondition: only this incarnation goes."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.ctx.kube.delete(pod_path(self.namespace, self.pod_name), body)
        except KubeError as err:
            if err.status not in (404, 409):
                log.warning("%s/%s: final delete: %s", self.namespace, self.pod_name, err)

    # --- volumes --------------------------------------------------------------------------------

    def _prepare_volumes(self) -> None:
        pod = self.pod
        for vol in pod["spec"].get("volumes", []):
            name = vol["name"]
            if name in self.mounts_by_volume:
                continue
            self.mounts_by_volume[name] = self._volume(pod, vol)

    def _volume(self, pod: Obj, vol: Obj) -> Path:
        kube = self.ctx.kube
        ns = self.namespace
        here: Path = self.dir / "volumes" / str(vol["name"])
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            pvc = kube.get_or_none(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
            if pvc is None or pvc.get("status", {}).get("phase") != "Bound":
                raise NotYet(f"claim {claim} is not bound yet")
            pv = kube.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
            path = pv["spec"].get("hostPath", {}).get("path") or pv["spec"].get("local", {}).get(
                "path"
            )
            if not path:
                raise NotYet(f"volume {pv['metadata']['name']} has no hostPath or local path")
            Path(path).mkdir(parents=True, exist_ok=True)
            return Path(path)
        if "hostPath" in vol:
            return Path(str(vol["hostPath"]["path"]))
        here.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in vol:
            return here
        if "secret" in vol:
            src = vol["secret"]
            self._write_files(here, self._secret(src["secretName"], src), src)
            return here
        if "configMap" in vol:
            src = vol["configMap"]
            self._write_files(here, self._config_map(src["name"], src), src)
            return here
        if "downwardAPI" in vol:
            src = vol["downwardAPI"]
            items = {
                i["path"]: self._field(pod, i["fieldRef"]["fieldPath"]).encode()
                for i in src.get("items", [])
                if "fieldRef" in i
            }
            self._write_files(here, items, {"defaultMode": src.get("defaultMode")})
            return here
        if "projected" in vol:
            files: dict[str, bytes] = {}
            for s in vol["projected"].get("sources", []):
                if "secret" in s:
                    files.update(
                        self._select(self._secret(s["secret"]["name"], s["secret"]), s["secret"])
                    )
                elif "configMap" in s:
                    files.update(
                        self._select(
                            self._config_map(s["configMap"]["name"], s["configMap"]), s["configMap"]
                        )
                    )
                elif "downwardAPI" in s:
                    for i in s["downwardAPI"].get("items", []):
                        if "fieldRef" in i:
                            files[i["path"]] = self._field(pod, i["fieldRef"]["fieldPath"]).encode()
                elif "serviceAccountToken" in s:
                    files[s["serviceAccountToken"]["path"]] = self._token(
                        pod, s["serviceAccountToken"]
                    ).encode()
            self._write_files(here, files, {"defaultMode": vol["projected"].get("defaultMode")})
            return here
        log.warning(
            "%s/%s: volume %s of an unsupported kind: an empty directory",
            self.namespace,
            self.pod_name,
            vol["name"],
        )
        return here

    def _secret(self, name: str, src: Obj) -> dict[str, bytes]:
        obj = self.ctx.kube.get_or_none(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
        if obj is None:
            if src.get("optional"):
                return {}
            raise NotYet(f"secret {name} not found")
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def _config_map(self, name: str, src: Obj) -> dict[str, bytes]:
        obj = self.ctx.kube.get_or_none(f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
        if obj is None:
            if src.get("optional"):
                return {}
            raise NotYet(f"configmap {name} not found")
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    @staticmethod
    def _select(data: dict[str, bytes], src: Obj) -> dict[str, bytes]:
        items = src.get("items")
        if not items:
            return data
        return {i["path"]: data[i["key"]] for i in items if i["key"] in data}

    def _write_files(self, here: Path, data: dict[str, bytes], src: Obj) -> None:
        mode = src.get("defaultMode") or 0o644
        for rel, content in self._select(data, src).items():
            path = here / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)

    def _token(self, pod: Obj, src: Obj) -> str:
        """A bound service-account token, as the kubelet requests one for the pod."""
        sa = pod["spec"].get("serviceAccountName") or "default"
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": src.get("expirationSeconds", 3607),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        if src.get("audience"):
            body["spec"]["audiences"] = [src["audience"]]
        got = self.ctx.kube.create(
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token", body
        )
        return str(got["status"]["token"])

    def _field(self, pod: Obj, path: str) -> str:
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": self.ip,
            "status.podIPs": self.ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path in simple:
            return str(simple[path])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = (meta.get(path.split(".")[1]) or {}).items()
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items))
        raise NotYet(f"unsupported fieldRef {path}")

    # --- environment and command ----------------------------------------------------------------

    def _env(self, spec: Obj) -> dict[str, str]:
        pod = self.pod
        env: dict[str, str] = dict(self.ctx.base_env)
        env.update(
            {
                "HOSTNAME": pod["spec"].get("hostname") or self.pod_name,
                # The API server at its real loopback address, never the `kubernetes`
                # Service's ClusterIP: nothing routes the service CIDR here.
                "KUBERNETES_SERVICE_HOST": self.ctx.kube.host,
                "KUBERNETES_SERVICE_PORT": str(self.ctx.kube.port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.ctx.kube.port),
            }
        )
        for src in spec.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                ref = src["secretRef"]
                data = self._secret(ref["name"], ref)
            elif "configMapRef" in src:
                ref = src["configMapRef"]
                data = self._config_map(ref["name"], ref)
            else:
                continue
            env.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
        for var in spec.get("env", []):
            name = var["name"]
            if "value" in var:
                env[name] = expand(var["value"], env)
                continue
            vf = var.get("valueFrom", {})
            if "fieldRef" in vf:
                env[name] = self._field(pod, vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                data = self._secret(ref["name"], ref)
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode(errors="replace")
                elif not ref.get("optional"):
                    raise NotYet(f"secret {ref['name']} has no key {ref['key']}")
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                data = self._config_map(ref["name"], ref)
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode(errors="replace")
                elif not ref.get("optional"):
                    raise NotYet(f"configmap {ref['name']} has no key {ref['key']}")
            elif "resourceFieldRef" in vf:
                env[name] = "0"  # no cgroup limits here: nothing to report
        return env

    def _argv(self, spec: Obj, env: Mapping[str, str]) -> list[str]:
        command = spec.get("command")
        if not command:
            command = image_entrypoint(spec.get("image", ""), self.ctx.image_map)
            if command is None:
                raise NotYet(
                    f"image {spec.get('image')!r} maps to no local program and the "
                    "container gives no command"
                )
        return [expand(a, env) for a in [*command, *spec.get("args", [])]]

    def _mounts(self, spec: Obj) -> list[Mount]:
        mounts = []
        for vm in spec.get("volumeMounts", []):
            src = self.mounts_by_volume[vm["name"]]
            if vm.get("subPath"):
                src = src / vm["subPath"]
                if not src.exists():
                    src.mkdir(parents=True)
            mounts.append(Mount(src, vm["mountPath"], bool(vm.get("readOnly"))))
        return mounts

    def _wrapper(self, spec: Obj) -> list[str]:
        pod = self.pod
        hostname = pod["spec"].get("hostname") or self.pod_name
        return namespace_wrapper(
            self._mounts(spec),
            self.ctx.hosts_for(self.namespace),
            self.ctx.resolv_file,
            hostname,
            spec.get("workingDir") or str(self.dir),
        )

    # --- containers -----------------------------------------------------------------------------

    def _restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    def _start(self, c: ContainerRun) -> None:
        try:
            env = self._env(c.spec)
            argv = self._argv(c.spec, env)
        except NotYet as why:
            c.waiting_reason = "CreateContainerConfigError"
            log.info("%s/%s %s: %s", self.namespace, self.pod_name, c.name, why)
            c.backoff_until = time.perf_counter() + BACKOFF_MIN_S
            return
        log_path = self.dir / f"{c.name}.log"
        with log_path.open("ab") as out:
            out.write(f"--- {now_rfc3339()} nodeagent: {shlex.join(argv)}\n".encode())
            out.flush()
            c.popen = subprocess.Popen(
                orphan_proof([*self._wrapper(c.spec), *argv]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        c.started_mono = time.perf_counter()
        c.started_at = now_rfc3339()
        c.terminated = None
        c.started = "startupProbe" not in c.spec
        c.ready = False
        c.probes = {
            kind: _Probe(
                c.spec[kind], next_at=c.started_mono + c.spec[kind].get("initialDelaySeconds", 0)
            )
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
            if kind in c.spec
        }
        log.info(
            "%s/%s %s: started pid %d: %s",
            self.namespace,
            self.pod_name,
            c.name,
            c.popen.pid,
            shlex.join(argv)[:120],
        )

    def _on_exit(self, c: ContainerRun, code: int) -> None:
        """Record the exit, then restart (after back-off) or not, as restartPolicy says."""
        ran_s = time.perf_counter() - c.started_mono
        c.terminated = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started_at,
            "finishedAt": now_rfc3339(),
        }
        c.last_exit = c.terminated
        c.popen = None
        c.started = c.ready = False
        policy = self._restart_policy()
        again = policy == "Always" or (policy == "OnFailure" and code != 0)
        if c.init and code == 0:
            again = False
        if c.sidecar:
            again = not self._workload_done()
        if not again:
            c.done = True
            return
        c.backoff_s = (
            BACKOFF_MIN_S
            if ran_s >= BACKOFF_RESET_S or not c.backoff_s
            else min(BACKOFF_MAX_S, c.backoff_s * 2)
        )
        c.backoff_until = time.perf_counter() + c.backoff_s
        c.waiting_reason = "CrashLoopBackOff"
        c.restart_count += 1
        log.info(
            "%s/%s %s: exited %d after %.1f s; restart in %.0f s",
            self.namespace,
            self.pod_name,
            c.name,
            code,
            ran_s,
            c.backoff_s,
        )

    def _step_one(self, c: ContainerRun) -> None:
        if c.done:
            return
        if c.popen is None:
            if time.perf_counter() >= c.backoff_until:
                self._start(c)
            return
        code = c.popen.poll()
        if code is not None:
            self._on_exit(c, code)
            return
        self._run_probes(c)

    def _sidecars(self) -> list[ContainerRun]:
        """The native sidecars whose turn has come (they run from then on)."""
        return [c for c in self.inits[: self.init_index] if c.sidecar]

    def _workload_done(self) -> bool:
        return bool(self.containers) and all(c.done for c in self.containers)

    def _step_containers(self) -> None:
        for c in self._sidecars():
            self._step_one(c)
        while self.init_index < len(self.inits):
            c = self.inits[self.init_index]
            self._step_one(c)
            if c.sidecar and c.running() and c.started:
                self.init_index += 1
                continue
            if c.done and c.terminated and c.terminated["exitCode"] == 0:
                self.init_index += 1
                continue
            return
        for c in self.containers:
            self._step_one(c)
        if self._workload_done():  # a Job's pod: its sidecars are stopped, as a kubelet does
            for c in reversed(self._sidecars()):
                if c.running():
                    self._kill(c, float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))
                c.done = True
                c.terminated = c.terminated or {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": c.started_at,
                    "finishedAt": now_rfc3339(),
                }

    # --- probes ---------------------------------------------------------------------------------

    def _run_probes(self, c: ContainerRun) -> None:
        now = time.perf_counter()
        for kind, p in c.probes.items():
            if kind != "startupProbe" and not c.started:
                continue
            if kind == "startupProbe" and c.started:
                continue
            if now < p.next_at:
                continue
            p.next_at = now + p.spec.get("periodSeconds", 10)
            ok = self._probe(c, p.spec)
            if ok:
                p.successes, p.failures = p.successes + 1, 0
            else:
                p.successes, p.failures = 0, p.failures + 1
            threshold = p.spec.get("failureThreshold", 3)
            if kind == "startupProbe":
                if ok:
                    c.started = True
                elif p.failures >= threshold:
                    self._probe_kill(c, "startup")
                    return
            elif kind == "livenessProbe" and not ok and p.failures >= threshold:
                self._probe_kill(c, "liveness")
                return
            elif kind == "readinessProbe":
                if ok and p.successes >= p.spec.get("successThreshold", 1):
                    c.ready = True
                elif not ok and p.failures >= threshold:
                    c.ready = False
        if "readinessProbe" not in c.probes:
            c.ready = c.started

    def _probe_kill(self, c: ContainerRun, which: str) -> None:
        log.info(
            "%s/%s %s: %s probe failed: restarting", self.namespace, self.pod_name, c.name, which
        )
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._kill(c, grace)
        code = c.popen.returncode if c.popen is not None else -9
        self._on_exit(c, code if code is not None else -9)

    def _port(self, c: ContainerRun, port: int | str) -> int:
        if isinstance(port, int):
            return port
        for p in c.spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        return int(port)

    def _probe(self, c: ContainerRun, spec: Obj) -> bool:
        timeout_s = float(spec.get("timeoutSeconds", 1))
        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                host = h.get("host") or self.ip
                scheme = h.get("scheme", "HTTP").lower()
                url = f"{scheme}://{host}:{self._port(c, h['port'])}{h.get('path', '/')}"
                req = urllib.request.Request(url)
                for header in h.get("httpHeaders", []):
                    req.add_header(header["name"], header["value"])
                try:
                    with urllib.request.urlopen(req, timeout=timeout_s) as r:
                        return 200 <= int(r.status) < 400
                except urllib.error.HTTPError as err:
                    return 200 <= err.code < 400
            if "tcpSocket" in spec:
                t = spec["tcpSocket"]
                host = t.get("host") or self.ip
                with socket.create_connection((host, self._port(c, t["port"])), timeout_s):
                    return True
            if "exec" in spec:
                env = self._env(c.spec)
                argv = [*self._wrapper(c.spec), *spec["exec"]["command"]]
                done = subprocess.run(
                    argv, env=env, capture_output=True, timeout=timeout_s, check=False
                )
                return done.returncode == 0
        except (OSError, subprocess.TimeoutExpired, ValueError, NotYet):
            return False
        return False  # grpc probes and anything newer: not supported, so never passing

    # --- stopping -------------------------------------------------------------------------------

    def _kill(self, c: ContainerRun, grace_s: float) -> None:
        """SIGTERM to the container's program, SIGKILL to its group after `grace_s`."""
        p = c.popen
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()

    def _kill_all(self, grace_s: float) -> None:
        """Every container at once (as the kubelet does), each with the same deadline; the
        native sidecars after the rest, so the app can still use them while it stops."""
        deadline = time.perf_counter() + grace_s
        sidecars = [c for c in self.inits if c.sidecar and c.running()]
        self._kill_group(
            [c for c in self.inits + self.containers if c.running() and not c.sidecar], deadline
        )
        self._kill_group(list(reversed(sidecars)), max(deadline, time.perf_counter() + 1.0))

    def _kill_group(self, running: list[ContainerRun], deadline: float) -> None:
        for c in running:
            assert c.popen is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(c.popen.pid, signal.SIGTERM)
        for c in running:
            assert c.popen is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.popen.wait(max(0.0, deadline - time.perf_counter()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.popen.pid, signal.SIGKILL)
            c.popen.wait()
        if running:
            log.info(
                "%s/%s: stopped %s",
                self.namespace,
                self.pod_name,
                ", ".join(c.name for c in running),
            )

    # --- status ---------------------------------------------------------------------------------

    def _container_status(self, c: ContainerRun) -> Obj:
        state: Obj
        if c.running():
            state = {"running": {"startedAt": c.started_at}}
        elif c.done and c.terminated:
            state = {"terminated": c.terminated}
        else:
            state = {"waiting": {"reason": c.waiting_reason}}
        status: Obj = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "ready": c.ready and c.running(),
            "started": c.started and c.running(),
            "restartCount": c.restart_count,
            "state": state,
            "lastState": {"terminated": c.last_exit} if c.last_exit and c.running() else {},
        }
        if c.popen is not None:
            status["containerID"] = f"nodeagent://{c.popen.pid}"
        return status

    def _phase(self) -> str:
        if self.init_index < len(self.inits):
            if any(c.done and not c.sidecar for c in self.inits):
                return "Failed"
            return "Pending"
        if any(c.running() for c in self.containers):
            return "Running"
        if self.containers and all(c.done for c in self.containers):
            ok = all(c.terminated and c.terminated["exitCode"] == 0 for c in self.containers)
            return "Succeeded" if ok else "Failed"
        if any(c.started_at for c in self.containers):
            return "Running"
        return "Pending"

    def _condition(self, kind: str, ok: bool) -> Obj:
        """Conditions keep their lastTransitionTime until their status changes."""
        previous = self._conditions.get(kind)
        if previous is None or previous[0] != ok:
            self._conditions[kind] = (ok, now_rfc3339())
        return {
            "type": kind,
            "status": "True" if ok else "False",
            "lastTransitionTime": self._conditions[kind][1],
        }

    def _patch_status(self) -> None:
        initialized = self.init_index >= len(self.inits)
        ready = (
            initialized
            and bool(self.containers)
            and all(c.ready and c.running() for c in [*self._sidecars(), *self.containers])
        )
        self.ready = ready
        status: Obj = {
            "phase": self._phase(),
            "hostIP": self.host_ip,
            # Lists merged by key in a strategic patch: replace them, or a pod run again after an
            # agent restart would carry its old address beside the new one.
            "hostIPs": [{"$patch": "replace"}, {"ip": self.host_ip}],
            "podIP": self.ip,
            "podIPs": [{"$patch": "replace"}, {"ip": self.ip}],
            "startTime": self.start_time,
            "conditions": [
                self._condition("Initialized", initialized),
                self._condition("ContainersReady", ready),
                self._condition("Ready", ready),
            ],
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.inits:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.inits]
        if status == self._last_status:
            return
        try:
            # Strategic merge: conditions merge by type, so the scheduler's PodScheduled stays.
            self.ctx.kube.patch(
                pod_path(self.namespace, self.pod_name) + "/status",
                {"metadata": {"uid": self.uid}, "status": status},
                strategic=True,
            )
            self._last_status = status
        except KubeError as err:
            if err.status == 404:
                self._gone.set()
            else:
                log.warning("%s/%s: status: %s", self.namespace, self.pod_name, err)
        except OSError as err:
            log.warning("%s/%s: status: %s", self.namespace, self.pod_name, err)
