"""EndpointSlices for the agent's pods, so that the API server can call a webhook (or an
aggregated API) through a Service, as it does in a real cluster.

Why this exists. Nothing routes a ClusterIP here (no kube-proxy), so the control plane runs
kube-apiserver with `--enable-aggregator-routing=true`: a service reference is resolved to
one ready endpoint read from the Service's EndpointSlices. The controller-manager's
EndpointSlice controller cannot write this agent's pods into slices, though: validation
refuses loopback addresses (`ValidateEndpointIP`), and pods here have loopback addresses. A slice
of address type FQDN is validated as a domain name only, an IPv4 address passes as one, and the
API server's resolver (k8s.io/apiserver pkg/util/proxy.ResolveEndpoint) uses
`addresses[0]` as it is, whatever the type. So the agent writes, per Service with a
selector, one FQDN slice `SVC-nodeagent` (managed-by `nodeagent.concord.dev`, which the
EndpointSlice controller leaves alone) with the selected pods' addresses and readiness.

Test tooling: a real cluster's slices come from its own controller, with pod IPs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._kube import Kube, KubeError

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MANAGED_BY = "nodeagent.concord.dev"
SUFFIX = "-nodeagent"


@dataclass(frozen=True, slots=True)
class Endpoint:
    namespace: str
    name: str
    uid: str
    ip: str
    ready: bool
    labels: Mapping[str, str]
    containers: Sequence[Mapping[str, Any]]
    """Containers and init containers (a native sidecar's ports count too)."""


def _target_port(port: Mapping[str, Any], endpoints: Sequence[Endpoint]) -> int:
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    for ep in endpoints:
        for c in ep.containers:
            for p in c.get("ports") or []:
                if p.get("name") == target:
                    return int(p["containerPort"])
    return int(port["port"])


def desired_slices(services: Sequence[Obj], endpoints: Sequence[Endpoint]) -> dict[str, Obj]:
    """NAMESPACE/NAME of each slice -> its body, for every Service with a selector."""
    out: dict[str, Obj] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector:
            continue
        ns = meta["namespace"]
        selected = [
            ep
            for ep in endpoints
            if ep.namespace == ns and all(ep.labels.get(k) == v for k, v in selector.items())
        ]
        name = f"{meta['name']}{SUFFIX}"[:63]
        out[f"{ns}/{name}"] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {
                    "kubernetes.io/service-name": meta["name"],
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                },
            },
            "addressType": "FQDN",
            "endpoints": [
                {
                    "addresses": [ep.ip],
                    "conditions": {"ready": ep.ready},
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": ns,
                        "name": ep.name,
                        "uid": ep.uid,
                    },
                }
                for ep in sorted(selected, key=lambda e: e.name)
            ],
            "ports": [
                {
                    "name": p.get("name", ""),
                    "port": _target_port(p, selected),
                    "protocol": p.get("protocol", "TCP"),
                }
                for p in spec.get("ports") or []
            ],
        }
    return out


class SliceMirror:
    """Writes `desired_slices` when they change; deletes the ones no longer wanted."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._written: dict[str, Obj] = {}
        self._listed = False

    def sync(self, services: Sequence[Obj], endpoints: Sequence[Endpoint]) -> None:
        if not self._listed:  # slices a previous agent left behind
            found = self.kube.get(
                "/apis/discovery.k8s.io/v1/endpointslices",
                labelSelector=f"endpointslice.kubernetes.io/managed-by={MANAGED_BY}",
            )["items"]
            self._written = {
                f"{s['metadata']['namespace']}/{s['metadata']['name']}": {} for s in found
            }
            self._listed = True
        want = desired_slices(services, endpoints)
        for key, body in want.items():
            if self._written.get(key) == body:
                continue
            ns, name = key.split("/", 1)
            path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
            try:
                if key in self._written:
                    self.kube.request("PUT", f"{path}/{name}", body)
                else:
                    self.kube.create(path, body)
            except KubeError as err:
                if err.status == 409:  # exists already (left behind): replace it next time
                    self._written[key] = {}
                    continue
                if err.status == 404 and key in self._written:  # deleted under us
                    del self._written[key]
                    continue
                log.warning("EndpointSlice %s: %s", key, err)
                continue
            self._written[key] = body
        for key in [k for k in self._written if k not in want]:
            self._delete(key)

    def close(self) -> None:
        for key in list(self._written):
            self._delete(key)

    def _delete(self, key: str) -> None:
        ns, name = key.split("/", 1)
        try:
            self.kube.delete(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}")
        except KubeError as err:
            if err.status != 404:
                log.warning("EndpointSlice %s: %s", key, err)
                return
        self._written.pop(key, None)
