"""The deploy tests run on the Kubernetes tests' control plane: the same fixtures
(`control_plane`, `kube_bin_dir`, `kube_namespace`; see tests/kube/conftest.py), plus a
node agent that runs the chart's pods as processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coordinator.testing.nodeagent import NodeAgent
from tests.kube.conftest import control_plane, kube_bin_dir, kube_namespace
from tests.kube.controlplane import ControlPlane

__all__ = ["control_plane", "kube_bin_dir", "kube_namespace", "node_agent"]


@pytest.fixture(scope="module")
def node_agent(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgent]:
    """Three Nodes whose pods run as local processes; every process is stopped by PID and
    the Nodes removed at the end of the module."""
    if control_plane.existing:
        pytest.skip("the node agent registers Nodes: only on the tests' own control plane")
    with NodeAgent(control_plane.kubeconfig, tmp_path_factory.mktemp("nodeagent")) as agent:
        yield agent
