"""`helm install` with `tls.certManager` on the real control plane, the pods run by the node
agent, the test standing in for cert-manager's controller (which does not build here): it
issues every rendered Certificate as a CA issuer would (`issue_like_cert_manager`) into the
Secret the Certificate names, with tls.crt, tls.key and ca.crt as cert-manager writes them.
Three members then start from the projected volume of those Secrets, elect a leader over
mutual TLS with certificates that name only their own addresses, answer `concordctl` with the
client certificate fetched as NOTES.txt fetches it, and the operator, with its role
certificate from its own Secret, brings the membership to InSync."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.pki import create_ca
from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.nodeagent import NodeAgent
from tests.deploy.certmanager import issue_like_cert_manager
from tests.deploy.chart import CHART, CONCORDCTL, member_host

pytestmark = [pytest.mark.kube, pytest.mark.process]

RELEASE = "concordcm"
WAIT = "--timeout=180s"
VALUES = (
    "tls.certManager.enabled=true",
    "tls.certManager.createIssuer=true",
    "coordinator.maxReplicas=3",
    "injection.enabled=false",
)


def _play_cert_manager(plane: ControlPlane, namespace: str, objects: list[dict[str, Any]]) -> None:
    """What cert-manager's controller would do for the leaf Certificates (the chart's CA
    Certificate is cert-manager's own business: a CA made here stands in for it)."""
    ca = create_ca("cert-manager stand-in")
    for cert in (o for o in objects if o["kind"] == "Certificate"):
        spec = cert["spec"]
        if spec.get("isCA"):
            continue
        issued = issue_like_cert_manager(ca, spec)
        data = {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem, "ca.crt": ca.cert_pem}
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": spec["secretName"], "namespace": namespace},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        plane.kubectl("apply", "-f", "-", input=json.dumps(secret))


def _client_tls(plane: ControlPlane, namespace: str, into: Path) -> Path:
    """The client pair from cert-manager's Secret, under the names --tls-dir reads (NOTES)."""
    data = plane.kubectl_json("get", "secret", "-n", namespace, f"{RELEASE}-client-tls")["data"]
    for key, name in (
        ("ca.crt", "ca.pem"),
        ("tls.crt", "client.pem"),
        ("tls.key", "client-key.pem"),
    ):
        (into / name).write_bytes(base64.b64decode(data[key]))
        (into / name).chmod(0o600)
    return into


def test_members_and_operator_run_on_cert_manager_secrets(
    control_plane: ControlPlane,
    node_agent: NodeAgent,
    kube_namespace: str,
    cert_manager_crds: None,
    tmp_path: Path,
) -> None:
    ns = kube_namespace
    sets = [a for v in VALUES for a in ("--set", v)]
    rendered = control_plane.helm(
        "template", RELEASE, str(CHART), "-n", ns, "--validate", *sets
    ).stdout
    _play_cert_manager(control_plane, ns, [d for d in yaml.safe_load_all(rendered) if d])
    control_plane.helm("install", RELEASE, str(CHART), "-n", ns, *sets)
    try:
        control_plane.kubectl("rollout", "status", "-n", ns, f"statefulset/{RELEASE}", WAIT)
        assert control_plane.kubectl_json("get", "jobs", "-n", ns)["items"] == []
        client = _client_tls(control_plane, ns, tmp_path)
        endpoints = ",".join(f"{member_host(RELEASE, ns, i)}:7070" for i in range(3))
        argv = [CONCORDCTL, "--tls-dir", str(client), "--endpoints", endpoints, "-o", "json"]
        deadline = time.perf_counter() + 60.0
        while True:
            done = node_agent.run([*argv, "member", "list"], timeout_s=60)
            assert done.returncode == 0, done.stderr
            got = json.loads(done.stdout)
            members = got["members"] if isinstance(got, dict) else got
            statuses = sorted(str(m["status"]) for m in members)
            if statuses == ["Leader", "Reachable", "Reachable"]:
                break
            assert time.perf_counter() < deadline, f"members not settled: {members}"
            time.sleep(0.5)
        # The operator reached the members with its role certificate: membership InSync.
        control_plane.kubectl("rollout", "status", "-n", ns, f"deployment/{RELEASE}-operator", WAIT)
        deadline = time.perf_counter() + 90.0
        while True:
            got = control_plane.kubectl_json("get", "ccluster", "-n", ns, RELEASE)
            conditions = {c["type"]: c for c in got.get("status", {}).get("conditions", [])}
            if conditions.get("Membership", {}).get("reason") == "InSync":
                break
            assert time.perf_counter() < deadline, f"Membership never InSync: {got}"
            time.sleep(0.5)
    finally:
        control_plane.helm("uninstall", RELEASE, "-n", ns, "--wait=false", check=False)
