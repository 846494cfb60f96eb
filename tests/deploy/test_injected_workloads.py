"""Identity, secrets as files and injection together, end to end on the real control plane.

One `helm install` with the defaults (injection and workload identity on; the sidecar API on
the pod's address because the node agent's pods share one loopback), members and operator run
by the node agent. Then, in two namespaces of their own, what an app developer does:

- `concordctl seal --files-only` a Secret for that namespace (the certificate from the
  operator's ConfigMap), `kubectl apply` it, and create a pod annotated
  `concord.dev/inject: "true"`, `concord.dev/secrets: db` whose app container only reads
  /run/secrets/db/password. Each pod's injected sidecar authenticates with its own
  ServiceAccount token (projected, audience concord) on the members' workload ports and gets
  its own namespace's value; the app prints it.
- That pod's token, used directly (`Client.with_token`, where the cluster's names resolve),
  cannot read the other namespace's record nor unseal its value, nor rewrite its own
  namespace's record: PERMISSION_DENIED.
- The SealedSecret re-sealed and applied: the app prints the new value (latency printed).
- examples/leader-election.yaml as shipped: three replicas elect exactly one leader through
  their injected sidecars; the leader's pod deleted, another replica leads (time printed).

Logs are the node agent's files (`STATE/pods/NS_POD_UID/CONTAINER.log`); the app's output is
all the test reads from the pods.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.nodeagent import NodeAgent
from tests.deploy.chart import CHART, CONCORDCTL, EXAMPLES, member_host

pytestmark = [pytest.mark.kube, pytest.mark.process]

RELEASE = "concord-w"  # cluster-scoped objects of its own (the webhook configuration)
INJECTOR = f"{RELEASE}-sidecar-injector"
WAIT = "--timeout=180s"
T = TypeVar("T")

# The app: print the secret file whenever it changes, with nothing else to go on than the
# path (the sidecar wrote it; the pod started only after the sidecar's startup probe, which
# waits for the first delivery).
READER = r"""
last=""
while true; do
  v="$(cat /run/secrets/db/password 2>/dev/null)"
  if [ "$v" != "$last" ]; then echo "password=$v"; last="$v"; fi
  sleep 0.1
done
"""

# Runs where the members' names resolve, with one pod's token and CA: what the pod's own
# identity may and may not do. Prints one JSON line.
PROBE = """
import asyncio, json, sys
from coordinator.client import Client, ConcordError

async def main() -> None:
    endpoints, token, ca, own, other, sealed_other = sys.argv[1:]
    out = {}
    async with Client.with_token(endpoints.split(","), token, ca, timeout_s=30.0) as c:
        async def attempt(what, call):
            try:
                await call
                out[what] = "OK"
            except ConcordError as err:
                out[what] = err.code
                out[what + ".message"] = err.message
        await attempt("own-read", c.get(f"k8s/{own}/sealedsecrets/db".encode()))
        await attempt("other-read", c.get(f"k8s/{other}/sealedsecrets/db".encode()))
        await attempt("other-unseal", c.unseal(bytes.fromhex(sealed_other), other, "db"))
        await attempt("own-rewrite", c.put(f"k8s/{own}/sealedsecrets/db".encode(), b"{}"))
    print(json.dumps(out))

asyncio.run(main())
"""


def _wait_for(what: str, check: Callable[[], T | None], timeout_s: float = 90.0) -> T:
    deadline = time.perf_counter() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.perf_counter() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass
class Installed:
    plane: ControlPlane
    agent: NodeAgent
    namespace: str
    """The release's."""
    workdir: Path

    def app_lines(self, namespace: str, pod_prefix: str, container: str = "app") -> list[str]:
        """Every line the pods' `container` printed, oldest first per pod."""
        lines: list[str] = []
        for log in sorted(self.agent.state_dir.glob(f"pods/{namespace}_{pod_prefix}*/*.log")):
            if log.stem == container:
                lines += log.read_text(errors="replace").splitlines()
        return lines

    def pod_dir(self, namespace: str, pod: str) -> Path:
        (found,) = self.agent.state_dir.glob(f"pods/{namespace}_{pod}_*")
        return found

    def seal(self, namespace: str, password: str) -> dict[str, Any]:
        """`concordctl seal --files-only` of Secret `db` in `namespace`, sealed to the
        certificate the operator publishes (read through the Kubernetes API)."""
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": namespace},
            "stringData": {"password": password},
        }
        done = subprocess.run(
            [CONCORDCTL, "seal", "--files-only", "--format", "json",
             "--controller-namespace", self.namespace,
             "--kubeconfig", str(self.plane.kubeconfig)],
            input=json.dumps(secret), capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        sealed: dict[str, Any] = json.loads(done.stdout)
        return sealed

    def apply(self, obj: dict[str, Any]) -> None:
        self.plane.kubectl("apply", "-f", "-", input=json.dumps(obj))


def _webhook_serving(plane: ControlPlane, namespace: str) -> bool:
    hook = plane.kubectl_json("get", "mutatingwebhookconfiguration", INJECTOR)["webhooks"][0]
    if not hook["clientConfig"].get("caBundle"):
        return False
    slices = plane.kubectl_json(
        "get", "endpointslices", "-n", namespace,
        "-l", f"kubernetes.io/service-name={RELEASE}-operator",
    )["items"]  # fmt: skip
    return any(
        (e.get("conditions") or {}).get("ready") for s in slices for e in s.get("endpoints") or []
    )


@pytest.fixture(scope="module")
def installed(
    control_plane: ControlPlane,
    node_agent: NodeAgent,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:
    namespace = f"w-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    try:
        started = time.perf_counter()
        control_plane.helm(
            "install", RELEASE, str(CHART), "-n", namespace,
            # Pods here share one loopback: each sidecar listens on its pod's address.
            "--set", "injection.sidecar.listenHost=$(POD_IP)",
            "--set", "podDisruptionBudget.enabled=false",
        )  # fmt: skip
        for what in (f"statefulset/{RELEASE}", f"deployment/{RELEASE}-operator"):
            control_plane.kubectl("rollout", "status", "-n", namespace, what, WAIT)
        _wait_for("the webhook", lambda: _webhook_serving(control_plane, namespace), 120)
        _wait_for(
            "the sealing certificate",
            lambda: (
                control_plane.kubectl(
                    "get", "configmap", "-n", namespace, "concord-sealing-certificate", check=False
                ).returncode
                == 0
            ),
        )
        took = time.perf_counter() - started
        print(f"\nhelm install -> members, webhook and sealing certificate: {took:.1f} s")
        yield Installed(control_plane, node_agent, namespace, tmp_path_factory.mktemp("injected"))
    finally:
        control_plane.helm("uninstall", RELEASE, "-n", namespace, "--wait=false", check=False)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@dataclass
class Team:
    namespace: str
    sealed: dict[str, Any]


@pytest.fixture(scope="module")
def teams(installed: Installed) -> Iterator[list[Team]]:
    """Two namespaces, each with SealedSecret `db` (its own value) and an injected reader."""
    made: list[Team] = []
    try:
        for _ in range(2):
            ns = f"team-{uuid.uuid4().hex[:6]}"
            installed.plane.kubectl("create", "namespace", ns)
            sealed = installed.seal(ns, f"pw-{ns}-1")
            installed.apply(sealed)
            made.append(Team(ns, sealed))
        for team in made:
            installed.apply(_reader(team.namespace))
        yield made
    finally:
        for team in made:
            installed.plane.kubectl(
                "delete", "namespace", team.namespace, "--wait=false", check=False
            )


def _reader(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "reader",
            "namespace": namespace,
            "annotations": {"concord.dev/inject": "true", "concord.dev/secrets": "db"},
        },
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "app", "image": "busybox", "command": ["sh", "-c", READER]}],
        },
    }


def _printed(installed: Installed, namespace: str, line: str) -> bool:
    return line in installed.app_lines(namespace, "reader")


def test_each_injected_pod_reads_its_own_namespaces_secret_as_a_file(
    installed: Installed, teams: list[Team]
) -> None:
    started = time.perf_counter()
    for team in teams:
        want = f"password=pw-{team.namespace}-1"
        _wait_for(
            f"{team.namespace}/reader", partial(_printed, installed, team.namespace, want), 120
        )
        pod = installed.plane.kubectl_json("get", "pod", "-n", team.namespace, "reader")
        (side,) = pod["spec"]["initContainers"]
        assert "--token-file" in side["args"]
        # Only its own value ever reached it.
        other = next(t for t in teams if t is not team)
        assert not any(other.namespace in line for line in installed.app_lines(
            team.namespace, "reader"))  # fmt: skip
    print(f"\nboth readers printing their own secret {time.perf_counter() - started:.1f} s "
          "after their pods were created")  # fmt: skip


def test_a_pods_token_cannot_reach_the_other_namespace_or_rewrite_its_records(
    installed: Installed, teams: list[Team]
) -> None:
    a, b = teams
    _wait_for("reader a", lambda: _printed(installed, a.namespace, f"password=pw-{a.namespace}-1"))
    volumes = installed.pod_dir(a.namespace, "reader") / "volumes"
    token, ca = volumes / "concord-token" / "token", volumes / "concord-ca" / "ca.pem"
    endpoints = ",".join(f"{member_host(RELEASE, installed.namespace, i)}:7073" for i in range(3))
    sealed_b = b.sealed["spec"]["encryptedData"]["password"]
    done = installed.agent.run(
        [sys.executable, "-c", PROBE, endpoints, str(token), str(ca), a.namespace,
         b.namespace, base64.b64decode(sealed_b).hex()],
        timeout_s=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["own-read"] == "OK"
    who = f"system:serviceaccount:{a.namespace}:default (pod reader)"
    for what in ("other-read", "other-unseal", "own-rewrite"):
        assert out[what] == "PERMISSION_DENIED", out
        assert who in out[what + ".message"], out
    assert f"k8s/{b.namespace}/sealedsecrets/db" in out["other-read.message"]
    assert "operator's records" in out["own-rewrite.message"]


def test_a_resealed_secret_reaches_the_file(installed: Installed, teams: list[Team]) -> None:
    team = teams[0]
    _wait_for("the first value", lambda: _printed(
        installed, team.namespace, f"password=pw-{team.namespace}-1"))  # fmt: skip
    sealed = installed.seal(team.namespace, f"pw-{team.namespace}-2")
    started = time.perf_counter()
    installed.apply(sealed)
    _wait_for("the new value in the file", lambda: _printed(
        installed, team.namespace, f"password=pw-{team.namespace}-2"), 30)  # fmt: skip
    latency = time.perf_counter() - started
    print(f"\nkubectl apply of the re-sealed SealedSecret -> the app printed it: {latency:.2f} s")
    assert latency < 15


LEADS = re.compile(r"^(\S+) leads with fencing token (\d+)$")


def _leads(installed: Installed, namespace: str) -> list[tuple[str, int]]:
    found = []
    for line in installed.app_lines(namespace, "report-leader-"):
        m = LEADS.match(line)
        if m:
            found.append((m.group(1), int(m.group(2))))
    return found


def test_the_leader_election_example_elects_one_and_fails_over(
    installed: Installed, teams: list[Team]
) -> None:
    ns = teams[1].namespace
    example = [d for d in yaml.safe_load_all((EXAMPLES / "leader-election.yaml").read_text()) if d]
    for obj in example:
        obj["metadata"]["namespace"] = ns
        installed.apply(obj)
    started = time.perf_counter()
    installed.plane.kubectl("rollout", "status", "-n", ns, "deployment/report-leader", WAIT)
    (first,) = _wait_for("one leader", lambda: _leads(installed, ns), 60)
    print(f"\n3 replicas rolled out and one leads: {time.perf_counter() - started:.1f} s "
          f"({first[0]}, fencing token {first[1]})")  # fmt: skip
    # Exactly one: the others are still campaigning a moment later.
    time.sleep(2)
    assert _leads(installed, ns) == [first]
    started = time.perf_counter()
    installed.plane.kubectl("delete", "pod", "-n", ns, first[0], "--wait=false")
    (leader, token), *more = _wait_for(
        "another leader", lambda: [got for got in _leads(installed, ns) if got != first], 60
    )
    failover = time.perf_counter() - started
    print(f"leader pod deleted -> {leader} leads (fencing token {token}): {failover:.2f} s")
    assert leader != first[0] and token > first[1]
    assert not more, more

    # The sidecars' election is the Lease CR's (the sidecar maps `report-leader` to
    # k8s/NS/report-leader): the operator mirrors the new leader into its status.
    def mirrored() -> bool:
        status = installed.plane.kubectl_json(
            "get", "leases.concord.dev", "-n", ns, "report-leader"
        ).get("status", {})
        return [h["identity"] for h in status.get("holders", [])] == [leader]

    _wait_for("the Lease CR to show the new leader", mirrored, 30)
