"""X.509 for the cluster: its CA, member and client certificates, and joiners' CSRs.

`concordctl cluster init` makes a cluster CA: an EC P-256 key and a self-signed certificate
valid for ten years (`create_ca`). Every member gets a certificate from it
(`issue_member_cert`, or `sign_member_csr` for a member that joins over the network and keeps
its key to itself) that is good for both ends of a connection (extended key usage serverAuth
and clientAuth, since a member both serves and dials its peers), with subject alternative
names for 127.0.0.1, ::1, localhost and the DNS names and addresses it is reached by. Clients
get clientAuth-only certificates (`issue_client_cert`).

**Member ids are bound to certificates.** A member certificate carries its member id as a
URI subject alternative name, `concord://member/<id>` (`member_id_of`). The peer port checks
that every Raft message on a stream claims the sender id of the certificate that opened it,
so a stolen or compromised member certificate can speak as that one member only, never cast
another member's vote. (A certificate without the URI, issued before ids were bound, is
accepted for any id: it keeps its old meaning.)

`build_ca_cert` and `build_leaf_cert` are the one place a certificate is put together: the
cluster's certificates above, the operator's injection webhook and the test control plane's
throw-away PKI all go through them, so the extensions a CA or a leaf carries are written once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY_DAYS = 3650
CERT_VALIDITY_DAYS = 365
BACKDATE = dt.timedelta(minutes=5)
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


# --- building blocks ---------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    """An EC P-256 key, the one key type of every certificate made here."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the files holding it are 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def subject_name(common_name: str, organization: str | None = None) -> x509.Name:
    """O (if given) then CN, the CN cut to X.509's 64 characters."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]
    if organization is not None:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def host_sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """A subject alternative name per host: an IP address if it parses as one, else DNS."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return sans


def _key_usage(*, signs_certs: bool, digital_signature: bool, key_agreement: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=signs_certs,
        crl_sign=signs_certs,
        encipher_only=False,
        decipher_only=False,
    )


def build_ca_cert(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    digital_signature: bool = False,
) -> x509.Certificate:
    """A self-signed CA that signs leaf certificates only (path length 0); key usage
    keyCertSign and cRLSign (and digitalSignature if asked: the Kubernetes API server's CA
    habit)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(signs_certs=True, digital_signature=digital_signature, key_agreement=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def build_leaf_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    subject: x509.Name,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    usages: Sequence[x509.ObjectIdentifier],
    sans: Sequence[x509.GeneralName] = (),
    key_agreement: bool = True,
) -> x509.Certificate:
    """A certificate `ca_cert` signs for `public_key`: not a CA, key usage digitalSignature
    (and keyAgreement unless told not to), the given extended key usages and subject
    alternative names (none: no such extension)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(signs_certs=False, digital_signature=True, key_agreement=key_agreement),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


# --- the cluster's certificates ----------------------------------------------------------------


def create_ca(cluster_id: str, *, days: int = CA_VALIDITY_DAYS) -> CertifiedKey:
    """A new cluster CA: EC P-256, self-signed, `days` long, allowed to sign leaf
    certificates only (path length 0)."""
    key = new_key()
    now = now_utc()
    name = subject_name(f"Concord cluster CA {cluster_id}", "Concord")
    cert = build_ca_cert(
        key, name, not_before=now - BACKDATE, not_after=now + dt.timedelta(days=days)
    )
    return CertifiedKey(cert_pem(cert), key_pem(key))


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
    now = now_utc()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    subject = subject_name(common_name, "Concord")
    return build_leaf_cert(
        ca_cert,
        ca_key,
        public_key,
        subject,
        not_before=now - BACKDATE,
        not_after=not_after,
        usages=usages,
        sans=sans,
    )


def _issue(
    ca: CertifiedKey,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    days: int,
) -> CertifiedKey:
    key = new_key()
    cert = _build_cert(
        ca, key.public_key(), common_name=common_name, usages=usages, sans=sans, days=days
    )
    return CertifiedKey(cert_pem(cert), key_pem(key))


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
    return new_key()


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
        (ips if is_ip_address(host) else dns).append(host)
    sans = _member_sans(dns, ips, member_id)
    cert = _build_cert(
        ca, request.public_key, common_name=name, usages=_MEMBER_USAGES, sans=sans, days=days
    )
    return cert_pem(cert)


def is_ip_address(text: str) -> bool:
    """`text` is an IP address (an IP SAN), not a DNS name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
