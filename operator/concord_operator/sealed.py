"""The SealedSecret's decisions, pure: (spec, unsealed, existing Secret) -> SecretPlan.

The controller observes two things before it asks: the Secret of the same name as it stands
in Kubernetes (`ExistingSecret`), and, only when that Secret is ours or absent or offered for
adoption (`may_write`), what the coordinator unsealed (`Unsealed`, or the first value that
did not unseal as `NotUnsealed`, or `Unavailable`). Nothing is unsealed for a Secret the
operator must not touch, so no plaintext is ever fetched in vain.

Rules, in order:

- The coordinator cannot be asked: Ready=False `CoordinatorUnavailable`, the Secret as it is.
- A Secret of that name exists and is not controlled by this SealedSecret (by its uid):
  never overwritten. Ready=False `SecretNotOwned`, with how to hand it over: the annotation
  `concord.dev/adopt: "true"` on the Secret (honoured only when no other controller owns it,
  since Kubernetes allows one).
- A value does not unseal: Ready=False with the coordinator's reason (`ScopeMismatch`,
  `Tampered`, `UnknownKey`, `Malformed`, or `PermissionDenied` when the operator's identity
  is not the one Unseal answers), naming the key; nothing is created, and a Secret unsealed
  before from an earlier version stays as it was (a bad edit does not take a working Secret
  away).
- Otherwise the Secret is built (`manifests.secret_manifest`) and written if it differs from
  what is there: created, replaced (with the resourceVersion read, so a concurrent change
  is never overwritten blindly) or, when the template's type changed, deleted and created
  again (the API server refuses to change a Secret's type in place). Ready=True `Unsealed`
  (or `Adopted`), `keyIds` the sealing keys the values were sealed to. Should the API
  server refuse the Secret as invalid (a `kubernetes.io/basic-auth` template without a
  `username` value, say), Ready=False `SecretInvalid` carries its message (`refused`).

With `spec.createSecret: false` (`reconcile_files_only`) there is no Secret: the values reach
pods only as files through the sidecar, from the ciphertext record the operator keeps in the
coordinator, and the operator never asks for a plaintext. It only checks that every value
would unseal as namespace/name (`ValidateSealed`, which returns no plaintext): Ready=True
`Published` with the key ids, or Ready=False with the reason. A Secret this SealedSecret
controls (left from when createSecret was true) is deleted, so turning the option on takes
the plaintext out of the Kubernetes API; a Secret it does not control is left alone.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .manifests import encode_data, secret_manifest
from .reconcile import (
    READY,
    UNAVAILABLE,
    Cond,
    ObjectRef,
    Status,
    Unavailable,
    conditions,
    phase_of,
)

ADOPT_ANNOTATION = "concord.dev/adopt"

# Ready reasons.
UNSEALED = "Unsealed"
PUBLISHED = "Published"
ADOPTED = "Adopted"
NOT_OWNED = "SecretNotOwned"
PERMISSION_DENIED = "PermissionDenied"
SECRET_INVALID = "SecretInvalid"
MALFORMED = "Malformed"


def reason_of(name: str) -> str:
    """A condition reason from a `coordinator.sealing.Reason` name: SCOPE_MISMATCH ->
    ScopeMismatch (the CRD's reason pattern allows no underscores at the end, and metav1
    reasons are CamelCase)."""
    return "".join(part.capitalize() for part in name.split("_"))


@dataclass(frozen=True, slots=True)
class SealedSpec:
    encrypted: Mapping[str, str]
    """Secret key -> the sealed value, base64."""
    secret_type: str = "Opaque"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    scope: str = "strict"
    create_secret: bool = True
    """spec.createSecret: False means files only (see the module doc)."""

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> SealedSpec:
        template = spec.get("template") or {}
        meta = template.get("metadata") or {}
        return cls(
            encrypted={str(k): str(v) for k, v in (spec.get("encryptedData") or {}).items()},
            secret_type=str(template.get("type") or "Opaque"),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
            scope=str(spec.get("scope") or "strict"),
            create_secret=spec.get("createSecret", True) is not False,
        )


@dataclass(frozen=True, slots=True)
class ExistingSecret:
    resource_version: str
    controller_uid: str
    """The uid of the owner reference with controller=true ("" when none)."""
    controller: str
    """That owner as "Kind name", for messages."""
    adopt: bool
    secret_type: str
    data: Mapping[str, str]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ExistingSecret:
        """From a Secret as the API returns it (JSON field names)."""
        meta = body.get("metadata") or {}
        owner: Mapping[str, Any] = next(
            (o for o in meta.get("ownerReferences") or [] if o.get("controller")),
            {},
        )
        annotations = dict(meta.get("annotations") or {})
        return cls(
            resource_version=str(meta.get("resourceVersion", "")),
            controller_uid=str(owner.get("uid", "")),
            controller=f"{owner.get('kind', '')} {owner.get('name', '')}".strip(),
            adopt=annotations.get(ADOPT_ANNOTATION, "").lower() == "true",
            secret_type=str(body.get("type") or "Opaque"),
            data=dict(body.get("data") or {}),
            labels=dict(meta.get("labels") or {}),
            annotations=annotations,
        )


@dataclass(frozen=True, slots=True)
class Unsealed:
    values: Mapping[str, bytes]
    key_ids: tuple[str, ...]
    """The distinct sealing keys the values were sealed to, sorted."""


@dataclass(frozen=True, slots=True)
class Validated:
    """Every value would unseal as namespace/name (no plaintext was fetched)."""

    key_ids: tuple[str, ...]
    """The distinct sealing keys the values were sealed to, sorted."""


@dataclass(frozen=True, slots=True)
class NotUnsealed:
    key: str
    """The encryptedData key whose value did not unseal."""
    reason: str
    """A condition reason (`reason_of`)."""
    message: str


@dataclass(frozen=True, slots=True)
class SecretPlan:
    write: Literal["create", "replace", "recreate", "delete"] | None
    """"delete": the Secret this SealedSecret controls goes (files only)."""
    secret: dict[str, Any] | None
    status: Status
    retry: bool = False


def may_write(ref: ObjectRef, existing: ExistingSecret | None) -> bool:
    """Whether the Secret may be written: absent, controlled by this SealedSecret, or offered
    for adoption with no other controller."""
    if existing is None or existing.controller_uid == ref.uid:
        return True
    return existing.adopt and not existing.controller_uid


def decode_encrypted(spec: SealedSpec) -> dict[str, bytes] | NotUnsealed:
    """The envelopes of spec.encryptedData, or the first value that is not base64."""
    out: dict[str, bytes] = {}
    for key, text in sorted(spec.encrypted.items()):
        try:
            out[key] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return NotUnsealed(
                key,
                MALFORMED,
                f"encryptedData.{key} is not valid base64: seal it again with concordctl seal",
            )
    return out


def reconcile_sealed_secret(  # noqa: PLR0917 (each input named)
    ref: ObjectRef,
    spec: SealedSpec,
    unsealed: Unsealed | NotUnsealed | Unavailable | None,
    existing: ExistingSecret | None,
    previous: Mapping[str, Any],
    now: dt.datetime,
) -> SecretPlan:
    """What to write (see the module doc). `unsealed` is None when nothing was unsealed
    because the Secret may not be written (`may_write` was False)."""
    prev_conds = list(previous.get("conditions") or [])

    def status(ready: Cond, **extra: Any) -> Status:  # noqa: ANN401 (JSON values)
        conds = conditions([ready], prev_conds, ref.generation, now)
        return {
            "observedGeneration": ref.generation,
            **extra,
            "conditions": conds,
            "phase": phase_of(conds),
        }

    if isinstance(unsealed, Unavailable):
        conds = conditions([Cond(READY, "False", UNAVAILABLE, unsealed.message)], prev_conds,
                           ref.generation, now)  # fmt: skip
        return SecretPlan(None, None, {"conditions": conds, "phase": phase_of(conds)}, retry=True)
    where = f"{ref.namespace}/{ref.name}"
    if unsealed is None or not may_write(ref, existing):
        if existing is None:  # may_write is True without a Secret: the caller must unseal
            raise ValueError("nothing was unsealed although no Secret stands in the way")
        held = f" (controlled by {existing.controller})" if existing.controller_uid else ""
        how = (
            f"remove its controller first, then annotate it: kubectl annotate secret -n "
            f"{ref.namespace} {ref.name} {ADOPT_ANNOTATION}=true"
            if existing.controller_uid
            else f"to let this SealedSecret own and overwrite it: kubectl annotate secret -n "
            f"{ref.namespace} {ref.name} {ADOPT_ANNOTATION}=true"
        )
        message = f"Secret {where} exists and is not owned by this SealedSecret{held}; it is "
        message += f"left untouched. {how}"
        return SecretPlan(None, None, status(Cond(READY, "False", NOT_OWNED, message)))
    if isinstance(unsealed, NotUnsealed):
        message = f"encryptedData.{unsealed.key} did not unseal as {where}: {unsealed.message}"
        if existing is not None:
            message += "; the Secret keeps its earlier values"
        else:
            message += "; no Secret was created"
        return SecretPlan(None, None, status(Cond(READY, "False", unsealed.reason, message)))

    adopting = existing is not None and existing.controller_uid != ref.uid
    write: Literal["create", "replace", "recreate"] | None
    if existing is None:
        write = "create"
    elif existing.secret_type != spec.secret_type:
        write = "recreate"
    elif adopting or _differs(existing, spec, unsealed):
        write = "replace"
    else:
        write = None
    wanted = secret_manifest(
        ref.namespace,
        ref.name,
        ref.uid,
        spec.secret_type,
        spec.labels,
        spec.annotations,
        unsealed.values,
        existing.resource_version if existing is not None and write == "replace" else "",
    )
    reason, verb = (ADOPTED, "adopted and holds") if adopting else (UNSEALED, "holds")
    ready = Cond(
        READY,
        "True",
        reason,
        f"Secret {where} {verb} {len(unsealed.values)} unsealed values (sealing keys "
        f"{', '.join(unsealed.key_ids) or 'none'})",
    )
    return SecretPlan(
        write, wanted if write else None, status(ready, keyIds=list(unsealed.key_ids))
    )


def reconcile_files_only(  # noqa: PLR0917 (each input named)
    ref: ObjectRef,
    spec: SealedSpec,
    validated: Validated | NotUnsealed | Unavailable,
    existing: ExistingSecret | None,
    previous: Mapping[str, Any],
    now: dt.datetime,
) -> SecretPlan:
    """spec.createSecret is false: no Secret, only the check that the values would unseal
    (see the module doc)."""
    prev_conds = list(previous.get("conditions") or [])
    ours = existing is not None and existing.controller_uid == ref.uid
    write: Literal["delete"] | None = "delete" if ours else None
    if isinstance(validated, Unavailable):
        conds = conditions([Cond(READY, "False", UNAVAILABLE, validated.message)], prev_conds,
                           ref.generation, now)  # fmt: skip
        return SecretPlan(None, None, {"conditions": conds, "phase": phase_of(conds)}, retry=True)
    where = f"{ref.namespace}/{ref.name}"
    extra: dict[str, Any] = {}
    if isinstance(validated, NotUnsealed):
        ready = Cond(
            READY,
            "False",
            validated.reason,
            f"encryptedData.{validated.key} would not unseal as {where}: {validated.message}; "
            "sidecars keep the files they delivered last",
        )
    else:
        ready = Cond(
            READY,
            "True",
            PUBLISHED,
            f"{len(spec.encrypted)} sealed values published for sidecars (secrets as files); "
            f"no Secret, as spec.createSecret is false (sealing keys "
            f"{', '.join(validated.key_ids) or 'none'})",
        )
        extra["keyIds"] = list(validated.key_ids)
    conds = conditions([ready], prev_conds, ref.generation, now)
    status = {"observedGeneration": ref.generation, **extra, "conditions": conds,
              "phase": phase_of(conds)}  # fmt: skip
    return SecretPlan(write, None, status)


def refused(ref: ObjectRef, message: str, previous: Mapping[str, Any], now: dt.datetime) -> Status:
    """The status when the API server refused the Secret as invalid (e.g. a template type
    whose required keys the values lack): its message, Ready=False; nothing to retry until
    the SealedSecret changes."""
    conds = conditions(
        [Cond(READY, "False", SECRET_INVALID, f"the API server refused the Secret: {message}")],
        list(previous.get("conditions") or []),
        ref.generation,
        now,
    )
    return {"observedGeneration": ref.generation, "conditions": conds, "phase": phase_of(conds)}


def _differs(existing: ExistingSecret, spec: SealedSpec, unsealed: Unsealed) -> bool:
    return (
        dict(existing.data) != encode_data(unsealed.values)
        or dict(existing.labels) != dict(spec.labels)
        or dict(existing.annotations) != dict(spec.annotations)
    )
