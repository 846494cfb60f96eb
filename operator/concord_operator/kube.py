"""The one module that talks to the Kubernetes API directly (kopf does the watching).

It checks, before the operator does anything, that the API server is there, that the CRDs
are installed and that the operator's identity may do what it needs (`preflight`), so a
misconfigured deployment fails at once with a message that names the missing piece instead
of looping on 403s and 404s. It writes the status subresource
of the custom resources (a JSON merge patch: lists such as `holders` and `conditions` are
replaced whole, so a patch always carries the complete list), the Secrets unsealed from
SealedSecrets and the sealing-certificate ConfigMap (bodies from `manifests`, sent as they are;
a replace carries the resourceVersion read, so a concurrent change ends in `Conflict`, never
in a lost update).

The kubernetes client is synchronous; its calls run in a pool of `WRITERS` threads of our own,
over as many pooled connections, so that the event loop (the watch stream, the leadership
keep-alive) never waits on the API server and many objects' writes are in flight at once
(urllib3's default pool of 4 connections capped a churn of 1,000 objects at ~35 writes/s).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import kubernetes
from kubernetes.client.exceptions import ApiException

WRITERS = 16
"""Status writes in flight at once (threads, and pooled connections to the API server)."""

GROUP = "concord.dev"
VERSION = "v1alpha1"
PLURALS = ("leases", "sequences", "concordclusters", "sealedsecrets")

Access = tuple[str, str, str, str]
"""(API group, verb, resource, subresource)."""

NEEDED_ACCESS: tuple[Access, ...] = (
    *(
        (GROUP, verb, plural, sub)
        for plural in PLURALS
        for verb, sub in (
            ("get", ""),
            ("list", ""),
            ("watch", ""),
            ("patch", ""),
            ("patch", "status"),
        )
    ),
    # The Secrets unsealed from SealedSecrets: watched (a Secret changed or deleted by someone
    # else is put back; an adoption annotation is noticed), created, replaced, and deleted
    # when a template's type changes (a Secret's type is immutable).
    *(("", verb, "secrets", "") for verb in ("get", "list", "watch", "create", "update", "delete")),
)
"""What the operator needs on each kind, in every namespace it serves: watching (kopf), its
finalizer and annotations (patch), the status it mirrors, and the Secrets it owns."""

CONFIGMAP_ACCESS: tuple[Access, ...] = tuple(
    ("", verb, "configmaps", "") for verb in ("get", "create", "update")
)
"""In the operator's own namespace: the sealing-certificate ConfigMap."""


class StartupError(Exception):
    """The operator cannot run as configured: the message says what to fix."""


@dataclass(frozen=True, slots=True)
class ObjectGone(Exception):
    """The object was deleted before its status could be written."""

    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Conflict(Exception):
    """The object changed (or appeared, or went) between the read and the write: observe
    again and plan again, rather than overwrite what someone else did."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Invalid(Exception):
    """The API server refused the object as invalid (422): `message` is its own reason,
    e.g. a kubernetes.io/basic-auth Secret without a username."""

    kind: str
    namespace: str
    name: str
    message: str


def _invalid(kind: str, namespace: str, name: str, err: ApiException) -> Invalid:
    try:
        message = str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        message = str(err.reason)
    return Invalid(kind, namespace, name, message)


@dataclass(frozen=True, slots=True)
class ReadFailed(Exception):
    """The API server would not let the operator read (or write an Event about) something
    it only follows: `message` says what and why."""

    message: str


CoreKind = Literal["Secret", "ConfigMap"]


class KubeApi:
    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self._pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="kube-write")

    @classmethod
    def load(cls, kubeconfig: Path | None) -> KubeApi:
        """From a kubeconfig file, or in-cluster (service account) when none is given and the
        process runs in a pod."""
        try:
            if kubeconfig is not None:
                if not kubeconfig.is_file():
                    raise StartupError(
                        f"kubeconfig {kubeconfig} does not exist: pass --kubeconfig PATH (or set "
                        "KUBECONFIG), or run in a pod with a service account"
                    )
                config = _configuration()
                kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(kubeconfig), client_configuration=config
                )
            else:
                config = _configuration()
                kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=config
                )
        except kubernetes.config.ConfigException as err:
            where = kubeconfig or "the in-cluster service account (no --kubeconfig given)"
            raise StartupError(f"cannot load Kubernetes credentials from {where}: {err}") from None
        return cls(kubernetes.client.ApiClient(config))

    def preflight(self, namespaces: list[str], operator_namespace: str = "") -> None:
        """StartupError unless the API server answers, the CRDs exist and RBAC allows
        everything in NEEDED_ACCESS (in each namespace, or cluster-wide) and CONFIGMAP_ACCESS
        in `operator_namespace` (when given)."""
        try:
            found = kubernetes.client.CustomObjectsApi(self.api_client).get_api_resources(
                GROUP, VERSION
            )
        except ApiException as err:
            if err.status == 404:
                raise StartupError(
                    f"the API server has no {GROUP}/{VERSION} resources: install the CRDs "
                    "first (kubectl apply -f crds/)"
                ) from None
            if err.status in (401, 403):
                raise StartupError(
                    f"the API server refused the operator's credentials ({err.status} "
                    f"{err.reason}): check the kubeconfig or service account"
                ) from None
            raise StartupError(f"the API server failed: {err.status} {err.reason}") from None
        except OSError as err:  # urllib3 errors derive from it
            raise StartupError(f"cannot reach the Kubernetes API server: {err}") from None
        names = {r.name for r in found.resources}
        missing = [p for p in PLURALS if p not in names]
        if missing:
            raise StartupError(
                f"CRDs missing for {', '.join(f'{p}.{GROUP}' for p in missing)}: install them "
                "first (kubectl apply -f crds/)"
            )
        authz = kubernetes.client.AuthorizationV1Api(self.api_client)
        denied: list[str] = []
        checks = [(ns, access) for ns in namespaces or [""] for access in NEEDED_ACCESS]
        if operator_namespace:
            checks += [(operator_namespace, access) for access in CONFIGMAP_ACCESS]
        for ns, (group, verb, plural, sub) in checks:
            review = kubernetes.client.V1SelfSubjectAccessReview(
                spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=kubernetes.client.V1ResourceAttributes(
                        group=group,
                        resource=plural,
                        subresource=sub or None,
                        verb=verb,
                        namespace=ns or None,
                    )
                )
            )
            answer = authz.create_self_subject_access_review(review)
            if answer.status is None or not answer.status.allowed:
                what = f"{plural}/{sub}" if sub else plural
                qualified = f"{what}.{group}" if group else what
                denied.append(f"{verb} {qualified} in {ns or 'all namespaces'}")
        if denied:
            raise StartupError(
                "RBAC does not allow the operator to " + "; ".join(denied) + " (grant them in "
                "its ClusterRole or Role)"
            )

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> str:
        """Merge `status` into the object's status; returns the new resourceVersion."""

        def patch() -> Any:  # noqa: ANN401 (the client's untyped answer)
            return self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status}
            )

        try:
            answer = await asyncio.get_running_loop().run_in_executor(self._pool, patch)
        except ApiException as err:
            if err.status == 404:
                raise ObjectGone(namespace, name) from None
            raise
        return str(answer["metadata"]["resourceVersion"])

    # --- core objects: the Secrets it owns, the certificate ConfigMap -----------------------

    async def _call(self, fn: Callable[[], Any]) -> Any:  # noqa: ANN401 (untyped client)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def read(self, kind: CoreKind, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as JSON (the API's field names), or None if there is none."""
        read: Callable[..., Any] = (
            self.core.read_namespaced_secret
            if kind == "Secret"
            else self.core.read_namespaced_config_map
        )
        try:
            obj = await self._call(lambda: read(name, namespace))
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        out: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return out

    async def create(self, kind: CoreKind, namespace: str, body: dict[str, Any]) -> str:
        """Create; returns its resourceVersion. Conflict if it exists by now (someone else
        made it since it was read)."""
        create: Callable[..., Any] = (
            self.core.create_namespaced_secret
            if kind == "Secret"
            else self.core.create_namespaced_config_map
        )
        try:
            made = await self._call(lambda: create(namespace, body))
        except ApiException as err:
            if err.status == 409:
                raise Conflict(kind, namespace, body["metadata"]["name"]) from None
            if err.status == 422:
                raise _invalid(kind, namespace, body["metadata"]["name"], err) from None
            raise
        return str(made.metadata.resource_version)

    async def replace(self, kind: CoreKind, namespace: str, body: dict[str, Any]) -> str:
        """Replace (the body's resourceVersion must still be current, else Conflict);
        returns the new resourceVersion."""
        name = body["metadata"]["name"]
        replace: Callable[..., Any] = (
            self.core.replace_namespaced_secret
            if kind == "Secret"
            else self.core.replace_namespaced_config_map
        )
        try:
            made = await self._call(lambda: replace(name, namespace, body))
        except ApiException as err:
            if err.status in (404, 409):
                raise Conflict(kind, namespace, name) from None
            if err.status == 422:
                raise _invalid(kind, namespace, name, err) from None
            raise
        return str(made.metadata.resource_version)

    async def delete_secret(self, namespace: str, name: str, resource_version: str) -> None:
        """Delete the Secret only if it is still the version read (never someone else's)."""
        options = kubernetes.client.V1DeleteOptions(
            preconditions=kubernetes.client.V1Preconditions(resource_version=resource_version)
        )
        try:
            await self._call(
                lambda: self.core.delete_namespaced_secret(name, namespace, body=options)
            )
        except ApiException as err:
            if err.status in (404, 409):
                raise Conflict("Secret", namespace, name) from None
            raise

    # --- the injection webhook ---------------------------------------------------------------

    async def create_event(
        self, namespace: str, involved: dict[str, Any], reason: str, message: str
    ) -> None:
        """A Warning Event about `involved` (core/v1, what `kubectl describe` lists)."""
        now = dt.datetime.now(dt.UTC)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{involved.get('name') or 'concord'}.",
                "namespace": namespace,
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": "Warning",
            "source": {"component": "concord-operator"},
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        await self._call(lambda: self.core.create_namespaced_event(namespace, body))  # type: ignore[arg-type]

    async def ensure_ca_bundle(self, configuration: str, ca_bundle_b64: str) -> bool:
        """Set every webhook's caBundle in MutatingWebhookConfiguration `configuration`;
        True if anything changed (a JSON patch per webhook, guarded by a test of its name)."""
        admission = kubernetes.client.AdmissionregistrationV1Api(self.api_client)
        current = await self._call(
            lambda: admission.read_mutating_webhook_configuration(configuration)
        )
        ops: list[dict[str, Any]] = []
        for i, hook in enumerate(current.webhooks or []):
            if hook.client_config.ca_bundle == ca_bundle_b64:
                continue
            ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.name})
            ops.append(
                {
                    "op": "add",
                    "path": f"/webhooks/{i}/clientConfig/caBundle",
                    "value": ca_bundle_b64,
                }
            )
        if not ops:
            return False
        await self._call(lambda: admission.patch_mutating_webhook_configuration(configuration, ops))
        return True

    # --- the coordinator's StatefulSet (read only) and Events -------------------------------

    async def read_statefulset(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The StatefulSet as JSON, or None if there is none."""
        try:
            obj = await self._call(lambda: self.apps.read_namespaced_stateful_set(name, namespace))
        except ApiException as err:
            if err.status == 404:
                return None
            raise ReadFailed(
                f"cannot read StatefulSet {namespace}/{name}: {err.status} {err.reason}"
            ) from None
        out: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return out

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """The pods matching `labels`, as JSON."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        try:
            found = await self._call(
                lambda: self.core.list_namespaced_pod(namespace, label_selector=selector)
            )
        except ApiException as err:
            raise ReadFailed(
                f"cannot list pods in {namespace}: {err.status} {err.reason}"
            ) from None
        out: list[dict[str, Any]] = [
            self.api_client.sanitize_for_serialization(p)  # type: ignore[no-untyped-call]
            for p in found.items
        ]
        return out

    async def record_event(
        self, kind: str, namespace: str, name: str, uid: str, reason: str, *, message: str
    ) -> None:
        """A Warning Event about a custom resource (`kubectl describe` shows it)."""
        involved = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "namespace": namespace,
            "name": name,
            "uid": uid,
        }
        try:
            await self.create_event(namespace, involved, reason, message[:1024])
        except ApiException as err:
            raise ReadFailed(f"cannot record an Event: {err.status} {err.reason}") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()  # type: ignore[no-untyped-call]


def _configuration() -> kubernetes.client.Configuration:
    config = kubernetes.client.Configuration()
    config.connection_pool_maxsize = WRITERS
    return config
