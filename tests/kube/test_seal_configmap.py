"""`concordctl seal --controller-namespace/--controller-name/--kubeconfig` against the real
control plane: the certificate ConfigMap (made with the operator's own builder,
`manifests.certificate_configmap`, around a real sealing key) read through the Kubernetes API
with the standard library, with the admin client certificate and with a service account's
bearer token (without RBAC to read ConfigMaps: 403 and what to grant; with it: sealed), a
missing ConfigMap (404, where the operator publishes it), and a ConfigMap whose certificate
fails the checks (exit 2, nothing written). The sealed values are opened with the key's
private half to prove whose certificate was used."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import rsa

from concord_operator.manifests import CERTIFICATE_CONFIGMAP, certificate_configmap
from coordinator import sealing
from coordinator.cli.main import cli
from coordinator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.kube

NOW = dt.datetime.now(dt.UTC)
SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: shop}\n"
SECRET += "stringData: {password: s3cret}\n"


@functools.cache
def key() -> tuple[rsa.RSAPrivateKey, sealing.SealingKeyPair]:
    kp = sealing.new_sealing_key(NOW)
    return sealing.load_private_key(kp.private_key_der), kp


def publish(plane: ControlPlane, namespace: str, name: str, pem: bytes, key_id: str) -> None:
    body = certificate_configmap(namespace, name, key_id, NOW.isoformat(), pem.decode())
    plane.kubectl("apply", "-f", "-", input=json.dumps(body))


def ctl(*args: str, input: str | None = SECRET) -> Result:
    return CliRunner().invoke(
        cli, ["--endpoints", "127.0.0.1:1", "--timeout", "5", "seal", *args], input=input
    )


def sealed_to_the_key(res: Result) -> None:
    assert res.exit_code == 0, res.output
    doc: dict[str, Any] = yaml.safe_load(res.stdout)
    private, kp = key()
    assert doc["metadata"]["annotations"]["concord.dev/sealing-key"] == kp.key_id.hex()
    envelope = base64.b64decode(doc["spec"]["encryptedData"]["password"])
    assert sealing.parse(envelope).key_id == kp.key_id
    keys = {kp.key_id: private}.get
    assert sealing.unseal(envelope, "shop", "db", keys).value == b"s3cret"


def test_seal_with_the_certificate_the_operator_publishes(
    control_plane: ControlPlane,
    kube_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kp = key()[1]
    publish(control_plane, kube_namespace, CERTIFICATE_CONFIGMAP, kp.certificate_pem,
            kp.key_id.hex())  # fmt: skip
    admin = str(control_plane.kubeconfig)
    sealed_to_the_key(ctl("--controller-namespace", kube_namespace, "--kubeconfig", admin))
    res = ctl("--fetch-cert", "--controller-namespace", kube_namespace, "--kubeconfig", admin)
    assert res.exit_code == 0 and res.stdout.encode() == kp.certificate_pem, res.output

    # KUBECONFIG as kubectl reads it: a list, the files that exist merged.
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent'}:{admin}")
    sealed_to_the_key(ctl("--controller-namespace", kube_namespace))

    # A missing ConfigMap: 404, and where the operator publishes it.
    out = tmp_path / "out.yaml"
    res = ctl("--controller-namespace", kube_namespace, "--controller-name", "other",
              "-w", str(out))  # fmt: skip
    assert res.exit_code == 1, res.output
    assert f"no ConfigMap {kube_namespace}/other (404" in res.stderr
    assert (
        "publishes its sealing certificate in ConfigMap concord-sealing-certificate in its "
        "own namespace" in res.stderr
    ), res.stderr
    assert "--controller-namespace" in res.stderr
    assert not out.exists()


def test_a_configmap_certificate_gets_every_check(
    control_plane: ControlPlane, kube_namespace: str, tmp_path: Path
) -> None:
    private, kp = key()
    admin = str(control_plane.kubeconfig)
    expired = sealing.sealing_certificate(
        private, NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1)
    )
    publish(control_plane, kube_namespace, "expired", expired, kp.key_id.hex())
    publish(control_plane, kube_namespace, "edited", kp.certificate_pem, "00" * 16)
    control_plane.kubectl("create", "configmap", "empty", "-n", kube_namespace,
                          "--from-literal=keyId=x")  # fmt: skip
    out = tmp_path / "out.yaml"
    for name, message in (
        ("expired", "data.certificate.pem: the sealing certificate of key"),
        ("edited", f"data.keyId {'00' * 16} is not its certificate's key"),
        ("empty", "has no data.certificate.pem"),
    ):
        res = ctl("--kubeconfig", admin, "--controller-namespace", kube_namespace,
                  "--controller-name", name, "-w", str(out))  # fmt: skip
        assert res.exit_code == 2, (name, res.output)
        assert f"ConfigMap {kube_namespace}/{name}" in res.stderr and message in res.stderr
        assert not out.exists() and res.stdout == ""


def test_a_token_kubeconfig_needs_rbac_to_read_the_configmap(
    control_plane: ControlPlane, kube_namespace: str, tmp_path: Path
) -> None:
    kp = key()[1]
    publish(control_plane, kube_namespace, CERTIFICATE_CONFIGMAP, kp.certificate_pem,
            kp.key_id.hex())  # fmt: skip
    control_plane.kubectl("create", "serviceaccount", "sealer", "-n", kube_namespace)
    token_config = control_plane.service_account_kubeconfig(kube_namespace, "sealer")
    assert "token" in token_config.read_text()
    out = tmp_path / "out.yaml"
    # The context's namespace is the default: --kubeconfig alone reads the ConfigMap there.
    res = ctl("--kubeconfig", str(token_config), "-w", str(out))
    assert res.exit_code == 1, res.output
    assert "the Kubernetes API refused ConfigMap" in res.stderr and "(403 " in res.stderr
    assert f"system:serviceaccount:{kube_namespace}:sealer" in res.stderr
    assert f"needs `get` on configmaps in namespace {kube_namespace}" in res.stderr
    assert not out.exists()

    control_plane.kubectl("create", "role", "read-sealing-cert", "-n", kube_namespace,
                          "--verb=get", "--resource=configmaps",
                          f"--resource-name={CERTIFICATE_CONFIGMAP}")  # fmt: skip
    control_plane.kubectl("create", "rolebinding", "sealer", "-n", kube_namespace,
                          "--role=read-sealing-cert",
                          f"--serviceaccount={kube_namespace}:sealer")  # fmt: skip
    deadline = time.monotonic() + 30  # the authorizer's informer sees the binding soon
    while (res := ctl("--kubeconfig", str(token_config))).exit_code != 0:
        assert "(403 " in res.stderr, res.output
        assert time.monotonic() < deadline, "the RoleBinding never took effect"
        time.sleep(0.2)
    sealed_to_the_key(res)
