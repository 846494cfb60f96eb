"""kopf handlers: decorators only, each translating one kopf trigger into the controller.

All are coroutines: kopf runs plain functions in a thread pool, and the controller lives on
the event loop.

Create, update and resume all say the same thing, "this object exists with this spec", and
end in `Controller.upsert`; the reconcile is level-based, so which one fired does not matter.
Delete runs the finalizer (`Controller.finalize`) and is retried by kopf until the
coordinator state is released. kopf keeps its bookkeeping in annotations, not in status (the
CRDs' structural schemas would prune it, and status belongs to the mirror).

A SealedSecret's finalizer deletes its ciphertext record from the coordinator (the one
sidecars deliver as files from); the Secret it owns is deleted by Kubernetes' garbage
collector (its ownerReference). Secrets are watched
(one event handler, no kopf bookkeeping on them) so that a Secret deleted or edited by hand,
or offered for adoption, has its SealedSecret reconciled again.

The controller reaches the handlers through kopf's `memo` (set by `__main__`), so importing
this module only registers the handlers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import kopf

from .controller import Controller, NotNow
from .kube import GROUP, VERSION
from .reconcile import CLUSTERS, LEASES, SEALED_SECRETS, SEQUENCES
from .webhook import WEBHOOK_ID, Injector

FINALIZER = f"{GROUP}/release"
RETRY_DELAY_S = 2.0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: object) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # The apiserver ends a watch after this long; kopf reconnects (and lists) afterwards.
    settings.watching.server_timeout = 300
    # The injection webhook's server, when __main__ made one (`enable_injection`). The chart
    # registers the MutatingWebhookConfiguration, so kopf manages none (`managed` unset).
    server = memo.get("webhook_server")
    if server is not None:
        settings.admission.server = server


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: object) -> kopf.ConnectionInfo | None:
    # The kubeconfig __main__ was given (exported as KUBECONFIG), else the pod's account.
    return kopf.login_with_kubeconfig(settings=settings) or _in_cluster(settings)


def _in_cluster(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """The pod's ServiceAccount, at the API server the kubelet names in
    KUBERNETES_SERVICE_HOST/PORT, as client-go and the kubernetes client find it. kopf's own
    service-account login dials the fixed name kubernetes.default.svc:443 instead, which
    only works where the cluster DNS and the `kubernetes` Service's virtual IP do."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    info = kopf.login_with_service_account(settings=settings)
    if info is None or not host:
        return info
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return dataclasses.replace(info, server=server)


def _controller(memo: kopf.Memo) -> Controller:
    controller: Controller = memo["controller"]
    return controller


@kopf.on.resume(GROUP, VERSION, LEASES)
@kopf.on.create(GROUP, VERSION, LEASES)
@kopf.on.update(GROUP, VERSION, LEASES, field="spec")
async def lease_exists(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    _controller(memo).upsert(LEASES, body)


@kopf.on.resume(GROUP, VERSION, SEQUENCES)
@kopf.on.create(GROUP, VERSION, SEQUENCES)
@kopf.on.update(GROUP, VERSION, SEQUENCES, field="spec")
async def sequence_exists(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    _controller(memo).upsert(SEQUENCES, body)


@kopf.on.resume(GROUP, VERSION, CLUSTERS)
@kopf.on.create(GROUP, VERSION, CLUSTERS)
@kopf.on.update(GROUP, VERSION, CLUSTERS, field="spec")
async def cluster_exists(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    _controller(memo).upsert(CLUSTERS, body)


@kopf.on.delete(GROUP, VERSION, CLUSTERS, optional=True)
async def cluster_deleted(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    # Nothing in the coordinator to release (optional: no finalizer); stop mirroring it.
    meta = body.get("metadata") or {}
    _controller(memo).forget((CLUSTERS, str(meta.get("namespace")), str(meta.get("name"))))


@kopf.on.delete(GROUP, VERSION, LEASES)
async def lease_deleted(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    try:
        await _controller(memo).finalize(LEASES, body)
    except NotNow as err:
        raise kopf.TemporaryError(str(err), delay=RETRY_DELAY_S) from None


@kopf.on.delete(GROUP, VERSION, SEQUENCES)
async def sequence_deleted(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    try:
        await _controller(memo).finalize(SEQUENCES, body)
    except NotNow as err:
        raise kopf.TemporaryError(str(err), delay=RETRY_DELAY_S) from None


@kopf.on.resume(GROUP, VERSION, SEALED_SECRETS)
@kopf.on.create(GROUP, VERSION, SEALED_SECRETS)
@kopf.on.update(GROUP, VERSION, SEALED_SECRETS, field="spec")
async def sealed_secret_exists(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    _controller(memo).upsert(SEALED_SECRETS, body)


@kopf.on.delete(GROUP, VERSION, SEALED_SECRETS)
async def sealed_secret_finalize(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    try:
        await _controller(memo).finalize(SEALED_SECRETS, body)
    except NotNow as err:
        raise kopf.TemporaryError(str(err), delay=RETRY_DELAY_S) from None


def _deleted(event: kopf.RawEvent, **_: object) -> bool:
    return event.get("type") == "DELETED"


def _of_a_sealed_secret(
    name: str | None, namespace: str | None, memo: kopf.Memo, **_: object
) -> bool:
    # Filtered before the handler runs, so Secrets that are none of ours cost no handler
    # call and no log line.
    return (SEALED_SECRETS, str(namespace), str(name)) in _controller(memo).objects


@kopf.on.event(GROUP, VERSION, SEALED_SECRETS, when=_deleted)
async def sealed_secret_deleted(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    # Stop tracking it at once, so that the garbage collector's deletion of its Secret is
    # not taken for a Secret to put back.
    meta = body.get("metadata") or {}
    _controller(memo).forget((SEALED_SECRETS, str(meta.get("namespace")), str(meta.get("name"))))


@kopf.on.event("v1", "secrets", when=_of_a_sealed_secret)
async def secret_event(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    # Only the name and version are passed on: the Secret's data is never looked at here.
    meta = body.get("metadata") or {}
    _controller(memo).secret_changed(
        str(meta.get("namespace")), str(meta.get("name")), str(meta.get("resourceVersion"))
    )


async def inject_sidecar(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    dryrun: bool,
    memo: kopf.Memo,
    namespace: str | None,
    **_: object,
) -> None:
    # The new pod replaces the body as kopf diffs it into the JSON patch it answers with.
    injector: Injector = memo["injector"]
    pod = dict(body)

    def apply(new: dict[str, Any]) -> None:
        def replace(raw: kopf.RawBody) -> None:
            raw["metadata"] = new["metadata"]
            raw["spec"] = new["spec"]

        patch.fns.append(replace)

    await injector.admit(
        pod,
        str(namespace or body.get("metadata", {}).get("namespace") or ""),
        dryrun,
        apply,
        warnings.append,
    )


def enable_injection() -> None:
    """Registers the mutating handler for pod creation. Called by __main__ only when the
    webhook is served: kopf refuses to start with admission handlers and no server."""
    kopf.on.mutate("v1", "pods", id=WEBHOOK_ID, operations=["CREATE"], side_effects=True)(
        inject_sidecar
    )


def _followed_statefulset(
    name: str | None, namespace: str | None, memo: kopf.Memo, **_: object
) -> bool:
    # Only the StatefulSets a ConcordCluster follows (spec.statefulSetName) reach the handler.
    return any(
        key[0] == CLUSTERS and key[1] == namespace and t.spec.get("statefulSetName") == name
        for key, t in _controller(memo).objects.items()
    )


@kopf.on.event("apps", "v1", "statefulsets", when=_followed_statefulset)
async def statefulset_event(body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
    # A scale (spec.replicas) or its pods coming and going (status): membership may follow.
    meta = body.get("metadata") or {}
    _controller(memo).statefulset_changed(str(meta.get("namespace")), str(meta.get("name")))
