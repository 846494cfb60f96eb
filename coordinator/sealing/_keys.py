"""Sealing key pairs and their certificates.

A sealing key is an RSA-4096 key pair. Its public half travels as a self-signed X.509
certificate, the way kubeseal's does: `concordctl seal --cert FILE` works offline, and the
certificate says by itself that it is Concord's (subject O=Concord, OU=sealing, and a URI
subject alternative name `concord://sealing-key/<key id>` that must match the key) and until
when it may be used. The private half is PKCS#8 DER; it exists only in the coordinator's
replicated state (see `coordinator.fsm.sealing_keys`), which is encrypted wherever it is on
disk, and nothing ever returns it.

Generating a key reads a random source and the clock, so it happens on the member that
proposes the key, never in the state machine: the state machine stores what was proposed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ._envelope import KEY_ID_BYTES, key_id_of

KEY_BITS = 4096
CERT_VALIDITY_DAYS = 3650
"""Like kubeseal's; renewal (every 30 days by default) makes a newer one long before."""
KEY_URI_PREFIX = "concord://sealing-key/"
_BACKDATE = dt.timedelta(minutes=5)


class CertificateError(ValueError):
    """A certificate that cannot be sealed to: unreadable, not Concord's, expired."""


@dataclass(frozen=True, slots=True)
class SealingKeyPair:
    key_id: bytes
    private_key_der: bytes
    """PKCS#8 DER, unencrypted: only ever inside the replicated state."""
    certificate_pem: bytes


@dataclass(frozen=True, slots=True)
class SealingCertificate:
    """A certificate checked as Concord's and valid at the time it was loaded."""

    public_key: rsa.RSAPublicKey
    key_id: bytes
    not_after: dt.datetime

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()


def _name(key_id: bytes) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Concord"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "sealing"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"concord-sealing-key-{key_id.hex()}"),
        ]
    )


def sealing_certificate(
    private_key: rsa.RSAPrivateKey, not_before: dt.datetime, not_after: dt.datetime
) -> bytes:
    """The self-signed certificate (PEM) of a sealing key, valid in [not_before, not_after]."""
    key_id = key_id_of(private_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(key_id))
        .issuer_name(_name(key_id))
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(KEY_URI_PREFIX + key_id.hex())]
            ),
            critical=False,
        )
        .sign(private_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def new_sealing_key(
    now: dt.datetime, *, validity_days: int = CERT_VALIDITY_DAYS, bits: int = KEY_BITS
) -> SealingKeyPair:
    """A fresh key pair and its certificate (on the proposing member: reads randomness)."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = sealing_certificate(private_key, now - _BACKDATE, now + dt.timedelta(days=validity_days))
    return SealingKeyPair(key_id_of(private_key.public_key()), der, pem)


def load_private_key(der: bytes) -> rsa.RSAPrivateKey:
    """A stored sealing private key (PKCS#8 DER). ValueError if it is not an RSA key."""
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("a sealing private key is an RSA key")
    return key


def load_sealing_certificate(pem: bytes, now: dt.datetime) -> SealingCertificate:
    """Check that `pem` is a Concord sealing certificate valid at `now`; CertificateError
    with a precise message otherwise."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CertificateError("not a PEM X.509 certificate") from None
    public_key = cert.public_key()
    try:
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    named = [u[len(KEY_URI_PREFIX) :] for u in uris if u.startswith(KEY_URI_PREFIX)]
    if named and not isinstance(public_key, rsa.RSAPublicKey):
        raise CertificateError(
            f"the certificate names sealing key {named[0]}, but its key is "
            f"{type(public_key).__name__.removeprefix('_')}, not RSA: Concord's sealing keys "
            f"are RSA-{KEY_BITS}"
        )
    if not isinstance(public_key, rsa.RSAPublicKey) or not named:
        raise CertificateError(
            f"not a Concord sealing certificate (subject {cert.subject.rfc4514_string()}): it "
            f"names no {KEY_URI_PREFIX}<id>; get the cluster's with `concordctl seal "
            "--fetch-cert` or from the operator's ConfigMap"
        )
    key_id = key_id_of(public_key)
    if named != [key_id.hex()] or len(key_id) != KEY_ID_BYTES:
        raise CertificateError(
            f"the certificate names sealing key {named[0]}, but its public key is "
            f"{key_id.hex()}: it is not a certificate Concord issued"
        )
    if public_key.key_size < KEY_BITS:
        raise CertificateError(
            f"the sealing key is RSA-{public_key.key_size}; Concord's are RSA-{KEY_BITS}"
        )
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            "the certificate's self-signature does not verify: it is not Concord's, or it "
            "was altered"
        ) from None
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            f"the sealing certificate of key {key_id.hex()} expired at "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; fetch the current one"
        )
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"the sealing certificate of key {key_id.hex()} is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this machine's clock right?)"
        )
    return SealingCertificate(public_key, key_id, cert.not_valid_after_utc)
