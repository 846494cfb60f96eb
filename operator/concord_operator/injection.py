"""Sidecar injection as a pure function: a Pod as the API server shows it to the mutating
webhook, plus the injection settings, gives the Pod to admit (STYLE.md lesson 11: decisions
without I/O, tested without a cluster; `handlers` turns the result into kopf's patch).

What a pod annotated `concord.dev/inject: "true"` gets:

- `concord-sidecar` as a *native sidecar*: the first init container, with `restartPolicy:
  Always`, so it starts before the other init containers and the app, runs beside them for
  the pod's life, and is stopped after them (Kubernetes >= 1.29). Its startup probe
  (`/startupz`: a first coordinator session) holds the app back until the API works.
- Its identity: a projected ServiceAccount token (audience `concord`, an hour, renewed by the
  kubelet) at /var/run/secrets/concord/token, given as `--token-file`.
- The coordinator: `--endpoints` (the chart's client Service) and the CA it is certified by,
  from the ConfigMap `concord-ca` in the pod's namespace (the webhook publishes it there,
  as kube-root-ca.crt is published), mounted as --tls-dir.
- With `concord.dev/secrets: "a,b"`: an in-memory emptyDir `concord-secrets` at /run/secrets,
  written by the sidecar (`--secrets-dir`, env CONCORD_SECRETS=a,b) and read-only in every
  other container.
- Every other container: env CONCORD_SIDECAR_URL, unless it sets one itself.

Idempotent: a pod that already has an init container named `concord-sidecar` is left as it
is (a re-invocation of the webhook, or a pod copied from an injected one). Any other pod the
injection would break (a name or mount path taken, a malformed annotation) is `Refused`:
admitted unchanged, and the webhook says why in an Event and an admission warning. Injection
never rejects a pod: failing open is the chart's default for the webhook itself too.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

INJECT_ANNOTATION = "concord.dev/inject"
SECRETS_ANNOTATION = "concord.dev/secrets"
STATUS_ANNOTATION = "concord.dev/injected"
"""Set on an injected pod: the sidecar image it got (for `kubectl get -o yaml` readers)."""

SIDECAR_NAME = "concord-sidecar"
TOKEN_VOLUME = "concord-token"
CA_VOLUME = "concord-ca"
SECRETS_VOLUME = "concord-secrets"
TOKEN_DIR = "/var/run/secrets/concord"
TOKEN_FILE = f"{TOKEN_DIR}/token"
TLS_DIR = "/etc/concord/tls"
SECRETS_DIR = "/run/secrets"
CA_KEY = "ca.pem"
URL_ENV = "CONCORD_SIDECAR_URL"

_TRUE = frozenset({"true", "yes", "on", "enabled", "1"})
_FALSE = frozenset({"false", "no", "off", "disabled", "0"})
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Settings:
    """What every injected sidecar gets (from the operator's flags, set by the chart)."""

    image: str
    endpoints: str
    """host:port,... of the coordinator's client Service."""
    image_pull_policy: str = "IfNotPresent"
    ca_configmap: str = "concord-ca"
    """ConfigMap in the pod's namespace holding the coordinator's CA as `ca.pem`."""
    listen_host: str = "127.0.0.1"
    """Where the sidecar's API listens. `$(POD_IP)` only where pods share one loopback (the
    node agent runs pods as processes on one machine); then the app containers get POD_IP."""
    port: int = 7490
    probe_port: int = 7491
    """The probes' own listener on the pod IP: the kubelet probes the pod IP, and the API
    itself stays on loopback."""
    token_audience: str = "concord"
    token_expiration_s: int = 3600
    cpu_request: str = "20m"
    memory_request: str = "48Mi"

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Injected:
    pod: dict[str, Any]
    """The whole Pod as it must be admitted (the input is not modified)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """Not asked for, opted out, or already injected: nothing to do, nothing to say."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Asked for but not possible: admitted unchanged, and the reason is reported."""

    reason: str


Outcome = Injected | Skipped | Refused


def wanted(annotations: Mapping[str, str]) -> bool | None:
    """The annotation's answer: True, False (absent or an opt-out value) or None (unreadable)."""
    raw = annotations.get(INJECT_ANNOTATION)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def secret_names(raw: str) -> list[str] | str:
    """The names in `concord.dev/secrets`, or why the value is unreadable."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names:
        return f'{SECRETS_ANNOTATION} is empty: give Secret names, e.g. "db,api-key"'
    bad = [n for n in names if not _SECRET_NAME.fullmatch(n)]
    if bad:
        return f"{SECRETS_ANNOTATION} names no valid Secret name: {', '.join(map(repr, bad))}"
    return list(dict.fromkeys(names))


def inject(pod: Mapping[str, Any], settings: Settings) -> Outcome:
    meta = pod.get("metadata") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    spec = pod.get("spec") or {}
    want = wanted(annotations)
    if want is None:
        return Refused(
            f"{INJECT_ANNOTATION}={annotations[INJECT_ANNOTATION]!r} is neither true nor false"
        )
    if not want:
        return Skipped(f"{INJECT_ANNOTATION} is not true")
    init: Sequence[Mapping[str, Any]] = spec.get("initContainers") or []
    containers: Sequence[Mapping[str, Any]] = spec.get("containers") or []
    if any(c.get("name") == SIDECAR_NAME for c in init):
        return Skipped("already injected")
    if any(c.get("name") == SIDECAR_NAME for c in containers):
        return Refused(f"the pod already has a container named {SIDECAR_NAME}")
    if spec.get("hostNetwork"):
        return Refused(
            "a hostNetwork pod shares the node's loopback: sidecars of two such pods would "
            f"take the same port {settings.port}"
        )
    secrets: list[str] = []
    if SECRETS_ANNOTATION in annotations:
        parsed = secret_names(annotations[SECRETS_ANNOTATION])
        if isinstance(parsed, str):
            return Refused(parsed)
        secrets = parsed
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    ours = {TOKEN_VOLUME, CA_VOLUME} | ({SECRETS_VOLUME} if secrets else set())
    taken = sorted(n for n in ours if n in volumes)
    if taken:
        return Refused(f"the pod already has a volume named {', '.join(taken)}")
    if secrets:
        for c in [*init, *containers]:
            for m in c.get("volumeMounts") or []:
                if str(m.get("mountPath", "")).rstrip("/") == SECRETS_DIR:
                    return Refused(
                        f"container {c.get('name')} already mounts {SECRETS_DIR}, where the "
                        "sidecar would write the secrets"
                    )

    out = copy.deepcopy(dict(pod))
    out_meta = out.setdefault("metadata", {})
    out_meta.setdefault("annotations", {})[STATUS_ANNOTATION] = settings.image
    out_spec = out.setdefault("spec", {})
    for c in [*out_spec.get("initContainers", []), *out_spec.get("containers", [])]:
        _wire_app_container(c, settings, secrets)
    out_spec["initContainers"] = [sidecar(settings, secrets), *out_spec.get("initContainers", [])]
    out_spec["volumes"] = [*out_spec.get("volumes", []), *volumes_for(settings, secrets)]
    return Injected(out)


def sidecar(settings: Settings, secrets: Sequence[str]) -> dict[str, Any]:
    """The native sidecar container."""
    args = [
        f"--listen={settings.listen_host}:{settings.port}",
        f"--probe-listen=$(POD_IP):{settings.probe_port}",
        f"--endpoints={settings.endpoints}",
        f"--tls-dir={TLS_DIR}",
        "--token-file",
        TOKEN_FILE,
    ]
    env: list[dict[str, Any]] = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("POD_IP", "status.podIP"),
    ]
    mounts: list[dict[str, Any]] = [
        {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": CA_VOLUME, "mountPath": TLS_DIR, "readOnly": True},
    ]
    if secrets:
        args += ["--secrets-dir", SECRETS_DIR]
        env.append({"name": "CONCORD_SECRETS", "value": ",".join(secrets)})
        mounts.append({"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR})

    def probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "concord-probe"},
            "periodSeconds": period_s,
            "failureThreshold": failures,
            "timeoutSeconds": 2,
        }

    return {
        "name": SIDECAR_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "args": args,
        "env": env,
        "ports": [{"name": "concord-probe", "containerPort": settings.probe_port}],
        # Up to 60 s for a first coordinator session before the kubelet restarts it.
        "startupProbe": probe("/startupz", 1, 60),
        "readinessProbe": probe("/readyz", 5, 1),
        "livenessProbe": probe("/healthz", 10, 3),
        "resources": {"requests": {"cpu": settings.cpu_request, "memory": settings.memory_request}},
        # The chart's uid for every Concord process. The kubelet makes the projected token
        # readable to it whatever the app's uid: owned by the pods' one common runAsUser,
        # group-readable under an fsGroup, else mode 0644 (FsUserFrom, projected.go).
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }


def volumes_for(settings: Settings, secrets: Sequence[str]) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": settings.token_audience,
                            "expirationSeconds": settings.token_expiration_s,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {
            "name": CA_VOLUME,
            "configMap": {
                "name": settings.ca_configmap,
                "items": [{"key": CA_KEY, "path": CA_KEY}],
            },
        },
    ]
    if secrets:
        volumes.append({"name": SECRETS_VOLUME, "emptyDir": {"medium": "Memory"}})
    return volumes


def _wire_app_container(c: dict[str, Any], settings: Settings, secrets: Sequence[str]) -> None:
    env: list[dict[str, Any]] = c.setdefault("env", [])
    names = {e.get("name") for e in env}
    if URL_ENV not in names:
        if "$(POD_IP)" in settings.url and "POD_IP" not in names:
            env.append(_field_env("POD_IP", "status.podIP"))
        env.append({"name": URL_ENV, "value": settings.url})
    if secrets:
        c.setdefault("volumeMounts", []).append(
            {"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR, "readOnly": True}
        )


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def ca_configmap(name: str, namespace: str, ca_pem: str) -> dict[str, Any]:
    """The CA ConfigMap the webhook publishes in an injected pod's namespace (public data)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "concord-operator"},
        },
        "data": {CA_KEY: ca_pem},
    }
