"""The envelope format (coordinator/sealing/_envelope.py): round trips per scope, which moves
each scope allows, the four failure reasons, layout, limits; and sealing certificates."""

from __future__ import annotations

import datetime as dt
import functools

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from coordinator import sealing
from coordinator.pki import create_ca
from coordinator.sealing import Reason, Scope

NOW = dt.datetime.now(dt.UTC)


@functools.cache
def pair() -> tuple[rsa.RSAPrivateKey, sealing.SealingCertificate]:
    kp = sealing.new_sealing_key(NOW)
    return sealing.load_private_key(kp.private_key_der), sealing.load_sealing_certificate(
        kp.certificate_pem, NOW
    )


def ring() -> sealing.KeyLookup:
    key, cert = pair()
    return {cert.key_id: key}.get


def seal(value: bytes, scope: Scope, ns: str = "", name: str = "") -> bytes:
    return sealing.seal(pair()[1].public_key, value, scope, ns, name)


def reason(envelope: bytes, ns: str, name: str) -> Reason | None:
    try:
        sealing.unseal(envelope, ns, name, ring())
    except sealing.SealError as err:
        return err.reason
    return None


@pytest.mark.parametrize(
    ("scope", "allowed", "refused"),
    [
        (Scope.STRICT, [("prod", "db")], [("prod", "web"), ("dev", "db")]),
        (Scope.NAMESPACE_WIDE, [("prod", "db"), ("prod", "web")], [("dev", "db")]),
        (Scope.CLUSTER_WIDE, [("prod", "db"), ("dev", "x"), ("", "")], []),
    ],
)
def test_each_scope_allows_its_names_and_refuses_others_as_a_scope_mismatch(
    scope: Scope, allowed: list[tuple[str, str]], refused: list[tuple[str, str]]
) -> None:
    envelope = seal(b"s3cret", scope, "prod", "db")
    for ns, name in allowed:
        opened = sealing.unseal(envelope, ns, name, ring())
        assert (opened.value, opened.scope, opened.key_id) == (b"s3cret", scope, pair()[1].key_id)
    for ns, name in refused:
        assert reason(envelope, ns, name) is Reason.SCOPE_MISMATCH


def test_layout_header_fields_and_fresh_randomness_per_value() -> None:
    a, b = seal(b"v", Scope.STRICT, "n", "s"), seal(b"v", Scope.STRICT, "n", "s")
    assert a != b  # a fresh data key and nonce each time
    head = sealing.parse(a)
    assert a[:4] == b"CSLD" and head.version == 1 and a[5] == Scope.STRICT
    assert head.key_id == pair()[1].key_id and len(head.wrapped_key) == 512
    assert len(a) == 16 + 512 + 16 + 12 + len(b"v") + 16


def test_every_byte_altered_is_detected() -> None:
    envelope = seal(b"value", Scope.STRICT, "n", "s")
    seen = set()
    for i in range(len(envelope)):
        bad = bytearray(envelope)
        bad[i] ^= 0x01
        got = reason(bytes(bad), "n", "s")
        assert got is not None, f"byte {i} altered went unnoticed"
        seen.add(got)
    assert seen == set(Reason)  # magic/version: malformed; id: unknown key; scope byte: scope


def test_unknown_key_and_malformed_inputs() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign = sealing.seal(other.public_key(), b"x", Scope.CLUSTER_WIDE)
    with pytest.raises(sealing.UnknownKey) as err:
        sealing.unseal(foreign, "a", "b", ring())
    assert err.value.key_id == sealing.key_id_of(other.public_key())
    for junk in (b"", b"CSLD", b"not a sealed value at all", seal(b"x", Scope.CLUSTER_WIDE)[:100]):
        assert reason(junk, "a", "b") is Reason.MALFORMED


def test_strict_needs_a_namespace_and_name_and_values_are_bounded() -> None:
    with pytest.raises(ValueError, match="namespace"):
        seal(b"x", Scope.STRICT, "", "db")
    with pytest.raises(ValueError, match="name"):
        seal(b"x", Scope.STRICT, "prod", "")
    with pytest.raises(ValueError, match="at most"):
        seal(b"x" * (sealing.VALUE_BYTES_MAX + 1), Scope.CLUSTER_WIDE)
    assert reason(seal(b"x", Scope.STRICT, "p", "d"), "", "") is Reason.SCOPE_MISMATCH


def test_scope_names_parse() -> None:
    assert [s.text for s in Scope] == ["strict", "namespace-wide", "cluster-wide"]
    assert Scope.parse("namespace-wide") is Scope.NAMESPACE_WIDE
    with pytest.raises(ValueError, match="unknown scope"):
        Scope.parse("global")


def test_certificates_expired_early_foreign_and_wrong_key() -> None:
    key, cert = pair()
    old = sealing.sealing_certificate(key, NOW - dt.timedelta(days=20), NOW - dt.timedelta(days=1))
    with pytest.raises(sealing.CertificateError, match="expired"):
        sealing.load_sealing_certificate(old, NOW)
    later = sealing.sealing_certificate(key, NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=9))
    with pytest.raises(sealing.CertificateError, match="valid only from"):
        sealing.load_sealing_certificate(later, NOW)
    with pytest.raises(sealing.CertificateError, match="not a PEM"):
        sealing.load_sealing_certificate(b"hello", NOW)
    ca = create_ca("test-cluster")  # a real certificate, but not a sealing one
    with pytest.raises(sealing.CertificateError, match="not a Concord sealing certificate"):
        sealing.load_sealing_certificate(ca.cert_pem, NOW)
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    weak = sealing.sealing_certificate(small, NOW - dt.timedelta(days=1), NOW + dt.timedelta(1))
    with pytest.raises(sealing.CertificateError, match="RSA-2048"):
        sealing.load_sealing_certificate(weak, NOW)
    assert (
        sealing.load_sealing_certificate(sealing.new_sealing_key(NOW).certificate_pem, NOW).key_id
        != cert.key_id
    )
