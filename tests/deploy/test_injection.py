"""Sidecar injection end to end on the real API server: `helm install` (members and the
operator run by the node agent), the operator writes its CA into the chart's
MutatingWebhookConfiguration, and the API server calls the webhook through the operator's
Service (`--enable-aggregator-routing`, the node agent's FQDN EndpointSlices).

Pods are created for real in another namespace and read back as stored. They are pinned to
a node that does not exist, so they stay Pending: what is tested is the admission, not the
sidecar's run (its --token-file and --secrets-dir come with other work)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.nodeagent import NodeAgent
from tests.deploy.chart import CHART, member_host

pytestmark = [pytest.mark.kube, pytest.mark.process]

RELEASE = "concord-i"  # not "concord": its cluster-scoped objects never meet another test's
INJECTOR = f"{RELEASE}-sidecar-injector"
WAIT = "--timeout=180s"


@dataclass
class Injecting:
    namespace: str
    """The release's."""
    ready_s: float


def _wait_for(what: str, check: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.perf_counter() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.perf_counter() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _ca_bundle(plane: ControlPlane) -> str:
    hook = plane.kubectl_json("get", "mutatingwebhookconfiguration", INJECTOR)["webhooks"][0]
    return str(hook["clientConfig"].get("caBundle", ""))


def _ready_endpoints(plane: ControlPlane, namespace: str) -> list[str]:
    slices = plane.kubectl_json(
        "get", "endpointslices", "-n", namespace,
        "-l", f"kubernetes.io/service-name={RELEASE}-operator",
    )["items"]  # fmt: skip
    return [
        e["addresses"][0]
        for s in slices
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
    ]


@pytest.fixture(scope="module")
def injecting(control_plane: ControlPlane, node_agent: NodeAgent) -> Iterator[Injecting]:
    namespace = f"i-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    try:
        started = time.perf_counter()
        control_plane.helm("install", RELEASE, str(CHART), "-n", namespace)
        control_plane.kubectl(
            "rollout", "status", "-n", namespace, f"deployment/{RELEASE}-operator", WAIT
        )
        _wait_for("the caBundle", lambda: _ca_bundle(control_plane))
        _wait_for("a ready webhook endpoint", lambda: _ready_endpoints(control_plane, namespace))
        elapsed = time.perf_counter() - started
        print(f"\nhelm install -> webhook serving: {elapsed:.1f} s")
        yield Injecting(namespace, elapsed)
    finally:
        control_plane.helm("uninstall", RELEASE, "-n", namespace, "--wait=false", check=False)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _pod(namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            # Never scheduled: the test is about what the API server stores.
            "nodeSelector": {"concord.dev/test": "nowhere"},
            "containers": [
                {"name": "app", "image": "example.invalid/app:1", "command": ["sleep", "1"]},
                {"name": "second", "image": "example.invalid/app:1"},
            ],
        },
    }


def _create(plane: ControlPlane, pod: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Creates the pod; returns it as stored and kubectl's stderr (admission warnings)."""
    done = plane.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(pod))
    stored: dict[str, Any] = json.loads(done.stdout)
    return stored, done.stderr


def test_an_annotated_pod_is_stored_with_the_native_sidecar(
    control_plane: ControlPlane, injecting: Injecting, kube_namespace: str
) -> None:
    ns = kube_namespace
    pod, _ = _create(
        control_plane,
        _pod(ns, "app", {"concord.dev/inject": "true", "concord.dev/secrets": "db,api-key"}),
    )
    spec = pod["spec"]
    (side,) = spec["initContainers"]
    assert side["name"] == "concord-sidecar" and side["restartPolicy"] == "Always"
    assert side["image"] == "ghcr.io/concord-dev/concord-sidecar:0.1.0"
    # Every member's workload port (workload identity is on by default with injection).
    endpoint = ",".join(f"{member_host(RELEASE, injecting.namespace, i)}:7073" for i in range(3))
    assert side["args"] == [
        "--listen=127.0.0.1:7490",
        "--probe-listen=$(POD_IP):7491",
        f"--endpoints={endpoint}",
        "--tls-dir=/etc/concord/tls",
        "--token-file",
        "/var/run/secrets/concord/token",
        "--secrets-dir",
        "/run/secrets",
    ]
    assert {"name": "CONCORD_SECRETS", "value": "db,api-key"} in side["env"]
    assert side["startupProbe"]["httpGet"]["path"] == "/startupz"
    volumes = {v["name"]: v for v in spec["volumes"]}
    (token,) = volumes["concord-token"]["projected"]["sources"]
    assert token["serviceAccountToken"] == {
        "audience": "concord",
        "expirationSeconds": 3600,
        "path": "token",
    }
    assert volumes["concord-secrets"]["emptyDir"] == {"medium": "Memory"}
    assert volumes["concord-ca"]["configMap"]["name"] == "concord-ca"
    for c in spec["containers"]:
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["CONCORD_SIDECAR_URL"] == "http://127.0.0.1:7490"
        mounts = {m["mountPath"]: m for m in c["volumeMounts"] if m["name"] == "concord-secrets"}
        assert mounts["/run/secrets"]["readOnly"] is True
    assert pod["metadata"]["annotations"]["concord.dev/injected"] == side["image"]
    # The CA the sidecar mounts, published in the pod's namespace: the release's CA.
    published = control_plane.kubectl_json("get", "configmap", "-n", ns, "concord-ca")
    tls = control_plane.kubectl_json("get", "secret", "-n", injecting.namespace, f"{RELEASE}-tls")
    assert published["data"]["ca.pem"] == base64.b64decode(tls["data"]["ca.pem"]).decode()


def test_pods_not_asking_or_opting_out_are_unchanged(
    control_plane: ControlPlane, injecting: Injecting, kube_namespace: str
) -> None:
    for name, marks in [("plain", {}), ("opted-out", {"concord.dev/inject": "false"})]:
        pod, warnings = _create(control_plane, _pod(kube_namespace, name, marks))
        assert "initContainers" not in pod["spec"], name
        assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "second"]
        assert "concord.dev/injected" not in (pod["metadata"].get("annotations") or {})
        assert "concord-sidecar" not in warnings


def test_a_pod_it_cannot_inject_is_admitted_unchanged_with_an_event(
    control_plane: ControlPlane, injecting: Injecting, kube_namespace: str
) -> None:
    ns = kube_namespace
    bad = _pod(ns, "bad", {"concord.dev/inject": "true", "concord.dev/secrets": "Not_A_Name"})
    pod, warnings = _create(control_plane, bad)
    assert "initContainers" not in pod["spec"]
    assert "concord-sidecar not injected" in warnings and "'Not_A_Name'" in warnings

    def event() -> list[dict[str, Any]]:
        items = control_plane.kubectl_json(
            "get", "events", "-n", ns, "--field-selector", "involvedObject.name=bad"
        )["items"]
        return [e for e in items if e["reason"] == "ConcordInjectionSkipped"]

    (found,) = _wait_for("the Event", event, 20)
    assert found["type"] == "Warning" and "'Not_A_Name'" in found["message"]


def _scale_operator_to_zero(plane: ControlPlane, namespace: str) -> None:
    plane.kubectl("scale", "-n", namespace, f"deployment/{RELEASE}-operator", "--replicas=0")
    _wait_for("no ready endpoint", lambda: not _ready_endpoints(plane, namespace))
    # And no operator process left: the API server may still hold the old endpoint for a
    # moment, and a terminating operator would still answer it (seen on a loaded machine).
    _wait_for(
        "the operator's pod gone",
        lambda: (
            not plane.kubectl_json(
                "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=operator"
            )["items"]
        ),
    )


def test_with_the_webhook_down_pods_are_admitted_as_the_failure_policy_says(
    control_plane: ControlPlane, injecting: Injecting, kube_namespace: str
) -> None:
    """Ignore (the default): no endpoint to call, an annotated pod is admitted as is. Then
    `helm upgrade --set injection.failurePolicy=Fail` keeps the caBundle the operator wrote
    (no template sets it), and with the webhook down an annotated pod is refused while an
    unannotated one is admitted without a call (matchConditions). Last in the module."""
    ns = kube_namespace
    _scale_operator_to_zero(control_plane, injecting.namespace)
    started = time.perf_counter()
    pod, _ = _create(control_plane, _pod(ns, "down", {"concord.dev/inject": "true"}))
    took = time.perf_counter() - started
    assert "initContainers" not in pod["spec"]
    print(f"\nannotated pod admitted with the webhook down in {took:.2f} s")

    ca_bundle = _ca_bundle(control_plane)
    control_plane.helm(
        "upgrade", RELEASE, str(CHART), "-n", injecting.namespace, "--reuse-values",
        "--set", "injection.failurePolicy=Fail",
    )  # fmt: skip
    # Read at once: an operator started by the upgrade would write a CA of its own.
    assert _ca_bundle(control_plane) == ca_bundle
    _scale_operator_to_zero(control_plane, injecting.namespace)
    refused = control_plane.kubectl(
        "create", "-f", "-", input=json.dumps(_pod(ns, "refused", {"concord.dev/inject": "true"})),
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "sidecar.inject.concord.dev" in refused.stderr, refused.stderr
    plain, _ = _create(control_plane, _pod(ns, "plain-while-down", {}))
    assert "initContainers" not in plain["spec"]
