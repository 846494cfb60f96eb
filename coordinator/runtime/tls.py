"""Mutual TLS for peers and clients, and join tokens, in Docker Swarm's manner.

**Certificates.** `concordctl init` makes a cluster CA: an EC P-256 key and a self-signed
certificate valid for ten years (`create_ca`). Every member gets a certificate from it
(`issue_member_cert`) that is good for both ends of a connection (extended key usage
serverAuth and clientAuth, since a member both serves and dials its peers), with subject
alternative names for 127.0.0.1, ::1, localhost and the DNS names it is reached by (the
StatefulSet's pod and service names). Clients get clientAuth-only certificates
(`issue_client_cert`). Every file is written atomically with mode 0600 (`write_pem`).

A member's TLS directory (`--tls-dir`) holds `ca.pem`, `member.pem` and `member-key.pem`;
`load_member_tls` reads them and checks, before any socket is opened, that the key matches
the certificate, the certificate was issued by the CA and is within its validity period,
so a misconfiguration is reported as such and not as a failed handshake later. Peers and
clients then speak gRPC over TLS with client certificates required
(`server_credentials(..., require_client_auth=True)`): a peer or client without a
certificate from the cluster CA cannot even open a connection.

**Join tokens** look like Swarm's: `CONCORD-JOIN-1-<CA fingerprint>-<secret>`, where the
fingerprint is the SHA-256 of the CA certificate (DER) in lower-case base32 and the secret is
160 random bits, also base32. Whoever holds a token can check the CA a cluster presents
against the fingerprint (so a joining member trusts the right CA without copying it
beforehand), and the cluster checks the secret against the hashes in its `JoinTokenStore`.
The secret is high-entropy and random, so a plain SHA-256 suffices (a slow password hash
protects guessable secrets, which this is not); comparisons are constant-time. Revoked tokens
stay in the store so a person presenting one is told it was revoked, not that it is unknown.
`verify_join_token` does both checks. (Carrying a join over the network, and issuing the
joining member its certificate, is a later step.)
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
MEMBER_CERT_FILE = "member.pem"
MEMBER_KEY_FILE = "member-key.pem"
CA_VALIDITY_DAYS = 3650
CERT_VALIDITY_DAYS = 365
_FILE_MODE = 0o600
_BACKDATE = dt.timedelta(minutes=5)
"""Certificates start a little in the past, to tolerate small clock differences."""


class TlsError(Exception):
    """TLS material that is missing, malformed, or does not fit together."""


@dataclass(frozen=True, slots=True)
class CertifiedKey:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError("expected an EC private key")
        return key


@dataclass(frozen=True, slots=True)
class MemberTls:
    """What a member needs for mutual TLS: the cluster CA and its own certified key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    not_after: dt.datetime


# --- issuing -----------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(cluster_id: str, *, days: int = CA_VALIDITY_DAYS) -> CertifiedKey:
    """A new cluster CA: EC P-256, self-signed, `days` long, allowed to sign leaf
    certificates only (path length 0)."""
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Concord"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Concord cluster CA {cluster_id}"[:64]),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(_cert_pem(cert), _key_pem(key))


def _issue(
    ca: CertifiedKey,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    days: int,
) -> CertifiedKey:
    ca_cert, ca_key = ca.cert, ca.private_key()
    key = _new_key()
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Concord"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return CertifiedKey(_cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key))


def issue_member_cert(
    ca: CertifiedKey,
    name: str,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    *,
    days: int = CERT_VALIDITY_DAYS,
) -> CertifiedKey:
    """A member certificate (serverAuth + clientAuth) for 127.0.0.1, ::1, localhost and
    the given DNS names and IP addresses."""
    dns = ["localhost", *(d for d in dns_names if d != "localhost")]
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    ips |= {ipaddress.ip_address(a) for a in ip_addresses}
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns)]
    sans += [x509.IPAddress(ip) for ip in sorted(ips, key=lambda i: (i.version, int(i)))]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca, name, usages, sans, days)


def issue_client_cert(
    ca: CertifiedKey, name: str, *, days: int = CERT_VALIDITY_DAYS
) -> CertifiedKey:
    """A client certificate (clientAuth only): it can call members, never pose as one."""
    return _issue(ca, name, [ExtendedKeyUsageOID.CLIENT_AUTH], [], days)


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
    at = now or _now()
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise TlsError(
            f"{tls_dir / MEMBER_CERT_FILE} is valid from {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d}, not now; issue a new one"
        )
    return MemberTls(ca_pem, cert_pem, key_pem, cert.not_valid_after_utc)


# --- gRPC credentials (the grpc module is untyped: these are its opaque objects) ------------------


def server_credentials(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> grpc.ServerCredentials:
    """Server side of mutual TLS: present `cert_pem`, demand a client certificate that
    chains to `ca_pem`."""
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


def channel_credentials(
    ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> grpc.ChannelCredentials:
    """Client side: trust only `ca_pem`, and present `cert_pem` if given."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def member_server_credentials(member: MemberTls) -> grpc.ServerCredentials:
    return server_credentials(member.ca_pem, member.cert_pem, member.key_pem)


def member_channel_credentials(member: MemberTls) -> grpc.ChannelCredentials:
    return channel_credentials(member.ca_pem, member.cert_pem, member.key_pem)


# --- join tokens -------------------------------------------------------------------------------

JOIN_TOKEN_PREFIX = "CONCORD-JOIN"
JOIN_TOKEN_VERSION = 1
_SECRET_BYTES = 20
_SECRET_DOMAIN = b"concord/join-token/v1\x00"


class JoinTokenError(ValueError):
    """A join token that is malformed, for another cluster, unknown or revoked."""


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def ca_fingerprint(ca_pem: bytes) -> str:
    """SHA-256 of the CA certificate (DER), lower-case base32 without padding (52 chars)."""
    try:
        der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    except ValueError as err:
        raise TlsError(f"not a PEM certificate: {err}") from None
    return _b32(hashlib.sha256(der).digest())


@dataclass(frozen=True, slots=True)
class JoinToken:
    version: int
    ca_fingerprint: str
    secret: str

    def __str__(self) -> str:
        return f"{JOIN_TOKEN_PREFIX}-{self.version}-{self.ca_fingerprint}-{self.secret}"

    @property
    def secret_hash(self) -> str:
        return hashlib.sha256(_SECRET_DOMAIN + self.secret.encode("ascii")).hexdigest()

    @property
    def id(self) -> str:
        """A short, non-secret name for the token (for listings and logs)."""
        return self.secret_hash[:12]

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        parts = text.strip().split("-")
        if len(parts) != 5 or "-".join(parts[:2]).upper() != JOIN_TOKEN_PREFIX:
            raise JoinTokenError(
                f"not a join token: expected {JOIN_TOKEN_PREFIX}-<version>-<CA fingerprint>-"
                "<secret> (from `concordctl join-token`)"
            )
        version, fingerprint, secret = parts[2:]
        if version != str(JOIN_TOKEN_VERSION):
            raise JoinTokenError(
                f"join token version {version!r} is not supported (this build reads version "
                f"{JOIN_TOKEN_VERSION}); get a token from a member of this version"
            )
        fingerprint, secret = fingerprint.lower(), secret.lower()
        if not _is_b32(fingerprint, 32) or not _is_b32(secret, _SECRET_BYTES):
            raise JoinTokenError("the join token is damaged (truncated or mistyped?)")
        return cls(JOIN_TOKEN_VERSION, fingerprint, secret)


def _is_b32(text: str, n_bytes: int) -> bool:
    if len(text) != len(_b32(bytes(n_bytes))):
        return False
    try:
        base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except ValueError:  # binascii.Error is a ValueError
        return False
    return True


def new_join_token(ca_pem: bytes) -> JoinToken:
    return JoinToken(JOIN_TOKEN_VERSION, ca_fingerprint(ca_pem), _b32(os.urandom(_SECRET_BYTES)))


@dataclass(frozen=True, slots=True)
class StoredToken:
    id: str
    secret_hash: str
    created_ms: int
    revoked_ms: int = 0
    """0 while the token is valid."""


class JoinTokenStore:
    """The hashes of the join tokens a cluster accepts (and of the ones it revoked), in a
    0600 JSON file. Not thread-safe; every change rewrites the file atomically."""

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = path

    def tokens(self) -> list[StoredToken]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(raw)
            if doc.get("version") != self.VERSION:
                raise JoinTokenError(f"{self.path}: unsupported version {doc.get('version')!r}")
            return [
                StoredToken(
                    str(t["id"]), str(t["sha256"]), int(t["created_ms"]), int(t["revoked_ms"])
                )
                for t in doc["tokens"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise JoinTokenError(f"{self.path} is damaged: {err}") from None

    def _save(self, tokens: list[StoredToken]) -> None:
        doc = {
            "version": self.VERSION,
            "tokens": [
                {
                    "id": t.id,
                    "sha256": t.secret_hash,
                    "created_ms": t.created_ms,
                    "revoked_ms": t.revoked_ms,
                }
                for t in tokens
            ],
        }
        write_pem(self.path, json.dumps(doc, indent=2).encode("utf-8") + b"\n")

    def issue(self, ca_pem: bytes, *, now_ms: int) -> JoinToken:
        """A new valid token; the store keeps only its hash."""
        token = new_join_token(ca_pem)
        self._save([*self.tokens(), StoredToken(token.id, token.secret_hash, now_ms)])
        return token

    def revoke(self, token_or_id: str, *, now_ms: int) -> StoredToken:
        """Revoke a token, given as the token itself or its id."""
        text = token_or_id.strip()
        wanted = JoinToken.parse(text).id if text.upper().startswith(JOIN_TOKEN_PREFIX) else text
        tokens = self.tokens()
        for i, t in enumerate(tokens):
            if t.id == wanted:
                if not t.revoked_ms:
                    tokens[i] = replace(t, revoked_ms=now_ms)
                    self._save(tokens)
                return tokens[i]
        raise JoinTokenError(f"no join token with id {wanted!r} in {self.path}")

    def rotate(self, ca_pem: bytes, *, now_ms: int) -> JoinToken:
        """Revoke every valid token and issue a new one (`docker swarm join-token --rotate`)."""
        tokens = [t if t.revoked_ms else replace(t, revoked_ms=now_ms) for t in self.tokens()]
        token = new_join_token(ca_pem)
        self._save([*tokens, StoredToken(token.id, token.secret_hash, now_ms)])
        return token


def check_ca_fingerprint(token: JoinToken, presented_ca_pem: bytes) -> None:
    """The joiner's check: is the CA the cluster presented the one the token names?"""
    presented = ca_fingerprint(presented_ca_pem)
    if not hmac.compare_digest(presented, token.ca_fingerprint):
        raise JoinTokenError(
            "the join token is for another cluster: the CA certificate presented has "
            f"fingerprint {presented[:12]}..., the token names {token.ca_fingerprint[:12]}... "
            "(wrong address, a rebuilt cluster, or someone in the middle)"
        )


def verify_join_token(text: str, presented_ca_pem: bytes, store: JoinTokenStore) -> JoinToken:
    """Accept a join token or raise `JoinTokenError` saying why not: malformed, for another
    cluster's CA, unknown to this cluster, or revoked."""
    token = JoinToken.parse(text)
    check_ca_fingerprint(token, presented_ca_pem)
    digest = token.secret_hash
    for stored in store.tokens():
        if hmac.compare_digest(stored.secret_hash, digest):
            if stored.revoked_ms:
                raise JoinTokenError(
                    f"join token {stored.id} was revoked; ask for the current one "
                    "(`concordctl join-token`)"
                )
            return token
    raise JoinTokenError(
        "the join token is not valid for this cluster (mistyped, or replaced by "
        "`concordctl join-token --rotate`)"
    )
