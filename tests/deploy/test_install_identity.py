"""`helm install` with `workloadIdentity.enabled=true` on the real control plane, the member
run by the node agent: the member reviews tokens in-cluster (the chart's projected token and
CA at /var/run/secrets/kubernetes.io/serviceaccount, KUBERNETES_SERVICE_HOST/PORT, the
ServiceAccount bound to system:auth-delegator), so a pod's token works on the workload port
in its own namespace and is refused elsewhere."""

from __future__ import annotations

import json
import sys

import pytest

from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.nodeagent import NodeAgent
from tests.deploy.chart import CHART, make_tls_secret, member_host

pytestmark = [pytest.mark.kube, pytest.mark.process]

RELEASE = "concordwi"
WAIT = "--timeout=180s"
PORT = 7073

# Runs where the members' names resolve (as in a pod): one call in the token's namespace,
# one outside it, one with no token at all; prints what each ended in.
SCRIPT = """
import asyncio, json, sys
import grpc
from coordinator.client import Client, ConcordError

async def main() -> None:
    endpoint, token_file, ca_file, ns = sys.argv[1:]
    out = {}
    async with Client.with_token([endpoint], token_file, ca_file, timeout_s=30.0) as c:
        await c.put(f"k8s/{ns}/hello".encode(), b"1")
        out["own"] = "OK"
        try:
            await c.put(b"k8s/elsewhere/x", b"1")
            out["other"] = "OK"
        except ConcordError as err:
            out["other"] = err.code
    creds = grpc.ssl_channel_credentials(open(ca_file, "rb").read())
    async with Client([endpoint], credentials=creds, timeout_s=10.0) as bare:
        try:
            await bare.get(f"k8s/{ns}/hello".encode())
            out["none"] = "OK"
        except ConcordError as err:
            out["none"] = err.code
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_pods_token_is_reviewed_in_cluster_and_scoped_to_its_namespace(
    control_plane: ControlPlane,
    node_agent: NodeAgent,
    kube_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ns = kube_namespace
    work = tmp_path_factory.mktemp("identity-install")
    client_tls = make_tls_secret(control_plane, ns, RELEASE, 1, work)
    control_plane.helm(
        "install", RELEASE, str(CHART), "-n", ns, "--set", "operator.enabled=false",
        "--set", f"tls.secretName={RELEASE}-tls", "--set", "coordinator.replicas=1",
        "--set", "podDisruptionBudget.enabled=false", "--set", "workloadIdentity.enabled=true",
    )  # fmt: skip
    try:
        control_plane.kubectl("rollout", "status", "-n", ns, f"statefulset/{RELEASE}", WAIT)
        token = control_plane.kubectl(
            "create", "token", "default", "-n", ns, "--audience", "concord"
        ).stdout.strip()
        token_file = work / "token"
        token_file.write_text(token)
        endpoint = f"{member_host(RELEASE, ns, 0)}:{PORT}"
        done = node_agent.run(
            [
                sys.executable,
                "-c",
                SCRIPT,
                endpoint,
                str(token_file),
                str(client_tls / "ca.pem"),
                ns,
            ],
            timeout_s=120,
        )
        if done.returncode != 0:
            logs = control_plane.kubectl("logs", "-n", ns, f"{RELEASE}-0", check=False)
            pytest.fail(f"{done.stderr}\nmember log:\n{logs.stdout[-4000:]}{logs.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result == {"own": "OK", "other": "PERMISSION_DENIED", "none": "UNAUTHENTICATED"}
    finally:
        control_plane.helm("uninstall", RELEASE, "-n", ns, "--wait=false", check=False)
