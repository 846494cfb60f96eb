"""The certificates `coordinator.pki` builds, extension by extension: what a member, a client,
kubelet-side tooling and the API server rely on (key usages, criticality, SANs, the member URI),
pinned so that a change to the one builder shows here first."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from coordinator import pki


def _extensions(cert: x509.Certificate) -> list[tuple[str, bool]]:
    return [(e.oid.dotted_string, e.critical) for e in cert.extensions]


def _usage(cert: x509.Certificate) -> x509.KeyUsage:
    return cert.extensions.get_extension_for_class(x509.KeyUsage).value


def test_the_cluster_ca() -> None:
    ca = pki.create_ca("prod-1").cert
    assert ca.subject.rfc4514_string() == "CN=Concord cluster CA prod-1,O=Concord"
    assert ca.issuer == ca.subject
    assert _extensions(ca) == [
        (ExtensionOID.BASIC_CONSTRAINTS.dotted_string, True),
        (ExtensionOID.KEY_USAGE.dotted_string, True),
        (ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string, False),
    ]
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    usage = _usage(ca)
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == pki.CA_VALIDITY_DAYS


def test_a_member_certificate_names_its_id_and_both_ends_of_a_connection() -> None:
    ca = pki.create_ca("prod-1")
    cert = pki.issue_member_cert(ca, "member-3", ["m3.example"], ["10.0.0.3"], member_id=3).cert
    assert cert.subject.rfc4514_string() == "CN=member-3,O=Concord"
    assert cert.issuer == ca.cert.subject
    assert _extensions(cert) == [
        (ExtensionOID.BASIC_CONSTRAINTS.dotted_string, True),
        (ExtensionOID.KEY_USAGE.dotted_string, True),
        (ExtensionOID.EXTENDED_KEY_USAGE.dotted_string, False),
        (ExtensionOID.AUTHORITY_KEY_IDENTIFIER.dotted_string, False),
        (ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string, False),
    ]
    usage = _usage(cert)
    assert usage.digital_signature and usage.key_agreement and not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "m3.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "10.0.0.3",
        "127.0.0.1",
        "::1",
    ]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["concord://member/3"]
    assert pki.member_id_of(cert) == 3


def test_a_client_certificate_cannot_serve_and_carries_its_roles() -> None:
    ca = pki.create_ca("prod-1")
    cert = pki.issue_client_cert(ca, "operator", roles=[pki.OPERATOR_ROLE]).cert
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.roles_of(cert) == {pki.OPERATOR_ROLE}
    assert pki.member_id_of(cert) is None


def test_the_builders_serve_other_hierarchies_the_same_way() -> None:
    """The webhook's and the test control plane's: no organisation, hosts as IP or DNS."""
    key = pki.new_key()
    now = pki.now_utc()
    ca = pki.build_ca_cert(
        key, pki.subject_name("some-ca"), not_before=now, not_after=now, digital_signature=True
    )
    assert _usage(ca).digital_signature and _usage(ca).key_cert_sign
    leaf_key = pki.new_key()
    leaf = pki.build_leaf_cert(
        ca,
        key,
        leaf_key.public_key(),
        pki.subject_name("apiserver", "system:masters"),
        not_before=now,
        not_after=now,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=pki.host_sans(["127.0.0.1", "kubernetes.default"]),
        key_agreement=False,
    )
    assert leaf.subject.rfc4514_string() == "CN=apiserver,O=system:masters"
    assert not _usage(leaf).key_agreement and _usage(leaf).digital_signature
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["kubernetes.default"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    leaf.verify_directly_issued_by(ca)
