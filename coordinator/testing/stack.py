"""The whole Concord stack on this machine, step by step: `Stack` builds the Kubernetes tools,
starts the control plane and the node agent, installs the chart, runs each demo, and stops
everything it started. `make run` runs it through `python -m coordinator.testing.stack`
(`stack_run.py` has the command line and says what each step shows).

Test and demo tooling: it drives the node agent in-process (an `ignore_imports` line in
.importlinter allows this module, and only it, to import the agent).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from coordinator.testing.controlplane import (
    BUILD_SCRIPT,
    ControlPlane,
    ControlPlaneError,
    locate_binaries,
    start_control_plane,
)
from coordinator.testing.nodeagent import POD_NETWORK, NodeAgent

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "concord"
RELEASE = "concord"
NAMESPACE = "concord"
MEMBERS = 3
WAIT = "--timeout=180s"
CONCORDCTL = str(Path(sys.executable).parent / "concordctl")
COORDINATOR_PODS = "app.kubernetes.io/component=coordinator"


class StackError(Exception):
    """A step failed; the message says what, `log` which file to read."""

    def __init__(self, message: str, log: Path | str | None = None) -> None:
        super().__init__(message)
        self.log = log


class Stopped(BaseException):
    """A signal asked us to stop (SIGINT, SIGTERM, SIGHUP)."""


def say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def step(title: str, estimate: str = "") -> Iterator[None]:
    """Prints the step, then how long it took."""
    say(f"\n== {title}" + (f" ({estimate})" if estimate else ""))
    started = time.perf_counter()
    yield
    say(f"   done in {time.perf_counter() - started:.1f} s")


def show(argv: Sequence[str], done: subprocess.CompletedProcess[str]) -> None:
    """A command as typed, then its output indented."""
    say(f"$ {shlex.join(argv)}")
    for line in (done.stdout + done.stderr).rstrip().splitlines():
        say(f"  {line}")


class Stack:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.plane: ControlPlane | None = None
        self.agent: NodeAgent | None = None
        self.client_dir = state_dir / "client"
        self.agent_log = state_dir / "nodeagent.log"
        self.started_pids: list[tuple[str, int]] = []

    # --- helpers ------------------------------------------------------------------------------

    def kubectl(self, *args: str, shown: bool = True, check: bool = True) -> str:
        assert self.plane is not None
        done = self.plane.kubectl(*args, check=False)
        if shown:
            show(["kubectl", *args], done)
        if check and done.returncode != 0:
            raise StackError(f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        assert self.plane is not None
        return self.plane.kubectl_json(*args)

    def ctl_env(self) -> dict[str, str]:
        hosts = (f"{RELEASE}-{i}.{RELEASE}-peers.{NAMESPACE}.svc.cluster.local" for i in range(3))
        return {
            **os.environ,
            "CONCORD_ENDPOINTS": ",".join(f"{h}:7070" for h in hosts),
            "CONCORD_TLS_DIR": str(self.client_dir),
        }

    def concordctl(self, *args: str, shown: bool = True, check: bool = True) -> str:
        """concordctl where the pods' names resolve, as from a pod (NodeAgent.run)."""
        assert self.agent is not None
        done = self.agent.run([CONCORDCTL, *args], timeout_s=60, env=self.ctl_env())
        if shown:
            show(["concordctl", *args], done)
        if check and done.returncode != 0:
            raise StackError(f"concordctl {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def pod_log(self, name: str) -> str:
        assert self.agent is not None
        logs = sorted(self.agent.state_dir.glob(f"pods/{NAMESPACE}_{name}*/*.log"))
        return ", ".join(str(p) for p in logs) or str(self.agent.state_dir / "pods")

    # --- the steps ----------------------------------------------------------------------------

    def tools(self) -> Path:
        bin_dir, why = locate_binaries()
        if bin_dir is not None:
            say(f"   Kubernetes v1.34.12, etcd, helm: present in {bin_dir}")
            return bin_dir
        if os.environ.get("CONCORD_KUBE_BIN"):
            raise StackError(why)
        if shutil.which("go") is None:
            raise StackError(
                f"the Kubernetes tools are missing ({why}) and there is no Go toolchain to "
                "build them: install Go >= 1.24, or set CONCORD_KUBE_BIN to a directory with "
                "etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and helm"
            )
        say(
            "   not built yet: building them from the Go module proxy now. This takes about "
            "10 minutes on a cold Go cache (2 CPUs), about 1 minute with a warm one; progress:"
        )
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
        )
        if done.returncode != 0:
            raise StackError("scripts/build_kube_tools.sh failed (its output is above)")
        bin_dir, why = locate_binaries()
        if bin_dir is None:
            raise StackError(f"the build finished but the tools are not usable: {why}")
        return bin_dir

    def control_plane(self, bin_dir: Path) -> None:
        root = self.state_dir / "kube"
        root.mkdir(parents=True)
        try:
            self.plane = start_control_plane(bin_dir, root)
        except ControlPlaneError as e:
            raise StackError(str(e), root) from e
        for c in self.plane.components:
            assert c.pid is not None
            self.started_pids.append((c.name, c.pid))
            say(
                f"   {c.name:<24} pid {c.pid:<8} ready after {c.ready_after_s or 0:4.1f} s"
                f"  log {c.log_path}"
            )
        say(f"   API server {self.plane.server}, kubeconfig {self.plane.kubeconfig}")

    def node_agent(self) -> None:
        assert self.plane is not None
        handler = logging.FileHandler(self.agent_log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("concord.nodeagent")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        self.agent = NodeAgent(self.plane.kubeconfig, self.state_dir / "nodeagent")
        self.agent.start()
        say(f"   Nodes {', '.join(self.agent.nodes)}: pods run as processes on {POD_NETWORK}")
        say(f"   log {self.agent_log}; pod logs under {self.agent.state_dir / 'pods'}")
        self.kubectl("get", "nodes")

    def install(self) -> None:
        assert self.plane is not None
        argv = ["install", RELEASE, str(CHART.relative_to(REPO)), "-n", NAMESPACE]
        say(
            f"$ helm {shlex.join([*argv, '--create-namespace'])} "
            "--set 'injection.sidecar.listenHost=$(POD_IP)'"
        )
        # Pods here share one loopback: each injected sidecar listens on its pod's address.
        sets = ("--set", "injection.sidecar.listenHost=$(POD_IP)")
        done = self.plane.helm(
            "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", *sets,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise StackError(f"helm install failed: {done.stderr}", self.agent_log)
        say("  " + "\n  ".join(done.stdout.strip().splitlines()[:6]))
        for what in (f"statefulset/{RELEASE}", f"deployment/{RELEASE}-operator"):
            started = time.perf_counter()
            try:
                self.kubectl("rollout", "status", "-n", NAMESPACE, what, WAIT)
            except StackError as e:
                raise StackError(str(e), self.pod_log(RELEASE)) from e
            say(f"  ({what} rolled out in {time.perf_counter() - started:.1f} s)")
        self.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide")
        # The client certificate the chart's CA bootstrap made, as NOTES.txt fetches it.
        self.client_dir.mkdir(parents=True, exist_ok=True)
        data = self.kubectl_json("get", "secret", "-n", NAMESPACE, f"{RELEASE}-tls")["data"]
        for name in ("ca.pem", "client.pem", "client-key.pem"):
            (self.client_dir / name).write_bytes(base64.b64decode(data[name]))
            (self.client_dir / name).chmod(0o600)
        say(f"   client certificate from Secret {RELEASE}-tls in {self.client_dir}")
        # concordctl reads both from the environment; spawned holders inherit them.
        env = self.ctl_env()
        os.environ["CONCORD_ENDPOINTS"] = env["CONCORD_ENDPOINTS"]
        os.environ["CONCORD_TLS_DIR"] = env["CONCORD_TLS_DIR"]
        say(f"$ export CONCORD_ENDPOINTS={env['CONCORD_ENDPOINTS']}")
        say(f"$ export CONCORD_TLS_DIR={env['CONCORD_TLS_DIR']}")
        self.healthy_members()

    def healthy_members(self, timeout_s: float = 90.0) -> None:
        """`concordctl member list` until every member is listed, one Leader, the rest
        Reachable (a restarted member lists its name a moment after it starts)."""
        want = ["Leader"] + ["Reachable"] * (MEMBERS - 1)
        deadline = time.perf_counter() + timeout_s
        while True:
            out = self.concordctl("-o", "json", "member", "list", shown=False, check=False)
            with contextlib.suppress(ValueError, TypeError, KeyError):
                got = json.loads(out)
                members = got["members"] if isinstance(got, dict) else got
                if sorted(str(m["status"]) for m in members) == want and all(
                    m.get("name") for m in members
                ):
                    break
            if time.perf_counter() > deadline:
                raise StackError(f"members not healthy after {timeout_s:.0f} s: {out}")
            time.sleep(1.0)
        self.concordctl("member", "list")

    def demo_view(self) -> None:
        self.kubectl("get", "concord", "-A")
        self.kubectl("get", "csealed,secret", "db", "-n", NAMESPACE)

    def demo_lease(self) -> None:
        assert self.agent is not None
        lease = {
            "apiVersion": "concord.dev/v1alpha1",
            "kind": "Lease",
            "metadata": {"name": "nightly-report", "namespace": NAMESPACE},
            "spec": {"ttlSeconds": 30},
        }
        path = self.state_dir / "lease.yaml"
        path.write_text(json.dumps(lease, indent=2) + "\n")
        self.kubectl("apply", "-f", str(path))
        self.kubectl("wait", "-n", NAMESPACE, "clease/nightly-report", "--for=condition=Ready")
        release = self.state_dir / "release-the-lock"  # the holder works until this exists
        argv = [
            "lock",
            f"k8s/{NAMESPACE}/nightly-report",
            "--",
            "sh",
            "-c",
            'echo "holding the lock, fencing token $CONCORD_FENCING_TOKEN"; '
            f"while [ ! -e {release} ]; do sleep 0.2; done",
        ]
        say(f"$ concordctl {shlex.join(argv)} &")
        log = self.state_dir / "lock.log"
        child = self.agent.spawn([CONCORDCTL, *argv], log)
        self.started_pids.append(("concordctl lock", child.pid))
        try:
            line = self._readline(child, 60.0)
            if "fencing token" not in line:
                raise StackError("the lock was never granted", log)
            say(f"  {line.strip()}")
            token = line.split()[-1]
            deadline = time.perf_counter() + 30
            status: dict[str, Any] = {}
            while time.perf_counter() < deadline:
                obj = self.kubectl_json("get", "clease", "nightly-report", "-n", NAMESPACE)
                status = obj.get("status", {})
                if str(status.get("fencingToken", "")) == token:
                    break
                time.sleep(0.3)
            else:
                raise StackError(f"the Lease's status never showed token {token}: {status}")
            self.kubectl("get", "clease", "nightly-report", "-n", NAMESPACE, "-o", "wide")
            self.kubectl(
                "get", "clease", "nightly-report", "-n", NAMESPACE,
                "-o", "jsonpath={.status.fencingToken}",
            )  # fmt: skip
            say(f"   the Lease's status shows fencing token {token}, the holder's")
        finally:
            release.touch()  # the holder's work ends; concordctl releases the lock
            try:
                child.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
        say(f"   the holder finished (exit {child.returncode}): lock released")

    @staticmethod
    def _readline(child: subprocess.Popen[str], timeout_s: float) -> str:
        got: list[str] = []
        out = child.stdout
        assert out is not None
        reader = threading.Thread(target=lambda: got.append(out.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        return got[0] if got else ""

    def demo_sequence(self) -> None:
        seq = {
            "apiVersion": "concord.dev/v1alpha1",
            "kind": "Sequence",
            "metadata": {"name": "invoices", "namespace": NAMESPACE},
            "spec": {"start": 1000, "increment": 1},
        }
        path = self.state_dir / "sequence.yaml"
        path.write_text(json.dumps(seq, indent=2) + "\n")
        self.kubectl("apply", "-f", str(path))
        self.kubectl("wait", "-n", NAMESPACE, "cseq/invoices", "--for=condition=Ready")
        last = ""
        for _ in range(3):
            last = self.concordctl("seq", "next", f"k8s/{NAMESPACE}/invoices").strip()
        value = last.split()[-1] if last else ""
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            status = self.kubectl_json("get", "cseq", "invoices", "-n", NAMESPACE).get("status", {})
            if str(status.get("value", "")) == value:
                break
            time.sleep(0.3)
        else:
            raise StackError(f"the Sequence's status never showed {value}")
        self.kubectl("get", "cseq", "invoices", "-n", NAMESPACE)
        say(f"   the Sequence's status shows {value}, the last number issued")

    def demo_sealed(self) -> None:
        secret = self.state_dir / "db-secret.yaml"
        sealed = self.state_dir / "db-sealed.yaml"
        out = self.kubectl(
            "create", "secret", "generic", "db", "-n", NAMESPACE,
            "--from-literal=password=correct-horse", "--dry-run=client", "-o", "yaml",
            shown=False,
        )  # fmt: skip
        secret.write_text(out)
        say(
            f"$ kubectl create secret generic db -n {NAMESPACE} "
            f"--from-literal=password=correct-horse --dry-run=client -o yaml > {secret.name}"
        )
        self.concordctl("seal", "-f", str(secret), "-w", str(sealed))
        say(f"$ grep -A1 encryptedData {sealed.name}")
        text = sealed.read_text().splitlines()
        for i, line in enumerate(text):
            if "encryptedData" in line:
                for shown_line in text[i : i + 2]:
                    say(f"  {shown_line[:96]}{'...' if len(shown_line) > 96 else ''}")
        self.kubectl("apply", "-f", str(sealed))
        self.kubectl("wait", "-n", NAMESPACE, "csealed/db", "--for=condition=Ready", WAIT)
        value = base64.b64decode(
            self.kubectl_json("get", "secret", "db", "-n", NAMESPACE)["data"]["password"]
        ).decode()
        say(f"$ kubectl get secret db -n {NAMESPACE} -o jsonpath={{.data.password}} | base64 -d")
        say(f"  {value}")
        if value != "correct-horse":
            raise StackError(f"the Secret holds {value!r}, not the sealed value")

    def demo_injected(self) -> None:
        """A pod asking for the sidecar and the secret `db` as a file: the webhook injects
        the sidecar, which authenticates with the pod's ServiceAccount token on the members'
        workload ports and writes /run/secrets/db/password; the app only reads the file."""
        assert self.agent is not None
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "db-reader",
                "namespace": NAMESPACE,
                "annotations": {"concord.dev/inject": "true", "concord.dev/secrets": "db"},
            },
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [
                    {
                        "name": "app",
                        "image": "busybox",
                        "command": [
                            "sh", "-c",
                            'echo "read /run/secrets/db/password: '
                            '$(cat /run/secrets/db/password)"; sleep 3600',
                        ],
                    }
                ],
            },
        }  # fmt: skip
        path = self.state_dir / "db-reader.yaml"
        path.write_text(json.dumps(pod, indent=2) + "\n")
        say(
            f"$ cat {path.name}   # annotations concord.dev/inject: 'true', concord.dev/secrets: db"
        )
        self.kubectl("apply", "-f", str(path))
        self.kubectl(
            "wait", "-n", NAMESPACE, "pod/db-reader", "--for=condition=Ready", "--timeout=90s"
        )
        self.kubectl(
            "get", "pod", "db-reader", "-n", NAMESPACE,
            "-o", "jsonpath={.spec.initContainers[0].name} {.spec.initContainers[0].args}",
        )  # fmt: skip
        deadline = time.perf_counter() + 30
        logs = sorted(self.agent.state_dir.glob(f"pods/{NAMESPACE}_db-reader_*/app.log"))
        line = ""
        while time.perf_counter() < deadline and not line:
            logs = logs or sorted(
                self.agent.state_dir.glob(f"pods/{NAMESPACE}_db-reader_*/app.log")
            )
            text = logs[0].read_text() if logs else ""
            line = next((x for x in text.splitlines() if x.startswith("read ")), "")
            time.sleep(0.2)
        say(f"$ cat {logs[0] if logs else 'app.log'}   # the app container's output")
        say(f"  {line}")
        if not line.endswith("correct-horse"):
            raise StackError(
                "the injected pod never read its secret file", self.pod_log("db-reader")
            )
        say("   the injected sidecar delivered the SealedSecret with the pod's own token")

    def demo_heal(self) -> None:
        out = self.concordctl("-o", "json", "member", "list", shown=False)
        got = json.loads(out)
        members = got["members"] if isinstance(got, dict) else got
        leader = next(str(m["name"]) for m in members if m["status"] == "Leader")
        self.concordctl("put", "before-failover", "kept")
        say(f"   {leader} leads; deleting its pod")
        self.kubectl("delete", "pod", "-n", NAMESPACE, leader, "--wait=false")
        say(f"$ kubectl get pods -n {NAMESPACE} -l {COORDINATOR_PODS} -w")
        started = time.perf_counter()
        seen: dict[str, str] = {}
        old_uid = ""
        deadline = started + 180
        while time.perf_counter() < deadline:
            pods = self.kubectl_json("get", "pods", "-n", NAMESPACE, "-l", COORDINATOR_PODS)
            healed = len(pods["items"]) == MEMBERS
            for pod in pods["items"]:
                name = pod["metadata"]["name"]
                meta, st = pod["metadata"], pod.get("status", {})
                ready = any(
                    c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", [])
                )
                phase = "Terminating" if meta.get("deletionTimestamp") else st.get("phase", "?")
                row = f"{name:<12} {'1/1' if ready else '0/1'}   {phase:<12}"
                if name == leader and not old_uid:
                    old_uid = meta["uid"]
                new = name != leader or (
                    meta["uid"] != old_uid and not meta.get("deletionTimestamp")
                )
                healed = healed and ready and new
                if seen.get(name) != row:
                    seen[name] = row
                    say(f"  {row} {time.perf_counter() - started:5.1f}s")
            if healed and old_uid:
                break
            time.sleep(0.5)
        else:
            raise StackError(
                "the deleted member's pod did not come back Ready", self.pod_log(leader)
            )
        say(f"   {leader} recreated and Ready after {time.perf_counter() - started:.1f} s")
        self.healthy_members()
        self.concordctl("get", "before-failover")

    def keep(self) -> None:
        assert self.plane is not None
        kc = self.plane.kubeconfig
        say("\n== kept up until Ctrl-C, SIGTERM or SIGHUP")
        say(f"   kubeconfig: {kc}")
        say(f"   export KUBECONFIG={kc}")
        # concordctl as from a pod: the members' certificates name their DNS names, which
        # resolve only in the node agent's hosts file.
        assert self.agent is not None
        bin_dir = self.state_dir / "bin"
        bin_dir.mkdir(exist_ok=True)
        script = bin_dir / "concordctl"
        env = self.ctl_env()
        script.write_text(
            "#!/bin/sh\n# concordctl where the pods' names resolve (the node agent's hosts file)\n"
            f"export CONCORD_ENDPOINTS={shlex.quote(env['CONCORD_ENDPOINTS'])}\n"
            f"export CONCORD_TLS_DIR={shlex.quote(env['CONCORD_TLS_DIR'])}\n"
            f"exec {shlex.join([*self.agent.client_prefix(workdir='.'), CONCORDCTL])} " + '"$@"\n'
        )
        script.chmod(0o755)
        say(f"   export PATH={bin_dir}:{self.plane.bin_dir}:$PATH")
        say("   # concordctl as from a pod (the members' names resolve), the pinned kubectl, helm")
        say("   then try:")
        say(f"     kubectl get concord -A; kubectl get pods -n {NAMESPACE} -o wide")
        say("     concordctl member list; concordctl seq next k8s/concord/invoices")
        say(
            f"     kubectl delete pod -n {NAMESPACE} {RELEASE}-1; "
            f"kubectl get pods -n {NAMESPACE} -w"
        )
        say(f"     helm status {RELEASE} -n {NAMESPACE}")
        while True:
            time.sleep(3600)

    def close(self) -> None:
        """Pods first (by PID), then the control plane (by PID). Idempotent."""
        if self.agent is not None:
            pods = self.agent.pids()
            for name, pids in pods.items():
                for pid in pids:
                    self.started_pids.append((f"pod {name}", pid))
            say("\n== stopping: the node agent's pods, then the control plane")
            self.agent.stop()
            self.agent = None
        if self.plane is not None:
            self.plane.close()
            self.plane = None
        left = [pid for _, pid in self.started_pids if _alive(pid)]
        listing = " ".join(str(pid) for pid in sorted({pid for _, pid in self.started_pids}))
        if not self.started_pids:
            say("stack: started no process")
            return
        say(f"stack: stopped pids {listing}" + (f"; STILL RUNNING {left}" if left else ""))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


if __name__ == "__main__":
    from .stack_run import main

    sys.exit(main())
