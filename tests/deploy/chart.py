"""What the deploy tests share: the chart's path, rendering, and the TLS Secret the chart's
members expect, made as a user makes it (NOTES.txt): `concordctl cluster init`, then one
Secret with the CA certificate, the cluster id, each member's certificate and key, and the
client's. The CA key stays out of the cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from coordinator.testing.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "concord"
EXAMPLES = REPO / "examples"
CONCORDCTL = str(Path(sys.executable).parent / "concordctl")


def member_host(release: str, namespace: str, ordinal: int) -> str:
    """Member ORDINAL's DNS name, as the chart's concord.memberHost names it (the release
    name is the full name when it contains "concord")."""
    return f"{release}-{ordinal}.{release}-peers.{namespace}.svc.cluster.local"


def make_tls_secret(
    plane: ControlPlane, namespace: str, release: str, members: int, workdir: Path
) -> Path:
    """Creates Secret RELEASE-tls in `namespace`; returns the client's --tls-dir."""
    cluster_id = f"{namespace}-{release}"
    dns = [a for i in range(members) for a in ("--dns", member_host(release, namespace, i))]
    out = workdir / "tls"
    subprocess.run(
        [
            CONCORDCTL,
            "cluster",
            "init",
            "--dir",
            str(out),
            "--members",
            str(members),
            "--cluster-id",
            cluster_id,
            *dns,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    files = {
        "ca.pem": out / "ca.pem",
        "client.pem": out / "client" / "client.pem",
        "client-key.pem": out / "client" / "client-key.pem",
        "operator.pem": out / "operator" / "client.pem",
        "operator-key.pem": out / "operator" / "client-key.pem",
    }
    for n in range(1, members + 1):
        files[f"member-{n}.pem"] = out / f"member-{n}" / "tls" / "member.pem"
        files[f"member-{n}-key.pem"] = out / f"member-{n}" / "tls" / "member-key.pem"
    plane.kubectl(
        "create",
        "secret",
        "generic",
        f"{release}-tls",
        "-n",
        namespace,
        f"--from-literal=cluster-id={cluster_id}",
        *(f"--from-file={k}={v}" for k, v in files.items()),
    )
    return out / "client"


def render(plane: ControlPlane, namespace: str, *set_values: str) -> list[dict[str, Any]]:
    """`helm template` validated against the live server (PDBs as policy/v1), as objects."""
    args = ["template", "concord", str(CHART), "-n", namespace, "--validate"]
    for s in set_values:
        args += ["--set", s]
    done = plane.helm(*args)
    return [d for d in yaml.safe_load_all(done.stdout) if d]
