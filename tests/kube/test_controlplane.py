"""The harness itself: the control plane it starts is a real one, with working controllers.

Each test waits on a condition through `kubectl wait` (bounded), never for a fixed time.
"""

from __future__ import annotations

import json

import pytest

from tests.kube.controlplane import ControlPlane

pytestmark = pytest.mark.kube

WAIT = "--timeout=90s"


def _apply(plane: ControlPlane, namespace: str, *objects: dict[str, object]) -> None:
    plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )


def test_server_is_the_pinned_release(control_plane: ControlPlane) -> None:
    if control_plane.existing:
        pytest.skip("an existing cluster runs whatever release it runs")
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.34.12"
    assert version["clientVersion"]["gitVersion"] == "v1.34.12"


def test_every_component_runs_and_reports_its_memory(control_plane: ControlPlane) -> None:
    if control_plane.existing:
        pytest.skip("an existing cluster's processes are not ours")
    control_plane.check_running()
    rss = control_plane.rss_mib()
    assert set(rss) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
    assert all(v is not None and v > 0 for v in rss.values()), rss
    # Figures for the record (`pytest -s` shows them); never asserted: they are measurements.
    print(f"control plane ready in {control_plane.ready_s:.1f} s; RSS MiB {rss}")


def test_rbac_is_enforced(control_plane: ControlPlane, kube_namespace: str) -> None:
    """A service account no role binds may do nothing, while the admin may do everything."""
    sa = f"system:serviceaccount:{kube_namespace}:default"
    denied = control_plane.kubectl(
        "auth", "can-i", "list", "pods", "-n", kube_namespace, f"--as={sa}", check=False
    )
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    allowed = control_plane.kubectl("auth", "can-i", "*", "*", "--all-namespaces")
    assert allowed.stdout.strip() == "yes"


def test_statefulset_controller_creates_pods(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    """The StatefulSet controller (running under its own service account) makes the pods,
    owned by the StatefulSet; without a node they stay Pending, which is all we ask here."""
    labels = {"app": "web"}
    _apply(
        control_plane,
        kube_namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "web"},
            "spec": {
                "serviceName": "web",
                "replicas": 2,
                # Parallel: OrderedReady would wait for web-0 to run before making web-1.
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
                },
            },
        },
    )
    # status.replicas counts the pods the controller made. (`kubectl wait --for=create` on a
    # pod name fails at once with NotFound when the pod is not there yet.)
    control_plane.kubectl(
        "wait", "-n", kube_namespace, "--for=jsonpath={.status.replicas}=2", WAIT, "sts/web"
    )
    pod = control_plane.kubectl_json("get", "-n", kube_namespace, "pod", "web-1")
    metadata = pod["metadata"]
    assert isinstance(metadata, dict)
    owners = metadata["ownerReferences"]
    assert [(o["kind"], o["name"], o["controller"]) for o in owners] == [
        ("StatefulSet", "web", True)
    ]


@pytest.mark.parametrize(
    ("owner", "child"),
    [
        (
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "child"}},
        ),
        # A custom kind owning what the operator will create: the garbage collector must know
        # concord.dev kinds from its start (the harness applies crds/ before it starts).
        (
            {
                "apiVersion": "concord.dev/v1alpha1",
                "kind": "SealedSecret",
                "metadata": {"name": "owner"},
                "spec": {"encryptedData": {"password": "AgBy3i4OJSWK"}},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "child"},
                "stringData": {"password": "unsealed"},
            },
        ),
    ],
    ids=["configmap-owns-configmap", "sealedsecret-owns-secret"],
)
def test_garbage_collector_deletes_what_an_owner_owned(
    control_plane: ControlPlane,
    kube_namespace: str,
    owner: dict[str, object],
    child: dict[str, object],
) -> None:
    _apply(control_plane, kube_namespace, owner)
    owner_kind = str(owner["kind"]).lower()
    got = control_plane.kubectl_json("get", "-n", kube_namespace, owner_kind, "owner")
    metadata = got["metadata"]
    assert isinstance(metadata, dict)
    child_meta = child["metadata"]
    assert isinstance(child_meta, dict)
    child_meta["ownerReferences"] = [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": "owner",
            "uid": metadata["uid"],
        }
    ]
    _apply(control_plane, kube_namespace, child)
    child_ref = f"{str(child['kind']).lower()}/child"
    control_plane.kubectl("get", "-n", kube_namespace, child_ref)  # still there

    # kubectl deletes with background propagation: the owner goes at once, the garbage
    # collector removes the child afterwards.
    control_plane.kubectl("delete", "-n", kube_namespace, owner_kind, "owner", "--wait=true")
    control_plane.kubectl("wait", "-n", kube_namespace, "--for=delete", WAIT, child_ref)
