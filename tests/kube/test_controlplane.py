"""The harness itself: the control plane it starts is a real one, with working controllers.

Each test waits on a condition through `kubectl wait` (bounded), never for a fixed time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.testing.controlplane import ControlPlane, ControlPlaneError, start_control_plane

pytestmark = pytest.mark.kube

WAIT = "--timeout=90s"


def _apply(plane: ControlPlane, namespace: str, *objects: dict[str, Any]) -> None:
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
    """A ServiceAccount's own bound token (TokenRequest, signed with the harness' key pair)
    authenticates it, and RBAC lets it do only what a binding grants."""
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", kube_namespace)
    kubeconfig = control_plane.service_account_kubeconfig(kube_namespace, "reader")
    plane = control_plane.as_user(kubeconfig)

    user = plane.kubectl_json("auth", "whoami")["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{kube_namespace}:reader"
    assert f"system:serviceaccounts:{kube_namespace}" in user["groups"]
    denied = plane.kubectl("get", "pods", "-n", kube_namespace, check=False)
    assert denied.returncode == 1
    assert (
        f'User "system:serviceaccount:{kube_namespace}:reader" cannot list resource "pods"'
        in denied.stderr
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "reader-view",
        "-n",
        kube_namespace,
        "--clusterrole=view",
        f"--serviceaccount={kube_namespace}:reader",
    )
    assert plane.kubectl("get", "pods", "-n", kube_namespace).returncode == 0
    # Still nothing outside its namespace.
    assert plane.kubectl("get", "pods", "-n", "kube-system", check=False).returncode == 1


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
    owners = pod["metadata"]["ownerReferences"]
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
    owner: dict[str, Any],
    child: dict[str, Any],
) -> None:
    _apply(control_plane, kube_namespace, owner)
    owner_kind = owner["kind"].lower()
    uid = control_plane.kubectl_json("get", "-n", kube_namespace, owner_kind, "owner")["metadata"][
        "uid"
    ]
    reference = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": "owner"}
    child = {
        **child,
        "metadata": {**child["metadata"], "ownerReferences": [reference | {"uid": uid}]},
    }
    _apply(control_plane, kube_namespace, child)
    child_ref = f"{child['kind'].lower()}/child"
    control_plane.kubectl("get", "-n", kube_namespace, child_ref)  # still there

    # kubectl deletes with background propagation: the owner goes at once, the garbage
    # collector removes the child afterwards.
    control_plane.kubectl("delete", "-n", kube_namespace, owner_kind, "owner", "--wait=true")
    control_plane.kubectl("wait", "-n", kube_namespace, "--for=delete", WAIT, child_ref)


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions `text` (here: a private temporary directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if text.encode() in cmdline:
            found.append(int(proc.name))
    return found


def test_a_failed_start_leaves_no_process_behind(kube_bin_dir: Path, tmp_path: Path) -> None:
    """etcd starts, the apiserver dies at once: the error names it and quotes its log, and
    etcd is stopped before the error reaches the caller."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "etcd").symlink_to(kube_bin_dir / "etcd")
    broken = bin_dir / "kube-apiserver"
    broken.write_text('#!/bin/sh\necho "Error: unknown flag: --bogus" >&2\nexit 1\n')
    broken.chmod(0o755)
    root = tmp_path / "plane"
    with pytest.raises(ControlPlaneError) as failed:
        start_control_plane(bin_dir, root, crd_dir=None, timeout_s=60)
    assert "kube-apiserver exited with 1" in str(failed.value)
    assert "unknown flag: --bogus" in str(failed.value)
    assert (root / "etcd.log").exists()  # etcd did start
    assert _processes_mentioning(str(root)) == []


def test_scheduler_binds_a_pod_to_a_node(control_plane: ControlPlane, kube_namespace: str) -> None:
    """The scheduler places a pod on a registered Node (as the node agent will register one).
    The node never heartbeats, so it is tainted not-ready; the pod tolerates that."""
    if control_plane.existing:
        pytest.skip("registers a Node object: not on a cluster that is not ours")
    node = f"node-{kube_namespace}"
    control_plane.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
                "status": {
                    "capacity": {"cpu": "2", "memory": "4Gi", "pods": "10"},
                    "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"},
                },
            }
        ),
    )
    try:
        _apply(
            control_plane,
            kube_namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p"},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "c", "image": "registry.invalid/c:1"}],
                },
            },
        )
        control_plane.kubectl(
            "wait", "-n", kube_namespace, "--for=condition=PodScheduled", WAIT, "pod/p"
        )
        pod = control_plane.kubectl_json("get", "-n", kube_namespace, "pod/p")
        assert pod["spec"]["nodeName"] == node
    finally:
        control_plane.kubectl("delete", "node", node, "--wait=false", check=False)
