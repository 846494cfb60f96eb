"""`python -m coordinator.testing.stack [--keep] [--state-dir DIR]`: the whole stack on this
machine, what `make run` runs (README.md, Quick start).

1. the pinned Kubernetes tools, built when missing (`scripts/build_kube_tools.sh`: ~10 min
   cold, its progress shown; a second run checks them in about a second);
2. the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler:
   `coordinator.testing.controlplane`), the CRDs applied;
3. the node agent (`coordinator.testing.nodeagent`): three Nodes whose pods run as local
   processes on loopback addresses (a /24 of 127.0.0.0/8 chosen per session);
4. `helm install concord charts/concord`: the CA bootstrap Job, 3 members, the operator;
5. a demo with kubectl and concordctl, each command printed as a person would type it and
   its output shown: `kubectl get concord`, a Lease taken through the members and its fencing
   token in the Lease's status, a Sequence advancing, a SealedSecret becoming a Secret, a pod
   annotated for injection whose injected sidecar (the pod's own ServiceAccount token on the
   members' workload ports) delivers that SealedSecret as a file its app reads, a member pod
   deleted and the cluster healing.

Then everything it started is stopped by PID (pods first, then the control plane), also on
SIGINT, SIGTERM and SIGHUP; `--keep` leaves it up until one of those, with the kubeconfig
printed. State and logs go under `--state-dir` (default `.run/stack`, emptied first); a
failure says which step and which log to read. The last line lists the PIDs it stopped.

Test and demo tooling. This module is the command line; the steps are `stack.Stack`'s.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from coordinator.testing.controlplane import ControlPlaneError

from .stack import REPO, Stack, StackError, Stopped, say, step


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m coordinator.testing.stack", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--keep", action="store_true", help="stay up until a signal, then stop")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=REPO / ".run" / "stack",
        help="logs, kubeconfig, pod directories (emptied first; default .run/stack)",
    )
    args = p.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    state_dir: Path = args.state_dir.resolve()
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    say(f"stack: the whole Concord stack on this machine; state and logs in {state_dir}")
    total = time.perf_counter()
    stack = Stack(state_dir)
    current = ""
    code = 0
    try:
        current = "Kubernetes tools"
        with step("the Kubernetes tools (make kube-tools)", "1 s when built, ~10 min cold"):
            bin_dir = stack.tools()
        current = "control plane"
        with step(
            "the control plane: etcd, kube-apiserver, controller-manager, scheduler", "~10 s"
        ):
            stack.control_plane(bin_dir)
        current = "node agent"
        with step("the node agent: three Nodes, pods as local processes"):
            stack.node_agent()
        current = "helm install"
        with step("helm install: CA bootstrap, 3 members, the operator", "~30-60 s"):
            stack.install()
        current = "Lease"
        with step("a Lease: declared with kubectl, taken through the members"):
            stack.demo_lease()
        current = "Sequence"
        with step("a Sequence: declared with kubectl, advanced through the members"):
            stack.demo_sequence()
        current = "SealedSecret"
        with step("a SealedSecret becoming a Secret"):
            stack.demo_sealed()
        current = "injected pod"
        with step("an injected pod reads its secret as a file (workload identity)"):
            stack.demo_injected()
        current = "kubectl get concord"
        with step("the Concord resources, as kubectl shows them"):
            stack.demo_view()
        current = "healing"
        with step("a member pod deleted: the StatefulSet recreates it, the cluster heals"):
            stack.demo_heal()
        say(f"\nstack: demo finished in {time.perf_counter() - total:.1f} s")
        current = "keep"
        if args.keep:
            stack.keep()
    except Stopped as e:
        say(f"\nstack: {e} received, stopping")
        code = 0 if current == "keep" else 130
    except StackError as e:
        say(f"\nstack: FAILED at step '{current}': {e}")
        where = e.log or (stack.agent_log if stack.agent is not None else None)
        if where is not None:
            log = Path(where)
            say(f"stack: read {log}")
            if log.is_file():
                say("\n".join(f"  | {line}" for line in log.read_text().splitlines()[-15:]))
        code = 1
    except ControlPlaneError as e:
        say(f"\nstack: FAILED at step '{current}': {e}")
        say(f"stack: read the logs under {state_dir}")
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stack.close()
    say(f"stack: exit {code} after {time.perf_counter() - total:.1f} s")
    return code
