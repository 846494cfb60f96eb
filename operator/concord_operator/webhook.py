"""The sidecar-injection webhook's plumbing: its TLS identity, the caBundle, and what it does
around the pure `injection.inject` (the CA ConfigMap, Events).

TLS, and why the operator makes its own certificate. The API server calls the webhook over
HTTPS through the Service the chart names, and trusts only the `caBundle` of the
MutatingWebhookConfiguration. At start the acting replica makes a fresh CA and a serving
certificate for `SERVICE.NAMESPACE.svc` in memory, patches the caBundle with the CA, and
only then serves. Compared with helm's genCA + lookup, nothing depends on how the chart was
rendered (`helm template`, GitOps tools and `--dry-run` get no lookup and would mint a new
pair on every render), and no private key is ever stored in the cluster: a restart simply
re-keys. Compared with the chart's CA bootstrap Job, no hook ordering is involved, and the
Concord CA (which certifies members) is not made a trust anchor of the API server. The
chart's template leaves caBundle out, so `helm upgrade` (a three-way merge) keeps what the
operator wrote; the operator re-asserts it every `CA_BUNDLE_CHECK_S` anyway, in case
something (a `--force` upgrade, a GitOps sync) wrote it back empty. Only the leader serves
and patches: standbys are not Ready, so the Service has no endpoint on them.

Side effects (the configuration says `sideEffects: NoneOnDryRun`): for a pod it injects, the
CA ConfigMap the sidecar mounts is created in the pod's namespace if missing; for a pod it
refuses, an Event (type Warning, reason `ConcordInjectionSkipped`) says why. Neither is done
for a dry run, and neither failing stops the admission: a pod is never rejected here.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from coordinator import pki

from .injection import Injected, Refused, Settings, ca_configmap, inject
from .kube import Conflict, KubeApi

log = logging.getLogger(__name__)

WEBHOOK_ID = "inject-sidecar"
"""kopf's handler id, and so the URL path the configuration's service reference names."""
CA_BUNDLE_CHECK_S = 60.0
CA_CHECK_S = 30.0
EVENT_REASON = "ConcordInjectionSkipped"
CERT_LIFETIME = dt.timedelta(days=365)


@dataclass(frozen=True, slots=True)
class ServingIdentity:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path) -> tuple[Path, Path]:
        """The certificate and key as files for kopf's server (it loads files only, and
        re-reads them when they change). `directory` should be in memory (the chart mounts
        an emptyDir of medium Memory): the key is never meant to reach a disk."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert, key = directory / "tls.crt", directory / "tls.key"
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        cert.write_bytes(self.cert_pem)
        return cert, key


def serving_identity(dns_names: list[str], now: dt.datetime | None = None) -> ServingIdentity:
    """A fresh CA and a serving certificate signed by it for `dns_names` (the first is the
    subject's CN). P-256 keys (`coordinator.pki`): quick to make at every start."""
    now = now or pki.now_utc()
    not_before, not_after = now - pki.BACKDATE, now + CERT_LIFETIME
    ca_key = pki.new_key()
    ca = pki.build_ca_cert(
        ca_key,
        pki.subject_name("concord-injection-webhook-ca"),
        not_before=not_before,
        not_after=not_after,
    )
    key = pki.new_key()
    cert = pki.build_leaf_cert(
        ca,
        ca_key,
        key.public_key(),
        pki.subject_name(dns_names[0]),
        not_before=not_before,
        not_after=not_after,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=[x509.DNSName(n) for n in dns_names],
        key_agreement=False,
    )
    return ServingIdentity(
        ca_pem=pki.cert_pem(ca), cert_pem=pki.cert_pem(cert), key_pem=pki.key_pem(key)
    )


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may check the certificate for (it uses SERVICE.NS.svc)."""
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}", service]


class Injector:
    """Called by the kopf mutate handler for every pod the configuration sends here."""

    def __init__(
        self,
        settings: Settings,
        kube: KubeApi,
        ca_pem: str,
        *,
        configuration: str,
        ca_bundle: bytes,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.ca_pem = ca_pem
        self.configuration = configuration
        self.ca_bundle = ca_bundle
        self._published: dict[str, float] = {}
        """Namespace -> loop time its CA ConfigMap was last seen current: checked again after
        CA_CHECK_S, so one deleted by hand comes back with the next injected pod."""

    async def admit(
        self,
        pod: Mapping[str, Any],
        namespace: str,
        dry_run: bool,
        apply: Callable[[dict[str, Any]], None],
        warn: Callable[[str], None],
    ) -> None:
        """Never raises: anything unexpected admits the pod unchanged, with an Event."""
        try:
            outcome = inject(pod, self.settings)
        except Exception as err:  # a pod shape nobody thought of: fail open, say so
            log.exception("injection failed")
            outcome = Refused(f"injection failed: {err!r}")
        if isinstance(outcome, Injected):
            if not dry_run:
                await self._publish_ca(namespace)
            apply(outcome.pod)
            return
        if isinstance(outcome, Refused):
            message = f"concord-sidecar not injected: {outcome.reason}"
            warn(message)
            log.warning("%s/%s: %s", namespace, _pod_name(pod), message)
            if not dry_run:
                await self._event(pod, namespace, message)

    async def _publish_ca(self, namespace: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._published.get(namespace, -CA_CHECK_S) < CA_CHECK_S:
            return
        name = self.settings.ca_configmap
        body = ca_configmap(name, namespace, self.ca_pem)
        try:
            current = await self.kube.read("ConfigMap", namespace, name)
            if current is None:
                await self.kube.create("ConfigMap", namespace, body)
            elif (current.get("data") or {}).get("ca.pem") != self.ca_pem:
                labels = (current.get("metadata") or {}).get("labels") or {}
                if labels.get("app.kubernetes.io/managed-by") != "concord-operator":
                    log.warning("%s/%s is not the operator's: left as it is", namespace, name)
                    return
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                await self.kube.replace("ConfigMap", namespace, body)
            self._published[namespace] = now
        except Conflict:
            pass  # made or changed concurrently: the next injection checks again
        except Exception:  # the pod is still admitted; its sidecar waits for the ConfigMap
            log.exception("cannot publish the CA ConfigMap in %s", namespace)

    async def _event(self, pod: Mapping[str, Any], namespace: str, message: str) -> None:
        try:
            await self.kube.create_event(
                namespace, _involved(pod, namespace), EVENT_REASON, message
            )
        except Exception:
            log.exception("cannot record the Event for %s/%s", namespace, _pod_name(pod))

    async def keep_ca_bundle(self) -> None:
        """Write the caBundle now and re-assert it every CA_BUNDLE_CHECK_S."""
        encoded = base64.b64encode(self.ca_bundle).decode("ascii")
        while True:
            try:
                if await self.kube.ensure_ca_bundle(self.configuration, encoded):
                    log.info("caBundle of %s set to this replica's CA", self.configuration)
            except Exception as err:  # retried; until then the API server fails open
                log.warning("cannot set the caBundle of %s: %s", self.configuration, err)
            await asyncio.sleep(CA_BUNDLE_CHECK_S)


def _pod_name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return str(meta.get("name") or meta.get("generateName") or "?")


def _involved(pod: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The object the Event is about. A pod made by a controller has no name yet at
    admission (generateName only): then its controlling owner, where `kubectl describe`
    of the ReplicaSet, Job, ... shows it."""
    meta = pod.get("metadata") or {}
    if not meta.get("name"):
        for ref in meta.get("ownerReferences") or []:
            if ref.get("controller"):
                return {
                    "apiVersion": ref.get("apiVersion"),
                    "kind": ref.get("kind"),
                    "name": ref.get("name"),
                    "uid": ref.get("uid"),
                    "namespace": namespace,
                }
    return {"apiVersion": "v1", "kind": "Pod", "name": _pod_name(pod), "namespace": namespace}
