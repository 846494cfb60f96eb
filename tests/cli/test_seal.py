"""`concordctl seal`: offline sealing to a certificate file (YAML and JSON, scopes, overrides,
--merge-into, --raw), bad input (exit 2, nothing written), and, against the in-process
3-member cluster, the certificate fetched from the coordinator, --validate, --re-encrypt after
a key renewal and --fetch-cert. Sealed values are opened with the private keys (the test's
own, or the cluster's from its state machine) to prove what was sealed."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import rsa

from coordinator import sealing
from coordinator.cli.main import cli
from coordinator.client import Client
from coordinator.pki import create_ca
from tests.cli.threaded import ThreadedCluster, concordctl

NOW = dt.datetime.now(dt.UTC)

SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: prod
  labels: {app: db}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"stringData":{"password":"hunter2"}}'
    team: payments
type: kubernetes.io/basic-auth
data:
  username: YWRtaW4=
stringData:
  password: hunter2
"""


@functools.cache
def keypair() -> tuple[rsa.RSAPrivateKey, bytes]:
    kp = sealing.new_sealing_key(NOW)
    return sealing.load_private_key(kp.private_key_der), kp.certificate_pem


@pytest.fixture
def cert(tmp_path: Path) -> Path:
    path = tmp_path / "sealing.pem"
    path.write_bytes(keypair()[1])
    return path


def ctl(*args: str, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["--endpoints", "127.0.0.1:1", "--timeout", "2", *args], input=input
    )


def opened(doc: dict[str, Any], ns: str, name: str, keys: sealing.KeyLookup) -> dict[str, bytes]:
    return {
        k: sealing.unseal(base64.b64decode(v), ns, name, keys).value
        for k, v in doc["spec"]["encryptedData"].items()
    }


def own_keys() -> sealing.KeyLookup:
    key = keypair()[0]
    return {sealing.key_id_of(key.public_key()): key}.get


def test_a_secret_becomes_a_sealed_secret_and_json_stays_json(cert: Path) -> None:
    res = ctl("seal", "--cert", str(cert), input=SECRET)
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.stdout)
    assert (doc["apiVersion"], doc["kind"]) == ("concord.dev/v1alpha1", "SealedSecret")
    assert doc["metadata"]["name"] == "db" and doc["metadata"]["namespace"] == "prod"
    key_id = sealing.key_id_of(keypair()[0].public_key()).hex()
    assert doc["metadata"]["annotations"] == {"concord.dev/sealing-key": key_id}
    assert doc["spec"]["scope"] == "strict"
    assert doc["spec"]["template"] == {
        "type": "kubernetes.io/basic-auth",
        "metadata": {
            "labels": {"app": "db"},
            "annotations": {"team": "payments"},  # never the last-applied plaintext
        },
    }
    assert "hunter2" not in res.stdout and "YWRtaW4" not in res.stdout
    assert opened(doc, "prod", "db", own_keys()) == {"username": b"admin", "password": b"hunter2"}
    with pytest.raises(sealing.ScopeMismatch):
        opened(doc, "prod", "other", own_keys())

    as_json = json.dumps(yaml.safe_load(SECRET))
    res = ctl("seal", "--cert", str(cert), input=as_json)
    assert res.exit_code == 0, res.output
    assert opened(json.loads(res.stdout), "prod", "db", own_keys())["password"] == b"hunter2"
    res = ctl("seal", "--cert", str(cert), "--format", "json", input=SECRET)
    assert json.loads(res.stdout)["kind"] == "SealedSecret"


def test_scopes_and_name_overrides(cert: Path, tmp_path: Path) -> None:
    out = tmp_path / "sealed.yaml"
    res = ctl("seal", "--cert", str(cert), "--scope", "namespace-wide", "--namespace", "dev",
              "-w", str(out), input=SECRET)  # fmt: skip
    assert res.exit_code == 0 and res.stdout == "", res.output
    doc = yaml.safe_load(out.read_text())
    assert doc["spec"]["scope"] == "namespace-wide" and doc["metadata"]["namespace"] == "dev"
    assert opened(doc, "dev", "anything", own_keys())["password"] == b"hunter2"
    with pytest.raises(sealing.ScopeMismatch):
        opened(doc, "prod", "db", own_keys())

    res = ctl("seal", "--cert", str(cert), "--name", "db2", input=SECRET)
    assert opened(yaml.safe_load(res.stdout), "prod", "db2", own_keys())["username"] == b"admin"

    nameless = SECRET.replace("  name: db\n", "").replace("  namespace: prod\n", "")
    res = ctl("seal", "--cert", str(cert), "--scope", "cluster-wide", input=nameless)
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.stdout)
    assert "namespace" not in doc["metadata"]
    assert opened(doc, "any", "where", own_keys())["password"] == b"hunter2"


def test_merge_into_adds_or_replaces_keys_in_place(cert: Path, tmp_path: Path) -> None:
    sealed = tmp_path / "sealed.yaml"
    assert ctl("seal", "--cert", str(cert), "-w", str(sealed), input=SECRET).exit_code == 0
    before = yaml.safe_load(sealed.read_text())["spec"]["encryptedData"]
    one = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: ignored}\n"
        "stringData: {password: new-pass, token: abc}\n"
    )
    res = ctl("seal", "--cert", str(cert), "--merge-into", str(sealed), input=one)
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(sealed.read_text())
    data = doc["spec"]["encryptedData"]
    assert data["username"] == before["username"]  # untouched, byte for byte
    assert opened(doc, "prod", "db", own_keys()) == {
        "username": b"admin",
        "password": b"new-pass",
        "token": b"abc",
    }
    res = ctl("seal", "--cert", str(cert), "--merge-into", str(sealed), "--scope",
              "cluster-wide", input=one)  # fmt: skip
    assert res.exit_code == 2 and "has scope strict" in res.stderr
    assert yaml.safe_load(sealed.read_text()) == doc


def test_files_only_asks_for_no_secret_also_when_merging(cert: Path, tmp_path: Path) -> None:
    res = ctl("seal", "--cert", str(cert), "--files-only", input=SECRET)
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.stdout)["spec"]["createSecret"] is False
    sealed = tmp_path / "sealed.yaml"
    assert ctl("seal", "--cert", str(cert), "-w", str(sealed), input=SECRET).exit_code == 0
    assert "createSecret" not in yaml.safe_load(sealed.read_text())["spec"]  # the default
    res = ctl("seal", "--cert", str(cert), "--files-only", "--merge-into", str(sealed),
              input=SECRET)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(sealed.read_text())["spec"]["createSecret"] is False
    res = ctl("seal", "--cert", str(cert), "--files-only", "--raw", input="x")
    assert res.exit_code == 2 and "--files-only goes with" in res.stderr


def test_raw_seals_one_value(cert: Path, tmp_path: Path) -> None:
    res = ctl("seal", "--cert", str(cert), "--raw", "--namespace", "prod", "--name", "db",
              input=b"s3cret\n")  # fmt: skip
    assert res.exit_code == 0, res.output
    envelope = base64.b64decode(res.stdout.strip())
    assert sealing.unseal(envelope, "prod", "db", own_keys()).value == b"s3cret\n"
    value = tmp_path / "v.bin"
    value.write_bytes(b"\x00\x01binary")
    res = ctl("seal", "--cert", str(cert), "--raw", "--scope", "cluster-wide",
              "--from-file", str(value))  # fmt: skip
    envelope = base64.b64decode(res.stdout.strip())
    assert sealing.unseal(envelope, "", "", own_keys()).value == b"\x00\x01binary"
    res = ctl("seal", "--cert", str(cert), "--raw", "--namespace", "prod", input=b"x")
    assert res.exit_code == 2 and "needs a name" in res.stderr


def _expired(tmp_path: Path) -> Path:
    path = tmp_path / "expired.pem"
    path.write_bytes(
        sealing.sealing_certificate(
            keypair()[0], NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1)
        )
    )
    return path


def _foreign(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(create_ca("someone-else").cert_pem)
    return path


BAD_INPUTS = [
    ("configmap", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", None,
     "not a Secret"),
    ("no namespace", SECRET.replace("  namespace: prod\n", ""), None,
     "scope strict needs a namespace"),
    ("no name", SECRET.replace("  name: db\n", ""), None, "needs a name"),
    ("bad base64", SECRET.replace("YWRtaW4=", "not-base64%"), None,
     "data.username is not valid base64"),
    ("two documents", SECRET + "---\n" + SECRET, None, "2 YAML documents"),
    ("garbage", "{not json", None, "neither valid YAML nor valid JSON"),
    ("a list", "- a\n- b\n", None, "not a Kubernetes object"),
    ("expired certificate", SECRET, _expired, "expired at"),
    ("not Concord's certificate", SECRET, _foreign, "not a Concord sealing certificate"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "make_cert", "message"),
                         [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])  # fmt: skip
def test_bad_input_exits_2_with_a_precise_message_and_writes_nothing(
    cert: Path, tmp_path: Path, text: str, make_cert: Any, message: str
) -> None:
    used = make_cert(tmp_path) if make_cert else cert
    out = tmp_path / "out.yaml"
    res = ctl("seal", "--cert", str(used), "-w", str(out), input=text)
    assert res.exit_code == 2, res.output
    assert message in res.stderr, res.stderr
    assert not out.exists() and res.stdout == ""


# --- against a running cluster ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCluster]:
    c = ThreadedCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.shutdown()


def cluster_keys(cluster: ThreadedCluster) -> sealing.KeyLookup:
    fsm = cluster.call(cluster.cluster.leader()).loop.fsm  # it applied every key it answered
    ring = {k.id: sealing.load_private_key(k.private_key_der) for k in fsm.sealing_keys()}
    return ring.get


def test_seal_with_the_clusters_certificate_validate_renew_and_re_encrypt(
    cluster: ThreadedCluster, tmp_path: Path
) -> None:
    eps = cluster.endpoints
    res = concordctl(eps, "seal", "--fetch-cert")
    assert res.exit_code == 0, res.output
    # The certificate is the cluster's, made after this module was imported: check it now.
    first = sealing.load_sealing_certificate(res.stdout.encode(), dt.datetime.now(dt.UTC))

    res = concordctl(eps, "seal", input=SECRET)  # the certificate comes from the coordinator
    assert res.exit_code == 0, res.output
    sealed = tmp_path / "sealed.yaml"
    sealed.write_text(res.stdout)
    doc = yaml.safe_load(res.stdout)
    assert doc["metadata"]["annotations"]["concord.dev/sealing-key"] == first.key_id_hex
    assert opened(doc, "prod", "db", cluster_keys(cluster))["password"] == b"hunter2"

    res = concordctl(eps, "seal", "--validate", "-f", str(sealed))
    assert res.exit_code == 0, res.output
    assert f"password: ok (key {first.key_id_hex})" in res.stdout

    moved = res_text = sealed.read_text().replace("name: db", "name: web")
    res = concordctl(eps, "seal", "--validate", input=moved)
    assert res.exit_code == 1
    assert "password: SCOPE_MISMATCH" in res.stdout and "would not unseal as prod/web" in res.stderr

    async def renew() -> str:
        async with Client(eps) as client:
            return (await client.renew_sealing_key()).key_id

    second = cluster.call(renew())
    assert second != first.key_id_hex
    res = concordctl(eps, "seal", "--re-encrypt", "-f", str(sealed))
    assert res.exit_code == 0, res.output
    renewed = yaml.safe_load(res.stdout)
    assert renewed["metadata"]["annotations"]["concord.dev/sealing-key"] == second
    for value in renewed["spec"]["encryptedData"].values():
        assert sealing.parse(base64.b64decode(value)).key_id.hex() == second
    assert opened(renewed, "prod", "db", cluster_keys(cluster)) == {
        "username": b"admin",
        "password": b"hunter2",
    }
    assert renewed["spec"]["template"] == doc["spec"]["template"]

    res = concordctl(eps, "seal", "--re-encrypt", input=res_text)
    assert res.exit_code == 1 and "SCOPE_MISMATCH" in res.stderr and res.stdout == ""
    res = concordctl(eps, "seal", "--validate", input=SECRET)
    assert res.exit_code == 2 and "not a SealedSecret" in res.stderr
