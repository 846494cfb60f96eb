"""The test control plane's throw-away PKI (made with `cryptography`, no openssl): a CA that
issues the serving and client certificates, and kubeconfigs for its users."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.x509.oid import ExtendedKeyUsageOID

from coordinator import pki


@dataclass(frozen=True)
class _Issued:
    cert_pem: bytes
    key_pem: bytes


class _Pki:
    """A CA valid for a day, and certificates it signs (the cluster lives for one test run),
    built by `coordinator.pki` like every certificate of the project."""

    def __init__(self) -> None:
        self._ca_key = pki.new_key()
        now = pki.now_utc()
        self._not_before = now - pki.BACKDATE
        self._not_after = now + dt.timedelta(days=1)
        self.ca_cert = pki.build_ca_cert(
            self._ca_key,
            pki.subject_name("concord-test-kubernetes-ca"),
            not_before=self._not_before,
            not_after=self._not_after,
            digital_signature=True,
        )
        self.ca_pem = pki.cert_pem(self.ca_cert)
        self.ca_key_pem = pki.key_pem(self._ca_key)

    def issue(
        self,
        common_name: str,
        *,
        organization: str | None = None,
        server_names: Sequence[str] = (),
    ) -> _Issued:
        """A client certificate, or a serving one when `server_names` (DNS names or IPs).
        Kubernetes reads a client certificate's O as the user's groups."""
        key = pki.new_key()
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else []
        usage.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        cert = pki.build_leaf_cert(
            self.ca_cert,
            self._ca_key,
            key.public_key(),
            pki.subject_name(common_name, organization),
            not_before=self._not_before,
            not_after=self._not_after,
            usages=usage,
            sans=pki.host_sans(server_names),
            key_agreement=False,
        )
        return _Issued(pki.cert_pem(cert), pki.key_pem(key))


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def kubeconfig_yaml(server: str, ca_pem: bytes, user: str, client: _Issued) -> str:
    """A kubeconfig with everything embedded (JSON is YAML), so it works from any directory
    and for every client library (kubectl, helm, kopf, the kubernetes package)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "concord-test",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert_pem),
                    "client-key-data": b64(client.key_pem),
                },
            }
        ],
        "contexts": [
            {"name": "concord-test", "context": {"cluster": "concord-test", "user": user}}
        ],
        "current-context": "concord-test",
        "preferences": {},
    }
    return json.dumps(config, indent=2) + "\n"
