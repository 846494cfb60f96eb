"""Fixtures of the operator's end-to-end tests (tests/kube/test_operator.py, test_sealed.py):
a real 3-member coordinator with mutual TLS, and the test namespace's objects. The control
plane itself comes from tests/kube/fixtures.py, which the root conftest loads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.process_cluster import ProcessCluster
from tests.kube.operator_harness import KubeObjects


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[ProcessCluster]:
    """Three members with mutual TLS, ready (every /readyz answers), stopped afterwards."""
    cluster = ProcessCluster(tmp_path / "coord", 3)
    try:
        cluster.start_all()
        asyncio.run(cluster.wait_ready())
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def kube(control_plane: ControlPlane, kube_namespace: str) -> Iterator[KubeObjects]:
    """The Kubernetes objects of this test's namespace, through the admin kubeconfig."""
    objects = KubeObjects(control_plane.kubeconfig, kube_namespace)
    try:
        yield objects
    finally:
        objects.close()
