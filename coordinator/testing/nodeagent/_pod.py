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

Steps 1 and 2's inputs (volumes, environment, argv, mounts) are prepared in `_pod_setup.py`;
the container model and the namespace wrapper are in `_container.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from coordinator.testing.procs import orphan_proof

from ._container import AgentContext, ContainerRun, NotYet, _Probe, now_rfc3339
from ._kube import KubeError, Obj, pod_path
from ._pod_setup import PodSetup

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


class PodRunner(PodSetup, threading.Thread):
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
