"""The webhook's plumbing without a cluster: the serving identity verifies for the Service's
name under its own CA; `Injector.admit` applies an injection, reports a refusal (warning and
Event), publishes the CA ConfigMap, and does neither side effect on a dry run."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any, cast

from cryptography import x509

from concord_operator.injection import Settings
from concord_operator.kube import KubeApi
from concord_operator.webhook import Injector, service_dns_names, serving_identity


def test_the_serving_certificate_verifies_for_the_service_name(tmp_path: Path) -> None:
    names = service_dns_names("concord-operator", "concord")
    assert names[0] == "concord-operator.concord.svc"
    identity = serving_identity(names)
    cert, key = identity.write(tmp_path / "tls")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cadata=identity.ca_pem.decode())
    leaf = x509.load_pem_x509_certificate(identity.cert_pem)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == names

    async def handshake() -> None:
        async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
        port = srv.sockets[0].getsockname()[1]
        _, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=names[0]
        )
        w.close()
        srv.close()
        await srv.wait_closed()

    asyncio.run(handshake())


class FakeKube:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str, str]] = []
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}

    async def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.configmaps.get((namespace, name))

    async def create(self, kind: str, namespace: str, body: dict[str, Any]) -> str:
        self.configmaps[(namespace, body["metadata"]["name"])] = body
        return "1"

    async def create_event(
        self, namespace: str, involved: dict[str, Any], reason: str, message: str
    ) -> None:
        self.events.append((namespace, involved, reason, message))


def _admit(pod: dict[str, Any], *, dry_run: bool) -> tuple[FakeKube, list[Any], list[str]]:
    kube = FakeKube()
    injector = Injector(
        Settings(image="i:1", endpoints="e:1"),
        cast(KubeApi, kube),
        "CA PEM",
        configuration="c",
        ca_bundle=b"x",
    )
    applied: list[Any] = []
    warnings: list[str] = []
    asyncio.run(injector.admit(pod, "ns", dry_run, applied.append, warnings.append))
    return kube, applied, warnings


def _pod(annotations: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "annotations": annotations, **meta},
        "spec": {"containers": [{"name": "a"}]},
    }


def test_an_injection_is_applied_and_the_ca_published() -> None:
    kube, applied, warnings = _admit(_pod({"concord.dev/inject": "true"}, name="p"), dry_run=False)
    (new,) = applied
    assert new["spec"]["initContainers"][0]["name"] == "concord-sidecar"
    assert warnings == [] and kube.events == []
    assert kube.configmaps[("ns", "concord-ca")]["data"] == {"ca.pem": "CA PEM"}


def test_a_refusal_warns_and_records_an_event_on_the_owner() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1",
             "controller": True}  # fmt: skip
    pod = _pod({"concord.dev/inject": "maybe"}, generateName="rs-", ownerReferences=[owner])
    kube, applied, warnings = _admit(pod, dry_run=False)
    assert applied == []
    (warning,) = warnings
    assert warning.startswith("concord-sidecar not injected: concord.dev/inject='maybe'")
    ((ns, involved, reason, message),) = kube.events
    assert (ns, reason, message) == ("ns", "ConcordInjectionSkipped", warning)
    assert involved == {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                        "uid": "u1", "namespace": "ns"}  # fmt: skip


def test_a_dry_run_has_no_side_effects() -> None:
    kube, applied, _ = _admit(_pod({"concord.dev/inject": "true"}, name="p"), dry_run=True)
    assert len(applied) == 1 and kube.configmaps == {}
    kube, applied, warnings = _admit(_pod({"concord.dev/inject": "?"}, name="p"), dry_run=True)
    assert applied == [] and len(warnings) == 1 and kube.events == []
