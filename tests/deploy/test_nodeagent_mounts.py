"""The node agent's mount namespace: a pod's volume mounted over a parent directory (an
emptyDir at /tmp) hides neither the sources of the pod's other volumes nor the checkout and
Python environment its program runs from (there is no image here: they come from the host)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coordinator.testing.nodeagent._container import (
    HOST_PATHS,
    Mount,
    _kept_visible,
    namespace_wrapper,
)

pytestmark = pytest.mark.process


def _run_in_pod(
    mounts: list[Mount], tmp_path: Path, *argv: str
) -> subprocess.CompletedProcess[str]:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    wrapper = namespace_wrapper(mounts, hosts, resolv, "mounts-test", "/")
    return subprocess.run(
        [*wrapper, *argv], capture_output=True, text=True, timeout=30, check=False
    )


def test_a_volume_over_a_parent_hides_no_other_volumes_source(tmp_path: Path) -> None:
    source = tmp_path / "config"
    source.mkdir()
    (source / "app.conf").write_text("from the config volume\n")
    empty = tmp_path.parent / f"{tmp_path.name}-empty"
    empty.mkdir()
    # The emptyDir goes over tmp_path itself, which holds the other volume's source.
    etc = tmp_path.parent / f"{tmp_path.name}-etc"
    etc.mkdir()
    mounts = [Mount(empty, str(tmp_path), read_only=False), Mount(source, "/etc/app", True)]
    done = _run_in_pod(mounts, etc, "cat", "/etc/app/app.conf")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the config volume\n"


def test_the_checkout_and_the_python_environment_stay_visible_under_a_volume() -> None:
    checkout = HOST_PATHS[0]
    parent = str(Path(checkout).parent)
    kept = _kept_visible([Mount(Path("/nonexistent"), parent, read_only=False)])
    assert Mount(Path(checkout), checkout, read_only=True) in kept
    assert _kept_visible([Mount(Path("/nonexistent"), "/srv/data", read_only=False)]) == []


def test_a_pod_with_an_emptydir_over_the_checkouts_parent_still_imports_it(tmp_path: Path) -> None:
    checkout = Path(HOST_PATHS[0])
    empty = tmp_path / "empty"
    empty.mkdir()
    etc = tmp_path / "etc"
    etc.mkdir()
    mounts = [Mount(empty, str(checkout.parent), read_only=False)]
    done = _run_in_pod(mounts, etc, "ls", str(checkout / "coordinator" / "__init__.py"))
    assert done.returncode == 0, done.stderr
