"""The SealedSecret's decisions and the operator's builders, without a cluster or a
coordinator: `concord_operator.sealed` (pure) and `concord_operator.manifests` (pure)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from concord_operator.manifests import (
    certificate_configmap,
    published_key_id,
    secret_manifest,
)
from concord_operator.reconcile import SEALED_SECRETS, ObjectRef, Unavailable
from concord_operator.sealed import (
    ExistingSecret,
    NotUnsealed,
    SealedSpec,
    Unsealed,
    Validated,
    decode_encrypted,
    may_write,
    reason_of,
    reconcile_files_only,
    reconcile_sealed_secret,
    refused,
)

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
REF = ObjectRef(SEALED_SECRETS, "prod", "db", uid="uid-1", generation=3)
SPEC = SealedSpec.of(
    {
        "encryptedData": {"password": "c2VhbGVk"},
        "template": {
            "type": "kubernetes.io/basic-auth",
            "metadata": {"labels": {"app": "db"}, "annotations": {"team": "payments"}},
        },
    }
)
OPENED = Unsealed({"password": b"hunter2"}, ("00aa11bb22cc33dd",))


def existing(controller_uid: str = "uid-1", **changes: Any) -> ExistingSecret:
    body: dict[str, Any] = {
        "metadata": {
            "name": "db",
            "namespace": "prod",
            "resourceVersion": "41",
            "labels": {"app": "db"},
            "annotations": {"team": "payments"},
            "ownerReferences": [
                {"kind": "SealedSecret", "name": "db", "uid": controller_uid, "controller": True}
            ]
            if controller_uid
            else [],
        },
        "type": "kubernetes.io/basic-auth",
        "data": {"password": base64.b64encode(b"hunter2").decode()},
    }
    for key, value in changes.items():
        if key in ("labels", "annotations"):
            body["metadata"][key] = value
        else:
            body[key] = value
    return ExistingSecret.of(body)


def ready(plan_status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in plan_status["conditions"] if c["type"] == "Ready")


def test_the_spec_reads_the_crds_template_shape() -> None:
    assert SPEC.secret_type == "kubernetes.io/basic-auth"
    assert SPEC.labels == {"app": "db"}
    assert SPEC.annotations == {"team": "payments"}
    assert SealedSpec.of({"encryptedData": {}}).secret_type == "Opaque"


def test_no_secret_yet_creates_one_owned_by_the_sealed_secret() -> None:
    plan = reconcile_sealed_secret(REF, SPEC, OPENED, None, {}, NOW)
    assert plan.write == "create"
    assert plan.secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "db",
            "namespace": "prod",
            "ownerReferences": [
                {
                    "apiVersion": "concord.dev/v1alpha1",
                    "kind": "SealedSecret",
                    "name": "db",
                    "uid": "uid-1",
                    "controller": True,
                }
            ],
            "labels": {"app": "db"},
            "annotations": {"team": "payments"},
        },
        "type": "kubernetes.io/basic-auth",
        "data": {"password": base64.b64encode(b"hunter2").decode()},
    }
    assert plan.status["keyIds"] == ["00aa11bb22cc33dd"]
    assert plan.status["observedGeneration"] == 3
    assert plan.status["phase"] == "Ready"
    assert ready(plan.status)["reason"] == "Unsealed"


def test_an_owned_secret_is_left_alone_when_equal_and_replaced_when_not() -> None:
    same = reconcile_sealed_secret(REF, SPEC, OPENED, existing(), {}, NOW)
    assert same.write is None and same.secret is None
    assert same.status["phase"] == "Ready"

    changed = Unsealed({"password": b"new"}, OPENED.key_ids)
    plan = reconcile_sealed_secret(REF, SPEC, changed, existing(), {}, NOW)
    assert plan.write == "replace"
    assert plan.secret is not None
    # The version read: a concurrent change makes the API server refuse, never lost.
    assert plan.secret["metadata"]["resourceVersion"] == "41"
    assert plan.secret["data"] == {"password": base64.b64encode(b"new").decode()}

    relabelled = reconcile_sealed_secret(REF, SPEC, OPENED, existing(labels={}), {}, NOW)
    assert relabelled.write == "replace"


def test_a_changed_type_recreates_the_secret() -> None:
    plan = reconcile_sealed_secret(REF, SPEC, OPENED, existing(type="Opaque"), {}, NOW)
    assert plan.write == "recreate"
    assert plan.secret is not None and "resourceVersion" not in plan.secret["metadata"]


def test_a_foreign_secret_is_never_written_and_the_condition_says_how_to_adopt() -> None:
    theirs = existing(controller_uid="")
    assert not may_write(REF, theirs)
    plan = reconcile_sealed_secret(REF, SPEC, None, theirs, {}, NOW)
    assert plan.write is None and plan.secret is None
    cond = ready(plan.status)
    assert (cond["status"], cond["reason"]) == ("False", "SecretNotOwned")
    assert "kubectl annotate secret -n prod db concord.dev/adopt=true" in cond["message"]
    assert plan.status["phase"] == "NotReady"

    other = existing(controller_uid="someone-else")
    other_plan = reconcile_sealed_secret(REF, SPEC, None, other, {}, NOW)
    assert "controlled by SealedSecret db" in ready(other_plan.status)["message"]
    # The annotation alone does not override another controller (Kubernetes allows one).
    claimed = ExistingSecret.of(
        {
            "metadata": {
                "annotations": {"concord.dev/adopt": "true"},
                "ownerReferences": [{"kind": "X", "name": "y", "uid": "u", "controller": True}],
            }
        }
    )
    assert not may_write(REF, claimed)


def test_an_adoptable_secret_is_taken_over() -> None:
    offered = existing(controller_uid="", annotations={"concord.dev/adopt": "true"})
    assert may_write(REF, offered)
    plan = reconcile_sealed_secret(REF, SPEC, OPENED, offered, {}, NOW)
    assert plan.write == "replace"
    assert plan.secret is not None
    assert plan.secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert plan.secret["metadata"]["annotations"] == {"team": "payments"}
    assert ready(plan.status)["reason"] == "Adopted"


def test_a_value_that_does_not_unseal_creates_nothing_and_names_the_reason() -> None:
    failed = NotUnsealed("password", reason_of("SCOPE_MISMATCH"), "sealed for prod/other")
    plan = reconcile_sealed_secret(REF, SPEC, failed, None, {}, NOW)
    assert plan.write is None and plan.secret is None
    cond = ready(plan.status)
    assert (cond["status"], cond["reason"]) == ("False", "ScopeMismatch")
    assert "encryptedData.password" in cond["message"]
    assert "no Secret was created" in cond["message"]
    assert "keyIds" not in plan.status

    kept = reconcile_sealed_secret(REF, SPEC, failed, existing(), {}, NOW)
    assert kept.write is None
    assert "keeps its earlier values" in ready(kept.status)["message"]


def test_reasons_are_condition_reasons() -> None:
    assert [reason_of(n) for n in ("MALFORMED", "UNKNOWN_KEY", "SCOPE_MISMATCH", "TAMPERED")] == [
        "Malformed",
        "UnknownKey",
        "ScopeMismatch",
        "Tampered",
    ]


def test_bad_base64_is_malformed_before_the_coordinator_is_asked() -> None:
    bad = decode_encrypted(SealedSpec.of({"encryptedData": {"a": "YQ==", "b": "not base64!"}}))
    assert isinstance(bad, NotUnsealed)
    assert (bad.key, bad.reason) == ("b", "Malformed")
    assert decode_encrypted(SealedSpec.of({"encryptedData": {"a": "YQ=="}})) == {"a": b"a"}


def test_an_unavailable_coordinator_changes_only_ready_and_asks_to_retry() -> None:
    before = reconcile_sealed_secret(REF, SPEC, OPENED, None, {}, NOW).status
    plan = reconcile_sealed_secret(REF, SPEC, Unavailable("no quorum"), existing(), before, NOW)
    assert plan.retry and plan.write is None
    assert ready(plan.status)["reason"] == "CoordinatorUnavailable"
    assert "keyIds" not in plan.status  # the last ones written stay


def test_a_refused_secret_says_what_the_api_server_said() -> None:
    status = refused(REF, "data[username]: Required value", {}, NOW)
    cond = ready(status)
    assert (cond["status"], cond["reason"]) == ("False", "SecretInvalid")
    assert "data[username]: Required value" in cond["message"]
    assert status["phase"] == "NotReady"


def test_the_certificate_configmap_holds_the_public_certificate_only() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    cm = certificate_configmap(
        "concord", "concord-sealing-certificate", "00aa11bb22cc33dd", "2026-12-05T12:00:00Z", pem
    )
    assert cm == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "concord-sealing-certificate",
            "namespace": "concord",
            "labels": {"app.kubernetes.io/managed-by": "concord-operator"},
        },
        "data": {
            "certificate.pem": pem,
            "keyId": "00aa11bb22cc33dd",
            "createdAt": "2026-12-05T12:00:00Z",
        },
    }
    assert published_key_id(cm) == "00aa11bb22cc33dd"
    assert published_key_id(None) == ""
    again = certificate_configmap("concord", "c", "k", "t", pem, resource_version="7")
    assert again["metadata"]["resourceVersion"] == "7"


def test_secret_values_are_base64_in_a_stable_order() -> None:
    secret = secret_manifest("ns", "n", "u", "Opaque", {}, {}, {"b": b"2", "a": b"\x00\xff"})
    assert list(secret["data"]) == ["a", "b"]
    assert secret["data"]["a"] == "AP8="
    assert "labels" not in secret["metadata"] and "annotations" not in secret["metadata"]


def test_a_foreign_secret_is_not_written_even_with_values_at_hand() -> None:
    plan = reconcile_sealed_secret(REF, SPEC, OPENED, existing(controller_uid="x"), {}, NOW)
    assert plan.write is None and plan.secret is None
    assert ready(plan.status)["reason"] == "SecretNotOwned"


# --- spec.createSecret false: files only --------------------------------------------------------

FILES_ONLY = SealedSpec.of({"encryptedData": {"password": "c2VhbGVk"}, "createSecret": False})


def test_create_secret_defaults_to_true_and_only_false_turns_it_off() -> None:
    assert SPEC.create_secret and not FILES_ONLY.create_secret
    assert SealedSpec.of({"encryptedData": {}, "createSecret": True}).create_secret


def test_files_only_publishes_without_a_secret_and_deletes_the_one_it_controls() -> None:
    validated = Validated(("00aa11bb22cc33dd",))
    plan = reconcile_files_only(REF, FILES_ONLY, validated, None, {}, NOW)
    assert (plan.write, plan.secret, plan.retry) == (None, None, False)
    assert ready(plan.status)["reason"] == "Published"
    assert ready(plan.status)["status"] == "True"
    assert plan.status["keyIds"] == ["00aa11bb22cc33dd"]
    assert plan.status["observedGeneration"] == 3 and plan.status["phase"] == "Ready"
    # A Secret left from createSecret: true is deleted; someone else's is left alone.
    assert reconcile_files_only(REF, FILES_ONLY, validated, existing(), {}, NOW).write == "delete"
    assert reconcile_files_only(REF, FILES_ONLY, validated, existing("x"), {}, NOW).write is None
    assert reconcile_files_only(REF, FILES_ONLY, validated, existing(""), {}, NOW).write is None


def test_files_only_says_why_a_value_would_not_unseal_and_waits_out_an_outage() -> None:
    bad = NotUnsealed("password", "ScopeMismatch", "sealed for prod/web")
    plan = reconcile_files_only(REF, FILES_ONLY, bad, existing(), {}, NOW)
    assert plan.write == "delete"  # no Secret was asked for, whatever the values
    cond = ready(plan.status)
    assert (cond["status"], cond["reason"]) == ("False", "ScopeMismatch")
    assert "encryptedData.password" in cond["message"] and "keyIds" not in plan.status
    down = reconcile_files_only(REF, FILES_ONLY, Unavailable("no quorum"), existing(), {}, NOW)
    assert (down.write, down.retry) == (None, True)
    assert ready(down.status)["reason"] == "CoordinatorUnavailable"
