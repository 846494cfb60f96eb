"""SealedSecrets end to end: `concordctl seal` as a subprocess against a real 3-member
coordinator cluster (mutual TLS), `kubectl apply` against the real control plane (its
controller-manager's garbage collector included), and `python -m concord_operator` as a real
process with the operator identity (`operator/` of `concordctl cluster init`).

Every scenario ends by checking that nothing secret leaked: no plaintext value and no private
key in the operator's log, and the certificate ConfigMap, as the Kubernetes API shows it,
holds the public certificate and nothing else.

Timing-dependent (processes, an API server): every wait is a bounded poll of a condition;
the unseal-to-Secret latency is printed (`pytest -s`), never asserted.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from coordinator import sealing
from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.process_cluster import ProcessCluster
from coordinator.testing.procs import metric
from tests.kube.operator_harness import (
    REPO,
    KubeObjects,
    OperatorProcess,
    client_tls_dir,
    condition,
    eventually,
    now,
    plain_client_tls_dir,
)

pytestmark = [pytest.mark.kube, pytest.mark.process]

PLURAL = "sealedsecrets"
CONFIGMAP = "concord-sealing-certificate"
WAIT_S = 30


@pytest.fixture
def operator(
    tmp_path: Path, coord: ProcessCluster, control_plane: ControlPlane, kube_namespace: str
) -> Iterator[OperatorProcess]:
    """The operator with the operator identity, publishing the certificate in its namespace
    and checking the key id twice a second (so a renewal shows within the test's patience)."""
    op = OperatorProcess(
        tmp_path,
        "op-1",
        coord.endpoints(),
        client_tls_dir(coord),
        control_plane.kubeconfig,
        kube_namespace,
        "--sealing-certificate-interval-seconds",
        "0.5",
    ).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator ---\n{op.log()[-6000:]}")  # shown by pytest only on failure


def concordctl(coord: ProcessCluster, *args: str, stdin: str = "") -> str:
    """`concordctl` as a subprocess with a plain client's identity (not the operator's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli.main",
            "--endpoints",
            ",".join(coord.endpoints()),
            "--tls-dir",
            str(plain_client_tls_dir(coord)),
            *args,
        ],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"concordctl {' '.join(args)}: {done.stderr}"
    return done.stdout


def secret_manifest(
    ns: str,
    name: str,
    values: dict[str, str],
    secret_type: str = "Opaque",
    **meta: Any,
) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, **meta},
            "type": secret_type,
            "stringData": values,
        }
    )


def apply(control_plane: ControlPlane, manifest: str) -> None:
    control_plane.kubectl("apply", "-f", "-", input=manifest)


def read_secret(core: kubernetes.client.CoreV1Api, ns: str, name: str) -> Any | None:
    try:
        return core.read_namespaced_secret(name, ns)
    except kubernetes.client.exceptions.ApiException as err:
        if err.status == 404:
            return None
        raise


def values_of(secret: Any) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def ready(kube: KubeObjects, name: str) -> dict[str, Any]:
    return condition(kube.status(PLURAL, name), "Ready")


def reason_is(kube: KubeObjects, name: str, reason: str) -> Callable[[], bool]:
    return lambda: ready(kube, name).get("reason") == reason


def assert_nothing_leaks(
    op: OperatorProcess, control_plane: ControlPlane, ns: str, plaintexts: list[str]
) -> dict[str, str]:
    """No plaintext nor private key in the operator's log; the ConfigMap as the API shows it
    holds a Concord sealing certificate, its key id and creation time, and nothing else.
    Returns the ConfigMap's data."""
    log = op.log()
    assert "published sealing certificate" in log  # the log is the operator's, and it ran
    for value in plaintexts:
        assert value not in log
        assert base64.b64encode(value.encode()).decode() not in log
    assert "PRIVATE KEY" not in log
    shown = control_plane.kubectl_json("get", "configmap", CONFIGMAP, "-n", ns)
    text = json.dumps(shown)
    assert "PRIVATE KEY" not in text
    for value in plaintexts:
        assert value not in text
    data = shown["data"]
    assert sorted(data) == ["certificate.pem", "createdAt", "keyId"]
    cert = sealing.load_sealing_certificate(
        data["certificate.pem"].encode(), dt.datetime.now(dt.UTC)
    )
    assert cert.key_id_hex == data["keyId"]
    return dict(data)


def published(control_plane: ControlPlane, ns: str) -> str:
    done = control_plane.kubectl(
        "get", "configmap", CONFIGMAP, "-n", ns, "-o", "jsonpath={.data.keyId}", check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


# --- the whole life of one SealedSecret --------------------------------------------------------


def test_sealed_with_the_cli_applied_unsealed_updated_and_garbage_collected(
    coord: ProcessCluster,
    kube: KubeObjects,
    operator: OperatorProcess,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    ns = kube.namespace
    core = kubernetes.client.CoreV1Api(kube.api_client)

    async def scenario() -> None:
        # The certificate is published first (the operator's first poll makes the key).
        await eventually(lambda: bool(published(control_plane, ns)), WAIT_S, "ConfigMap")
        async with coord.client() as client:
            current = (await client.sealing_certificate()).current
        assert published(control_plane, ns) == current.key_id

        plain = secret_manifest(
            ns,
            "db",
            {"username": "admin", "password": "hunter2-first"},
            "kubernetes.io/basic-auth",
            labels={"app": "db"},
            annotations={"team": "payments"},
        )
        sealed = concordctl(coord, "seal", stdin=plain)  # the cluster's certificate, fetched
        assert "hunter2" not in sealed
        doc = yaml.safe_load(sealed)
        assert doc["spec"]["template"]["metadata"] == {
            "labels": {"app": "db"},
            "annotations": {"team": "payments"},
        }
        applied_at = now()
        apply(control_plane, sealed)
        await eventually(
            lambda: read_secret(core, ns, "db") is not None, WAIT_S, "the Secret", operator.log
        )
        print(f"kubectl apply to Secret: {(now() - applied_at) * 1000:.0f} ms")
        secret = read_secret(core, ns, "db")
        assert values_of(secret) == {"username": "admin", "password": "hunter2-first"}
        assert secret.type == "kubernetes.io/basic-auth"
        assert secret.metadata.labels == {"app": "db"}
        assert secret.metadata.annotations == {"team": "payments"}
        owner = kube.get(PLURAL, "db")
        assert owner is not None
        [ref] = secret.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller) == (
            "SealedSecret",
            "db",
            owner["metadata"]["uid"],
            True,
        )
        await eventually(reason_is(kube, "db", "Unsealed"), WAIT_S, "Ready", operator.log)
        st = kube.status(PLURAL, "db")
        assert st["phase"] == "Ready"
        assert st["keyIds"] == [current.key_id]
        assert st["observedGeneration"] == owner["metadata"]["generation"]

        # Changed: a new password sealed offline with the certificate from the ConfigMap
        # (--merge-into replaces that key), and a new label. The Secret follows.
        cert = tmp_path / "sealing.pem"
        cert.write_text(
            control_plane.kubectl(
                "get", "configmap", CONFIGMAP, "-n", ns, "-o", r"jsonpath={.data.certificate\.pem}"
            ).stdout
        )
        sealed_path = tmp_path / "sealed.yaml"
        sealed_path.write_text(sealed)
        concordctl(
            coord,
            "seal",
            "--cert",
            str(cert),
            "--merge-into",
            str(sealed_path),
            stdin=secret_manifest(
                ns, "db", {"password": "hunter2-second"}, "kubernetes.io/basic-auth"
            ),
        )
        changed = yaml.safe_load(sealed_path.read_text())
        changed["spec"]["template"]["metadata"]["labels"]["tier"] = "backend"
        applied_at = now()
        apply(control_plane, yaml.safe_dump(changed))

        def follows() -> bool:
            s = read_secret(core, ns, "db")
            return s is not None and values_of(s).get("password") == "hunter2-second"

        await eventually(follows, WAIT_S, "the Secret follows the update", operator.log)
        print(f"kubectl apply (update) to Secret: {(now() - applied_at) * 1000:.0f} ms")
        secret = read_secret(core, ns, "db")
        assert values_of(secret)["username"] == "admin"
        assert secret.metadata.labels == {"app": "db", "tier": "backend"}
        generation = kube.get(PLURAL, "db")["metadata"]["generation"]  # type: ignore[index]
        await eventually(
            lambda: kube.status(PLURAL, "db").get("observedGeneration") == generation,
            WAIT_S,
            "observedGeneration follows",
        )

        # A Secret deleted by hand is put back by the operator.
        core.delete_namespaced_secret("db", ns)
        await eventually(follows, WAIT_S, "the Secret put back", operator.log)

        # Deleted: the garbage collector takes the Secret with it.
        control_plane.kubectl("delete", "csealed", "db", "-n", ns)
        await eventually(
            lambda: read_secret(core, ns, "db") is None, 60, "the Secret collected", operator.log
        )

        text = (await operator.get("/metrics"))[1]
        assert (metric(text, 'concord_operator_unseals_total{result="ok"}') or 0) >= 4
        assert (metric(text, "concord_operator_sealing_key_age_seconds") or 0) > 0
        assert_nothing_leaks(operator, control_plane, ns, ["hunter2-first", "hunter2-second"])

    asyncio.run(scenario())


# --- what must not become a Secret -------------------------------------------------------------


def test_wrong_scope_tampered_and_foreign_secret_each_give_their_condition_and_no_secret(
    coord: ProcessCluster,
    kube: KubeObjects,
    operator: OperatorProcess,
    control_plane: ControlPlane,
) -> None:
    ns = kube.namespace
    core = kubernetes.client.CoreV1Api(kube.api_client)

    async def scenario() -> None:
        # Sealed (strict) for "a", applied as "b": the scope bound into it says no.
        sealed = yaml.safe_load(
            concordctl(coord, "seal", stdin=secret_manifest(ns, "a", {"token": "moved-value"}))
        )
        sealed["metadata"]["name"] = "b"
        apply(control_plane, yaml.safe_dump(sealed))
        await eventually(
            reason_is(kube, "b", "ScopeMismatch"), WAIT_S, "ScopeMismatch", operator.log
        )
        assert "encryptedData.token" in ready(kube, "b")["message"]
        assert kube.status(PLURAL, "b")["phase"] == "NotReady"

        # One byte of the ciphertext changed: Tampered.
        sealed = yaml.safe_load(
            concordctl(coord, "seal", stdin=secret_manifest(ns, "c", {"token": "tampered-value"}))
        )
        raw = bytearray(base64.b64decode(sealed["spec"]["encryptedData"]["token"]))
        raw[-5] ^= 0x01
        sealed["spec"]["encryptedData"]["token"] = base64.b64encode(bytes(raw)).decode()
        apply(control_plane, yaml.safe_dump(sealed))
        await eventually(reason_is(kube, "c", "Tampered"), WAIT_S, "Tampered", operator.log)

        # A Secret someone else made is never overwritten; the condition says how to adopt it.
        core.create_namespaced_secret(
            ns,
            {
                "metadata": {"name": "d"},
                "stringData": {"token": "theirs"},
            },
        )
        apply(
            control_plane,
            concordctl(coord, "seal", stdin=secret_manifest(ns, "d", {"token": "adopted-value"})),
        )
        await eventually(reason_is(kube, "d", "SecretNotOwned"), WAIT_S, "NotOwned", operator.log)
        assert "concord.dev/adopt=true" in ready(kube, "d")["message"]
        foreign = read_secret(core, ns, "d")
        assert values_of(foreign) == {"token": "theirs"}
        assert not foreign.metadata.owner_references

        for name in ("b", "c"):
            assert read_secret(core, ns, name) is None

        # Offered for adoption: now it is ours and holds the sealed value.
        control_plane.kubectl("annotate", "secret", "d", "-n", ns, "concord.dev/adopt=true")

        def adopted() -> bool:
            s = read_secret(core, ns, "d")
            return s is not None and values_of(s) == {"token": "adopted-value"}

        await eventually(adopted, WAIT_S, "the Secret adopted", operator.log)
        assert read_secret(core, ns, "d").metadata.owner_references[0].controller
        await eventually(
            lambda: ready(kube, "d").get("status") == "True", WAIT_S, "Ready", operator.log
        )

        text = (await operator.get("/metrics"))[1]
        for reason in ("ScopeMismatch", "Tampered"):
            assert (metric(text, f'concord_operator_unseals_total{{result="{reason}"}}') or 0) >= 1
        assert_nothing_leaks(
            operator, control_plane, ns, ["moved-value", "tampered-value", "adopted-value"]
        )

    asyncio.run(scenario())


# --- key renewal -------------------------------------------------------------------------------


def test_a_renewed_key_is_published_old_values_still_unseal_and_re_encrypt_moves_them(
    coord: ProcessCluster,
    kube: KubeObjects,
    operator: OperatorProcess,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    ns = kube.namespace
    core = kubernetes.client.CoreV1Api(kube.api_client)

    async def scenario() -> None:
        await eventually(lambda: bool(published(control_plane, ns)), WAIT_S, "ConfigMap")
        old = published(control_plane, ns)
        sealed = concordctl(coord, "seal", stdin=secret_manifest(ns, "db", {"pw": "old-key-pw"}))
        apply(control_plane, sealed)
        await eventually(reason_is(kube, "db", "Unsealed"), WAIT_S, "Ready", operator.log)
        assert kube.status(PLURAL, "db")["keyIds"] == [old]

        async with coord.client() as client:
            renewed = await client.renew_sealing_key()
        assert renewed.key_id != old
        await eventually(
            lambda: published(control_plane, ns) == renewed.key_id,
            WAIT_S,
            "the renewed certificate published",
            operator.log,
        )

        # Values sealed to the old key still unseal: a template change makes the operator
        # unseal them again.
        doc = yaml.safe_load(sealed)
        doc["spec"]["template"]["metadata"] = {"labels": {"after": "renewal"}}
        apply(control_plane, yaml.safe_dump(doc))

        def relabelled() -> bool:
            s = read_secret(core, ns, "db")
            return s is not None and (s.metadata.labels or {}).get("after") == "renewal"

        await eventually(relabelled, WAIT_S, "unsealed again under the old key", operator.log)
        assert values_of(read_secret(core, ns, "db")) == {"pw": "old-key-pw"}
        assert kube.status(PLURAL, "db")["keyIds"] == [old]

        # --re-encrypt rewraps them to the new key inside the coordinator.
        path = tmp_path / "sealed.yaml"
        path.write_text(yaml.safe_dump(doc))
        moved = concordctl(coord, "seal", "--re-encrypt", "-f", str(path))
        assert yaml.safe_load(moved)["metadata"]["annotations"]["concord.dev/sealing-key"] == (
            renewed.key_id
        )
        apply(control_plane, moved)
        await eventually(
            lambda: kube.status(PLURAL, "db").get("keyIds") == [renewed.key_id],
            WAIT_S,
            "keyIds the new key",
            operator.log,
        )
        assert values_of(read_secret(core, ns, "db")) == {"pw": "old-key-pw"}
        data = assert_nothing_leaks(operator, control_plane, ns, ["old-key-pw"])
        assert data["keyId"] == renewed.key_id

    asyncio.run(scenario())


# --- the operator's identity -------------------------------------------------------------------


def test_an_operator_without_the_operator_identity_is_refused_and_says_which_tls_dir(
    tmp_path: Path, coord: ProcessCluster, kube: KubeObjects, control_plane: ControlPlane
) -> None:
    ns = kube.namespace
    core = kubernetes.client.CoreV1Api(kube.api_client)
    op = OperatorProcess(
        tmp_path,
        "plain",
        coord.endpoints(),
        plain_client_tls_dir(coord),  # `client/`, not `operator/`
        control_plane.kubeconfig,
        ns,
    ).start()
    try:

        async def scenario() -> None:
            apply(
                control_plane,
                concordctl(coord, "seal", stdin=secret_manifest(ns, "db", {"pw": "not-for-you"})),
            )
            await eventually(
                reason_is(kube, "db", "PermissionDenied"), WAIT_S, "PermissionDenied", op.log
            )
            assert "operator/ directory" in ready(kube, "db")["message"]
            assert read_secret(core, ns, "db") is None
            # The certificate is public: any client of the cluster may publish it.
            await eventually(lambda: bool(published(control_plane, ns)), WAIT_S, "ConfigMap")
            assert_nothing_leaks(op, control_plane, ns, ["not-for-you"])

        asyncio.run(scenario())
    finally:
        op.stop()
        print(f"--- operator ---\n{op.log()[-6000:]}")
