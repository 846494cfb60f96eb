"""A member's TLS directory and the PEM files in it.

A member's TLS directory (`--tls-dir`) holds `ca.pem`, `member.pem` and `member-key.pem`;
`load_member_tls` reads them and checks, before any socket is opened, that the key matches
the certificate, the certificate was issued by the CA and is within its validity period,
so a misconfiguration is reported as such and not as a failed handshake later. Every file is
written atomically with mode 0600 (`write_pem`).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .certs import CertifiedKey, TlsError, member_id_of, now_utc

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
MEMBER_CERT_FILE = "member.pem"
MEMBER_KEY_FILE = "member-key.pem"
_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class MemberTls:
    """What a member needs for mutual TLS: the cluster CA and its own certified key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    not_after: dt.datetime
    member_id: int | None = None
    """The member id the certificate is bound to (None: an unbound, older certificate)."""


def load_ca_key(ca_pem: bytes, key_path: Path) -> CertifiedKey:
    """The cluster CA with its key (`--ca-key-file`), checked to belong together."""
    key_pem = _read(key_path, "the cluster CA key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
    except (ValueError, TypeError) as err:
        raise TlsError(f"{key_path}: not an unencrypted PEM key: {err}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != ca_cert.public_key().public_bytes(serialization.Encoding.DER, public):
        raise TlsError(
            f"{key_path} is not the key of the cluster CA in ca.pem (the CA key of another "
            "cluster?)"
        )
    return CertifiedKey(ca_pem, key_pem)


# --- files -------------------------------------------------------------------------------------


def write_pem(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600 (temp file, fsync, rename)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_ca(tls_dir: Path, ca: CertifiedKey) -> None:
    """The CA certificate and key (the key belongs where certificates are issued)."""
    write_pem(tls_dir / CA_KEY_FILE, ca.key_pem)
    write_pem(tls_dir / CA_FILE, ca.cert_pem)


def write_member_tls(tls_dir: Path, ca_pem: bytes, member: CertifiedKey) -> None:
    """A member's --tls-dir: ca.pem, member.pem, member-key.pem (no CA key)."""
    write_pem(tls_dir / CA_FILE, ca_pem)
    write_pem(tls_dir / MEMBER_KEY_FILE, member.key_pem)
    write_pem(tls_dir / MEMBER_CERT_FILE, member.cert_pem)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} {path} is missing") from None
    except OSError as err:
        raise TlsError(f"cannot read {what} {path}: {err.strerror}") from None


def load_member_tls(tls_dir: Path, *, now: dt.datetime | None = None) -> MemberTls:
    """Read and check a member's TLS directory (see the module docstring)."""
    ca_pem = _read(tls_dir / CA_FILE, "the cluster CA certificate")
    cert_pem = _read(tls_dir / MEMBER_CERT_FILE, "the member certificate")
    key_pem = _read(tls_dir / MEMBER_KEY_FILE, "the member key")
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise TlsError(f"{tls_dir}: not a PEM certificate: {err}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise TlsError(f"{tls_dir / MEMBER_KEY_FILE}: not an unencrypted PEM key: {err}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != (
        cert.public_key().public_bytes(serialization.Encoding.DER, public)
    ):
        raise TlsError(
            f"{tls_dir / MEMBER_KEY_FILE} is not the key of {tls_dir / MEMBER_CERT_FILE}"
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise TlsError(
            f"{tls_dir / MEMBER_CERT_FILE} was not issued by the CA in {tls_dir / CA_FILE} "
            "(a certificate from another cluster?)"
        ) from None
    at = now or now_utc()
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise TlsError(
            f"{tls_dir / MEMBER_CERT_FILE} is valid from {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d}, not now; issue a new one"
        )
    try:
        bound = member_id_of(cert)
    except TlsError as err:
        raise TlsError(f"{tls_dir / MEMBER_CERT_FILE}: {err}") from None
    return MemberTls(ca_pem, cert_pem, key_pem, cert.not_valid_after_utc, bound)
