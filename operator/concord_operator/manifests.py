"""What the operator creates in Kubernetes, as pure builder functions (STYLE.md lesson 11).

Two kinds of object, and only these: the Secret unsealed from a `SealedSecret` (owned by it,
so the garbage collector deletes it with its owner) and the ConfigMap that publishes the
cluster's current sealing certificate (the public half only: `concordctl seal --cert` and
anyone else may read it). Nothing here does I/O, so the exact bodies are unit-tested without
a cluster (tests/kube/test_sealed_reconcile.py); `kube` sends them as they are.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

GROUP_VERSION = "concord.dev/v1alpha1"
SEALED_KIND = "SealedSecret"
MANAGED_BY = {"app.kubernetes.io/managed-by": "concord-operator"}

CERTIFICATE_CONFIGMAP = "concord-sealing-certificate"
"""The default name of the ConfigMap holding the current sealing certificate."""
CERTIFICATE_KEY = "certificate.pem"
KEY_ID_KEY = "keyId"
CREATED_AT_KEY = "createdAt"


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """The SealedSecret as the controlling owner: deleting it garbage-collects the Secret,
    and a second controller cannot claim the Secret (the API server allows one)."""
    return {
        "apiVersion": GROUP_VERSION,
        "kind": SEALED_KIND,
        "name": name,
        "uid": uid,
        "controller": True,
    }


def secret_manifest(  # noqa: PLR0917 (a Secret's parts, each named)
    namespace: str,
    name: str,
    owner_uid: str,
    secret_type: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    values: Mapping[str, bytes],
    resource_version: str = "",
) -> dict[str, Any]:
    """The Secret unsealed from SealedSecret `namespace/name`: the template's type, labels and
    annotations, the values (base64, as the API wants them), owned by the SealedSecret.
    `resource_version` (for a replace) makes the API server refuse the write if the Secret
    changed since it was read, instead of overwriting someone else's change."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "ownerReferences": [owner_reference(name, owner_uid)],
    }
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": secret_type,
        "data": encode_data(values),
    }


def encode_data(values: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in sorted(values.items())}


def certificate_configmap(
    namespace: str,
    name: str,
    key_id: str,
    created_at: str,
    certificate_pem: str,
    *,
    resource_version: str = "",
) -> dict[str, Any]:
    """The ConfigMap publishing the current sealing certificate (public: what `concordctl
    seal --cert` needs to seal offline) with its key id and creation time (RFC 3339)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {
            CERTIFICATE_KEY: certificate_pem,
            KEY_ID_KEY: key_id,
            CREATED_AT_KEY: created_at,
        },
    }


def published_key_id(configmap: Mapping[str, Any] | None) -> str:
    """The key id a certificate ConfigMap publishes ("" when there is none yet)."""
    if not configmap:
        return ""
    return str((configmap.get("data") or {}).get(KEY_ID_KEY, ""))
