"""The deploy tests run on the Kubernetes tests' control plane (`control_plane`,
`kube_namespace`: tests/kube/fixtures.py, loaded for the whole suite, so one plane serves
both), plus a node agent that runs the chart's pods as processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.nodeagent import NodeAgent
from tests.deploy.certmanager import CRDS as CERT_MANAGER_CRDS


@pytest.fixture(scope="module")
def node_agent(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgent]:
    """Three Nodes whose pods run as local processes; every process is stopped by PID and
    the Nodes removed at the end of the module."""
    if control_plane.existing:
        pytest.skip("the node agent registers Nodes: only on the tests' own control plane")
    pids: set[int] = set()
    with NodeAgent(control_plane.kubeconfig, tmp_path_factory.mktemp("nodeagent")) as agent:
        yield agent
        pids = {pid for running in agent.pids().values() for pid in running}
    left = [pid for pid in pids if _alive(pid)]
    assert not left, f"the node agent left pod processes running: {left}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cert_manager_crds(control_plane: ControlPlane) -> Iterator[None]:
    """cert-manager's Certificate and Issuer CRDs (tests/deploy/certmanager.py), installed for
    one module and removed after it (left alone on an existing cluster that serves them)."""
    had = control_plane.kubectl("get", "crd", "certificates.cert-manager.io", check=False)
    if had.returncode == 0:
        yield
        return
    control_plane.apply_crds(CERT_MANAGER_CRDS)
    try:
        yield
    finally:
        control_plane.kubectl("delete", "-f", str(CERT_MANAGER_CRDS), "--wait=true", check=False)
