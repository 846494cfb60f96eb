"""The deploy tests run on a control plane like the Kubernetes tests': the same fixtures
(`control_plane`, `kube_namespace`; see tests/kube/conftest.py), plus a node agent that
runs the chart's pods as processes.

pytest scopes a conftest's fixtures to its directory, so a session that runs tests/kube and
tests/deploy together starts two control planes (~10 s and ~0.5 GB more); one shared plane
needs the fixtures moved into a plugin the root conftest loads."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from coordinator.testing.nodeagent import NodeAgent

# The Kubernetes tests' fixtures under the same names (control_plane asks for kube_bin_dir).
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
