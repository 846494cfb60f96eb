"""Fixtures for the Kubernetes tests (mark them `kube`), loaded for the whole suite by
tests/conftest.py (`pytest_plugins`), so tests/kube and tests/deploy share one control plane
per session (a conftest's fixtures would be scoped to its own directory: two planes).

- `control_plane` (session): a `ControlPlane` with the CRDs of crds/ applied. By default the
  project's own etcd + kube-apiserver + kube-controller-manager + kube-scheduler, started once
  per test session from the pinned binaries and stopped at its end; with
  CONCORD_KUBE_EXISTING=1 the cluster KUBECONFIG points at (kind, a real one) instead.
  Under pytest-xdist (`make test PYTEST_WORKERS=2`) every worker is a session: each that runs a
  Kubernetes test starts a plane of its own, on free ports.
- `kube_bin_dir` (session): the pinned binaries, for a test that starts processes itself.
- `kube_namespace` (per test): a fresh namespace, deleted afterwards, so tests never see each
  other's objects (and can run against a shared existing cluster).

Without the binaries the tests are skipped with how to get them (`make kube-tools`), except
under CI=true, where a missing control plane is a failure: CI must run every Kubernetes test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.testing.controlplane import (
    ControlPlane,
    existing_cluster,
    locate_binaries,
    start_control_plane,
)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.fixture(scope="session")
def kube_bin_dir() -> Path:
    """The pinned binaries' directory; skips (fails under CI=true) when they are missing."""
    bin_dir, why = locate_binaries()
    if bin_dir is None:
        message = f"no Kubernetes control plane binaries: {why}"
        if _truthy("CI"):
            pytest.fail(message + " (CI=true: the Kubernetes tests must run here)")
        pytest.skip(message)
    return bin_dir


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ControlPlane]:
    """The Kubernetes API the tests run against, with crds/ applied (see the module doc)."""
    root = tmp_path_factory.mktemp("kube")
    if _truthy("CONCORD_KUBE_EXISTING"):
        kubeconfig = os.environ.get("KUBECONFIG", "")
        if not kubeconfig:
            pytest.fail("CONCORD_KUBE_EXISTING=1 needs KUBECONFIG set to the cluster's config")
        pinned, _ = locate_binaries()  # the pinned kubectl if built, else the one on PATH
        plane = existing_cluster(Path(kubeconfig.split(os.pathsep)[0]), pinned, root)
        plane.apply_crds()
        yield plane
        return
    # Asked for here, not as a parameter, so an existing cluster needs no binaries.
    bin_dir: Path = request.getfixturevalue("kube_bin_dir")
    plane = start_control_plane(bin_dir, root)
    try:
        yield plane
    finally:
        plane.close()


@pytest.fixture
def kube_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace of this test's own; deleted (without waiting for it to go) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
