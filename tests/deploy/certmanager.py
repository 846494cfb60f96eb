"""What the cert-manager tests share: cert-manager's CRDs (vendored, fixtures/cert-manager/)
and `issue_like_cert_manager`, the certificate a cert-manager CA issuer makes from a
Certificate's spec, for tests that cannot run cert-manager's controller (it does not build
here: one of its modules is not served by the module proxy)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.pki import CertifiedKey

CRDS = Path(__file__).parent / "fixtures" / "cert-manager"

# cert-manager's names for the X.509 key usages (its Certificate's `usages` enum).
KEY_USAGES = {"digital_signature": "digital signature", "key_agreement": "key agreement"}
EXTENDED = {
    ExtendedKeyUsageOID.SERVER_AUTH: "server auth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "client auth",
}


def issue_like_cert_manager(ca: CertifiedKey, spec: dict[str, Any]) -> CertifiedKey:
    """The certificate a cert-manager CA issuer makes from Certificate `spec` (the fields
    the chart sets), with a fresh key of the algorithm and size it asks for."""
    assert spec["privateKey"] == {
        "algorithm": "ECDSA",
        "size": 256,
        "encoding": "PKCS8",
        "rotationPolicy": "Always",
    }
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.get("dnsNames", [])]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in spec.get("ipAddresses", [])]
    sans += [x509.UniformResourceIdentifier(u) for u in spec.get("uris", [])]
    usages = set(spec["usages"])
    by_name = {v: k for k, v in EXTENDED.items()}
    flags = {k: v in usages for k, v in KEY_USAGES.items()}
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
                **flags,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([by_name[u] for u in sorted(usages) if u in by_name]),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.private_key(), hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CertifiedKey(cert.public_bytes(serialization.Encoding.PEM), key_pem)
