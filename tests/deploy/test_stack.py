"""`make run`'s demo (`python -m coordinator.testing.stack`) end to end, as a subprocess.

It starts its own control plane rather than reusing the session's: starting one (and
stopping everything it started, by PID) is part of what `make run` promises, and the demo
installs into a fixed namespace that another test's release could collide with. Run with
`--keep`, so one run also covers the kept-up stack (its kubeconfig works from outside) and
stopping on SIGTERM."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kube, pytest.mark.process]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600.0

# What each step prints when it worked, in order.
EXPECTED = [
    "== the Kubernetes tools",
    "== the control plane",
    "kube-apiserver ",
    "$ kubectl get nodes",
    "$ helm install concord charts/concord -n concord --create-namespace",
    "(statefulset/concord rolled out in",
    "(deployment/concord-operator rolled out in",
    "$ concordctl member list",
    "$ kubectl apply -f",
    "holding the lock, fencing token ",
    "the Lease's status shows fencing token ",
    "lock released",
    "$ concordctl seq next k8s/concord/invoices",
    "the Sequence's status shows 1002",
    "$ concordctl seal -f",
    "sealedsecret.concord.dev/db condition met",
    "correct-horse",
    "pod/db-reader condition met",
    "concord-sidecar ",
    "read /run/secrets/db/password: correct-horse",
    "the injected sidecar delivered the SealedSecret with the pod's own token",
    "$ kubectl get concord -A",
    "sequence.concord.dev/invoices",
    "$ kubectl delete pod -n concord",
    "recreated and Ready after",
    "before-failover  kept",
    "stack: demo finished in",
    "export KUBECONFIG=",
    "stack: SIGTERM received, stopping",
    "stack: stopped pids ",
    "stack: exit 0",
]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _holding(needle: str) -> list[str]:
    """Processes whose command line mentions `needle` (the demo's state dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and _alive(int(proc.name)):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_make_run_brings_up_the_stack_demos_it_and_stops_everything(
    kube_bin_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "stack"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.testing.stack", "--keep", "--state-dir", str(state)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    out: list[str] = []

    def read_until(marker: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            out.append(line)
            if marker in line:
                return
        pytest.fail(f"no {marker!r} in the demo's output:\n{''.join(out)[-6000:]}")

    try:
        read_until("export KUBECONFIG=")
        up_s = time.perf_counter() - started
        kubeconfig = "".join(out).split("export KUBECONFIG=")[-1].split()[0]
        pods = subprocess.run(
            [str(kube_bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "pods",
             "-n", "concord", "--no-headers"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        # Three members, the operator and the injected reader (2/2: app and native sidecar).
        assert pods.count(" Running ") == 5, pods
        assert re.search(r"^db-reader\s+2/2\s+Running ", pods, re.M), pods
        # The printed PATH's concordctl reaches the members by their names, from any directory.
        members = subprocess.run(
            [str(state / "bin" / "concordctl"), "member", "list"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert members.returncode == 0, members.stderr
        assert all(f" concord-{i} " in members.stdout for i in range(3)), members.stdout
        assert "Leader" in members.stdout
        proc.send_signal(signal.SIGTERM)
        read_until("stack: exit ")
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pumping.join(10)
        if proc.stdout is not None:
            proc.stdout.close()
    total_s = time.perf_counter() - started
    text = "".join(out)
    at = 0
    for marker in EXPECTED:
        found = text.find(marker, at)
        assert found >= 0, f"{marker!r} missing (or out of order):\n{text[-6000:]}"
        at = found
    assert "FAILED" not in text and "STILL RUNNING" not in text
    (stopped,) = re.findall(r"^stack: stopped pids ([\d ]+)$", text, re.M)
    pids = [int(p) for p in stopped.split()]
    assert len(pids) >= 4 + 4  # the control plane's four, the pods' four, the lock's holder
    assert [p for p in pids if _alive(p)] == []
    assert _holding(str(state)) == []
    print(f"\nmake run's demo: up and demoed in {up_s:.1f} s, stopped after {total_s:.1f} s")


def test_a_failed_step_says_which_step_and_what_to_do(tmp_path: Path) -> None:
    """No usable tools (CONCORD_KUBE_BIN pointing at nothing): a clear message, exit 1,
    nothing started."""
    done = subprocess.run(
        [sys.executable, "-m", "coordinator.testing.stack", "--state-dir", str(tmp_path / "s")],
        cwd=REPO,
        env={**os.environ, "CONCORD_KUBE_BIN": str(tmp_path / "nothing")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stack: FAILED at step 'Kubernetes tools'" in done.stdout
    assert "CONCORD_KUBE_BIN=" in done.stdout and "make kube-tools" in done.stdout
    assert "stack: started no process" in done.stdout
