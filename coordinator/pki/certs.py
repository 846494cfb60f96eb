"""Mutual TLS for peers and clients, and join tokens, in Docker Swarm's manner.

**Certificates.** `concordctl cluster init` makes a cluster CA: an EC P-256 key and a
self-signed certificate valid for ten years (`create_ca`). Every member gets a certificate
from it (`issue_member_cert`, or `sign_member_csr` for a member that joins over the network
and keeps its key to itself) that is good for both ends of a connection (extended key usage
serverAuth and clientAuth, since a member both serves and dials its peers), with subject
alternative names for 127.0.0.1, ::1, localhost and the DNS names and addresses it is reached
by. Clients get clientAuth-only certificates (`issue_client_cert`). Every file is written
atomically with mode 0600 (`write_pem`).

**Member ids are bound to certificates.** A member certificate carries its member id as a
URI subject alternative name, `concord://member/<id>` (`member_id_of`). The peer port checks
that every Raft message on a stream claims the sender id of the certificate that opened it,
so a stolen or compromised member certificate can speak as that one member only, never cast
another member's vote. (A certificate without the URI, issued before ids were bound, is
accepted for any id: it keeps its old meaning.)

A member's TLS directory (`--tls-dir`) holds `ca.pem`, `member.pem` and `member-key.pem`;
`load_member_tls` reads them and checks, before any socket is opened, that the key matches
the certificate, the certificate was issued by the CA and is within its validity period,
so a misconfiguration is reported as such and not as a failed handshake later. Peers and
clients then speak gRPC over TLS with client certificates required
(`server_credentials(..., require_client_auth=True)`): a peer or client without a
certificate from the cluster CA cannot even open a connection. The one exception is the
join port (`join_server_credentials`): a joining member has no certificate yet, so that
port asks for none, and it presents the CA with its own certificate, so the joiner can check
the CA against its token before it trusts anything.

**Join tokens** look like Swarm's: `CONCORD-JOIN-1-<CA fingerprint>-<secret>`, where the
fingerprint is the SHA-256 of the CA certificate (DER) in lower-case base32 and the secret is
160 random bits, also base32. Whoever holds a token can check the CA a cluster presents
against the fingerprint (`check_ca_fingerprint`: a joiner trusts the right CA without copying
it beforehand), and the cluster checks the secret against the hashes it keeps in its
replicated state (`verify_join_token` over `StoredToken`s). The secret is high-entropy and
random, so a plain SHA-256 suffices (a slow password hash protects guessable secrets, which
this is not); comparisons are constant-time. Revoked tokens stay recorded so a person
presenting one is told it was revoked, and when, not that it is unknown.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
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
    member_id: int | None = None
    """The member id the certificate is bound to (None: an unbound, older certificate)."""


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


def _build_cert(
    ca: CertifiedKey,
    public_key: ec.EllipticCurvePublicKey,
    *,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    days: int,
) -> x509.Certificate:
    ca_cert, ca_key = ca.cert, ca.private_key()
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
        .public_key(public_key)
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
    return builder.sign(ca_key, hashes.SHA256())


def _issue(
    ca: CertifiedKey,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    days: int,
) -> CertifiedKey:
    key = _new_key()
    cert = _build_cert(
        ca, key.public_key(), common_name=common_name, usages=usages, sans=sans, days=days
    )
    return CertifiedKey(_cert_pem(cert), _key_pem(key))


MEMBER_URI_PREFIX = "concord://member/"
"""A member certificate's URI subject alternative name: this prefix, then the member id."""


def member_uri(member_id: int) -> str:
    if member_id <= 0:
        raise ValueError(f"a member id is a positive integer, not {member_id}")
    return f"{MEMBER_URI_PREFIX}{member_id}"


def _member_sans(
    dns_names: Iterable[str], ip_addresses: Iterable[str], member_id: int | None
) -> list[x509.GeneralName]:
    dns = ["localhost", *(d for d in dns_names if d != "localhost")]
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    ips |= {ipaddress.ip_address(a) for a in ip_addresses}
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns)]
    sans += [x509.IPAddress(ip) for ip in sorted(ips, key=lambda i: (i.version, int(i)))]
    if member_id is not None:
        sans.append(x509.UniformResourceIdentifier(member_uri(member_id)))
    return sans


_MEMBER_USAGES = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def issue_member_cert(
    ca: CertifiedKey,
    name: str,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    *,
    member_id: int | None = None,
    days: int = CERT_VALIDITY_DAYS,
) -> CertifiedKey:
    """A member certificate (serverAuth + clientAuth) for 127.0.0.1, ::1, localhost and
    the given DNS names and IP addresses, bound to `member_id` if given (see the module
    docstring; without it the certificate may speak for any member)."""
    sans = _member_sans(dns_names, ip_addresses, member_id)
    return _issue(ca, name, _MEMBER_USAGES, sans, days)


ROLE_URI_PREFIX = "concord://role/"
"""A client certificate's URI subject alternative name for a role: this prefix, then it."""
OPERATOR_ROLE = "operator"
"""The operator's role: the one identity `Secrets.Unseal` answers plaintext to."""


def issue_client_cert(
    ca: CertifiedKey, name: str, *, days: int = CERT_VALIDITY_DAYS, roles: Iterable[str] = ()
) -> CertifiedKey:
    """A client certificate (clientAuth only): it can call members, never pose as one.
    `roles` become `concord://role/<role>` URIs (what a member authorises by; the common name
    is only a label)."""
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role) for role in roles
    ]
    return _issue(ca, name, [ExtendedKeyUsageOID.CLIENT_AUTH], sans, days)


def roles_of(cert: x509.Certificate) -> frozenset[str]:
    """The roles a certificate names (its `concord://role/<role>` URIs)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    return frozenset(u[len(ROLE_URI_PREFIX) :] for u in uris if u.startswith(ROLE_URI_PREFIX))


def member_id_of(cert: x509.Certificate) -> int | None:
    """The member id a certificate is bound to (its `concord://member/<id>` URI), or None if
    it carries none. TlsError if it names a malformed id or more than one."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    ids: set[int] = set()
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if not uri.startswith(MEMBER_URI_PREFIX):
            continue
        text = uri[len(MEMBER_URI_PREFIX) :]
        if not text.isdigit() or int(text) <= 0 or int(text) >= 2**63:
            raise TlsError(f"the certificate names a malformed member id: {uri!r}")
        ids.add(int(text))
    if len(ids) > 1:
        raise TlsError(f"the certificate names several member ids: {sorted(ids)}")
    return ids.pop() if ids else None


# --- certificate signing requests (a joining member keeps its key) ----------------------------


def new_member_key() -> ec.EllipticCurvePrivateKey:
    """A joining member's own key: it never leaves the member."""
    return _new_key()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return _key_pem(key)


def make_csr(
    key: ec.EllipticCurvePrivateKey,
    name: str,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
) -> bytes:
    """A PEM certificate signing request for `key`, asking for these names (the signer
    decides what the certificate says; see `sign_member_csr`)."""
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ip_addresses)]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (name or "joining member")[:64])])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True)
class CsrRequest:
    """A checked certificate signing request: its key and the names it asks for."""

    public_key: ec.EllipticCurvePublicKey
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]


CSR_BYTES_MAX = 16 * 1024
CSR_NAMES_MAX = 32


def check_csr(csr_pem: bytes) -> CsrRequest:
    """Parse a joiner's CSR and check its self-signature (proof that the sender holds the
    key); TlsError saying what is wrong otherwise. Only EC P-256 keys are accepted, as
    for every certificate of the cluster."""
    if len(csr_pem) > CSR_BYTES_MAX:
        raise TlsError(f"the certificate signing request is over {CSR_BYTES_MAX} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        raise TlsError(f"not a PEM certificate signing request: {err}") from None
    if not csr.is_signature_valid:
        raise TlsError("the certificate signing request is not signed by its own key")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise TlsError("the certificate signing request must be for an EC P-256 key")
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return CsrRequest(public, (), ())
    dns = tuple(sans.get_values_for_type(x509.DNSName))
    ips = tuple(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
    if len(dns) + len(ips) > CSR_NAMES_MAX:
        raise TlsError(f"the certificate signing request asks for over {CSR_NAMES_MAX} names")
    for d in dns:
        if not d or len(d) > 253 or any(c.isspace() or c == "/" for c in d):
            raise TlsError(f"the certificate signing request asks for a bad DNS name {d!r}")
    return CsrRequest(public, dns, ips)


def sign_member_csr(
    ca: CertifiedKey,
    request: CsrRequest,
    *,
    member_id: int,
    name: str,
    hosts: Iterable[str] = (),
    days: int = CERT_VALIDITY_DAYS,
) -> bytes:
    """A member certificate (PEM) for the CSR's key, bound to `member_id`, for loopback, the
    names the CSR asked for and `hosts` (the hosts of its peer and client URLs: IP
    addresses or DNS names)."""
    dns = list(request.dns_names)
    ips = list(request.ip_addresses)
    for host in hosts:
        (ips if _is_ip(host) else dns).append(host)
    sans = _member_sans(dns, ips, member_id)
    cert = _build_cert(
        ca, request.public_key, common_name=name, usages=_MEMBER_USAGES, sans=sans, days=days
    )
    return _cert_pem(cert)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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
    at = now or _now()
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


def join_server_credentials(member: MemberTls) -> grpc.ServerCredentials:
    """The join port's side: present the member certificate *followed by the CA* (so a
    joiner can fetch the CA in the handshake and check it against its token), and ask the
    caller for no certificate (a joiner has none yet)."""
    chain = member.cert_pem.rstrip(b"\n") + b"\n" + member.ca_pem
    return grpc.ssl_server_credentials([(member.key_pem, chain)], require_client_auth=False)


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
    def secret_digest(self) -> bytes:
        """`secret_hash` as 32 bytes (what the replicated state stores)."""
        return bytes.fromhex(self.secret_hash)

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
                "<secret> (from `concordctl join-token create`)"
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
    """What a cluster keeps of a join token (the replicated state's join-token table)."""

    id: str
    secret_hash: str
    """Hex SHA-256 of the domain-separated secret (`JoinToken.secret_hash`)."""
    created_ms: int
    revoked_ms: int = 0
    """0 while the token is valid."""


class JoinTokenRefusedError(JoinTokenError):
    """A well-formed token the cluster does not accept: for another CA, unknown, revoked."""


def format_time_ms(ms: int) -> str:
    """A wall-clock time in milliseconds as people read it (UTC, to the second)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_ca_fingerprint(token: JoinToken, presented_ca_pem: bytes) -> None:
    """The joiner's check: is the CA the cluster presented the one the token names?"""
    presented = ca_fingerprint(presented_ca_pem)
    if not hmac.compare_digest(presented, token.ca_fingerprint):
        raise JoinTokenRefusedError(
            "the join token is for another cluster: the CA certificate presented has "
            f"fingerprint {presented}, the token names {token.ca_fingerprint} (wrong "
            "cluster, or someone in the middle; a rebuilt cluster has a new CA and needs a "
            "new token)"
        )


def verify_join_token(
    token: JoinToken | str, cluster_ca_pem: bytes, stored: Iterable[StoredToken]
) -> JoinToken:
    """The cluster's check: accept a join token, or raise `JoinTokenError` saying why not:
    malformed (`JoinToken.parse`), or `JoinTokenRefusedError`: for another cluster's CA,
    unknown to this cluster, or revoked."""
    if isinstance(token, str):
        token = JoinToken.parse(token)
    ours = ca_fingerprint(cluster_ca_pem)
    if not hmac.compare_digest(ours, token.ca_fingerprint):
        raise JoinTokenRefusedError(
            f"the join token names CA fingerprint {token.ca_fingerprint[:12]}..., but this "
            f"cluster's CA is {ours[:12]}...: it is a token of another cluster"
        )
    digest = token.secret_hash
    found: StoredToken | None = None
    for record in stored:  # no early exit: the time taken does not depend on the match
        if hmac.compare_digest(record.secret_hash, digest):
            found = record
    if found is None:
        raise JoinTokenRefusedError(
            "join token not valid for this cluster (mistyped, or never issued here); get one "
            "with `concordctl join-token create`"
        )
    if found.revoked_ms:
        raise JoinTokenRefusedError(
            f"join token {found.id} was revoked at {format_time_ms(found.revoked_ms)}; get a "
            "current one with `concordctl join-token create`"
        )
    return token
