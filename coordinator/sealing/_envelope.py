"""The sealed-value envelope, version 1: how one secret value is encrypted to a sealing key.

Hybrid encryption, as in Bitnami sealed-secrets, with the reasons a failure happened made
distinguishable. Every value gets a fresh 256-bit data key; the value is encrypted with
AES-256-GCM under a key derived from it, and the data key is wrapped to the cluster's sealing
key with RSA-OAEP (SHA-256 for both the hash and MGF1). Layout (integers big-endian):

    offset   size  field
    0        4     magic b"CSLD"
    4        1     version = 1
    5        1     scope: 1 strict, 2 namespace-wide, 3 cluster-wide
    6        8     key id: the first 8 bytes of SHA-256(SubjectPublicKeyInfo DER of the
                   sealing public key); says which of the cluster's keys unwraps it
    14       2     n: length of the wrapped data key (512 for an RSA-4096 key)
    16       n     wrapped data key: RSA-OAEP-SHA256(data key, label b"concord/sealed/v1")
    16+n     16    scope tag: HMAC-SHA256(K_scope, scope label)[:16]
    32+n     12    nonce (random)
    44+n     ...   AES-256-GCM(K_enc, nonce, value, aad = bytes[0 : 32+n] || scope label):
                   ciphertext, then its 16-byte tag

    K_enc, K_scope = HKDF-SHA256(data key, no salt, info b"concord/sealed/v1 enc" resp.
                     b"concord/sealed/v1 scope", 32 bytes each)
    scope label    = b"strict\\0" namespace b"\\0" name   (strict)
                   | b"namespace-wide\\0" namespace        (namespace-wide)
                   | b"cluster-wide"                      (cluster-wide)

Why RSA-OAEP and not X25519: the public half is published as a self-signed X.509
certificate (what kubeseal users know, what `--cert` files are), which carries its own
validity period and can be checked offline as Concord's; an X25519 key cannot sign its own
certificate. RSA-4096 costs a few milliseconds per unwrap, which is nothing for secrets.

Why a scope tag besides the associated data: GCM alone says only "does not authenticate",
so a value moved to another name would look like a damaged one. The tag is keyed by the
value's own data key, so only someone who unwraps it can check it (it reveals nothing about
the name to anyone else, and cannot be recomputed for a new name without the data key): a
wrong tag means the value was sealed for another namespace/name (`ScopeMismatch`); a right
tag and a failing GCM tag means the bytes were altered (`Tampered`). Both checks bind the
scope, and the header is authenticated as associated data, so changing the scope byte is
caught too.

Failures are `SealError` subclasses with a `reason` (`Reason`): `Malformed` (not an
envelope, truncated, unknown version), `UnknownKey` (no key with that id), `ScopeMismatch`,
`Tampered` (the wrapped key or the ciphertext altered, or wrapped to another key with a
colliding id). The format never changes in place: a new layout gets a new version byte, and
the test vectors in tests/sealing/vectors/ must keep decrypting forever.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"CSLD"
VERSION = 1
KEY_ID_BYTES = 8
DATA_KEY_BYTES = 32
SCOPE_TAG_BYTES = 16
NONCE_BYTES = 12
GCM_TAG_BYTES = 16
VALUE_BYTES_MAX = 1024 * 1024
"""A Kubernetes Secret holds at most 1 MiB in all; no single value can be larger."""
ENVELOPE_BYTES_MAX = VALUE_BYTES_MAX + 4096
_OAEP_LABEL = b"concord/sealed/v1"
_HEAD = struct.Struct(">4sBB8sH")


class Scope(enum.IntEnum):
    """Which names a sealed value may be unsealed as (sealed-secrets' scopes)."""

    STRICT = 1
    """Only as the Secret of this namespace and name."""
    NAMESPACE_WIDE = 2
    """As any Secret of this namespace."""
    CLUSTER_WIDE = 3
    """As any Secret anywhere."""

    @property
    def text(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> Scope:
        for scope in cls:
            if scope.text == text:
                return scope
        raise ValueError(f"unknown scope {text!r}: one of {', '.join(s.text for s in cls)}")


class Reason(enum.IntEnum):
    """Why a value did not unseal (the numbers are concord.v1.SealFailure's)."""

    MALFORMED = 1
    UNKNOWN_KEY = 2
    SCOPE_MISMATCH = 3
    TAMPERED = 4


class SealError(Exception):
    """A value that cannot be sealed or unsealed; `reason` says why, the message what to do."""

    reason: Reason = Reason.MALFORMED


class Malformed(SealError):
    reason = Reason.MALFORMED


class UnknownKey(SealError):
    reason = Reason.UNKNOWN_KEY

    def __init__(self, message: str, key_id: bytes) -> None:
        super().__init__(message)
        self.key_id = key_id


class ScopeMismatch(SealError):
    reason = Reason.SCOPE_MISMATCH


class Tampered(SealError):
    reason = Reason.TAMPERED


ERRORS: dict[Reason, type[SealError]] = {
    Reason.MALFORMED: Malformed,
    Reason.UNKNOWN_KEY: UnknownKey,
    Reason.SCOPE_MISMATCH: ScopeMismatch,
    Reason.TAMPERED: Tampered,
}


def key_id_of(public_key: rsa.RSAPublicKey) -> bytes:
    """The 8-byte id of a sealing key: the start of SHA-256 of its SubjectPublicKeyInfo."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()[:KEY_ID_BYTES]


def _check_name(what: str, value: str) -> bytes:
    raw = value.encode("utf-8")
    if not raw:
        raise ValueError(f"a {what} is needed for this scope")
    if b"\0" in raw or len(raw) > 253:
        raise ValueError(f"{what} {value!r} is not a Kubernetes name")
    return raw


def scope_label(scope: Scope, namespace: str, name: str) -> bytes:
    """What the scope binds: see the module docstring. ValueError if a part is missing."""
    match scope:
        case Scope.STRICT:
            ns, nm = _check_name("namespace", namespace), _check_name("name", name)
            return b"strict\0" + ns + b"\0" + nm
        case Scope.NAMESPACE_WIDE:
            return b"namespace-wide\0" + _check_name("namespace", namespace)
        case Scope.CLUSTER_WIDE:
            return b"cluster-wide"


def _subkeys(data_key: bytes) -> tuple[bytes, bytes]:
    def derive(info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(data_key)

    return derive(b"concord/sealed/v1 enc"), derive(b"concord/sealed/v1 scope")


def _scope_tag(k_scope: bytes, label: bytes) -> bytes:
    return hmac.digest(k_scope, label, "sha256")[:SCOPE_TAG_BYTES]


def _oaep() -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=_OAEP_LABEL
    )


def seal(
    public_key: rsa.RSAPublicKey, value: bytes, scope: Scope, namespace: str = "", name: str = ""
) -> bytes:
    """Encrypt one value to `public_key` under `scope` (namespace/name as the scope needs)."""
    if len(value) > VALUE_BYTES_MAX:
        raise ValueError(f"a value is at most {VALUE_BYTES_MAX} bytes, not {len(value)}")
    label = scope_label(scope, namespace, name)
    data_key = os.urandom(DATA_KEY_BYTES)
    k_enc, k_scope = _subkeys(data_key)
    wrapped = public_key.encrypt(data_key, _oaep())
    head = _HEAD.pack(MAGIC, VERSION, scope, key_id_of(public_key), len(wrapped))
    authenticated = head + wrapped + _scope_tag(k_scope, label)
    nonce = os.urandom(NONCE_BYTES)
    return authenticated + nonce + AESGCM(k_enc).encrypt(nonce, value, authenticated + label)


@dataclass(frozen=True, slots=True)
class Header:
    """The clear part of an envelope."""

    version: int
    scope: Scope
    key_id: bytes
    wrapped_key: bytes
    scope_tag: bytes
    nonce: bytes
    sealed: bytes
    """Ciphertext and GCM tag."""
    authenticated: bytes
    """The header bytes that are associated data."""


def parse(envelope: bytes) -> Header:
    """The clear header of an envelope; `Malformed` if it is not a version-1 envelope."""
    if len(envelope) > ENVELOPE_BYTES_MAX:
        raise Malformed(f"a sealed value is at most {ENVELOPE_BYTES_MAX} bytes")
    if len(envelope) < _HEAD.size:
        raise Malformed(
            f"not a Concord sealed value: {len(envelope)} bytes is shorter than any envelope"
        )
    magic, version, scope_raw, key_id, n = _HEAD.unpack_from(envelope)
    if magic != MAGIC:
        raise Malformed("not a Concord sealed value (wrong magic); was it sealed with concordctl?")
    if version != VERSION:
        raise Malformed(
            f"sealed-value format version {version} is unknown to this build (it reads "
            f"version {VERSION}); upgrade concordctl and the coordinator"
        )
    try:
        scope = Scope(scope_raw)
    except ValueError:
        raise Malformed(f"unknown scope {scope_raw} in a sealed value") from None
    end = _HEAD.size + n + SCOPE_TAG_BYTES
    if n == 0 or len(envelope) < end + NONCE_BYTES + GCM_TAG_BYTES:
        raise Malformed("the sealed value is truncated")
    return Header(
        version=version,
        scope=scope,
        key_id=key_id,
        wrapped_key=envelope[_HEAD.size : _HEAD.size + n],
        scope_tag=envelope[_HEAD.size + n : end],
        nonce=envelope[end : end + NONCE_BYTES],
        sealed=envelope[end + NONCE_BYTES :],
        authenticated=envelope[:end],
    )


@dataclass(frozen=True, slots=True)
class Opened:
    value: bytes
    key_id: bytes
    scope: Scope


KeyLookup = Callable[[bytes], rsa.RSAPrivateKey | None]
"""Key id -> private key, or None if the cluster has no key with that id."""


def _where(scope: Scope, namespace: str, name: str) -> str:
    match scope:
        case Scope.STRICT:
            return f"Secret {namespace}/{name}"
        case Scope.NAMESPACE_WIDE:
            return f"namespace {namespace!r}"
        case Scope.CLUSTER_WIDE:
            return "any namespace"


def unseal(envelope: bytes, namespace: str, name: str, keys: KeyLookup) -> Opened:
    """Decrypt a value for the Secret `namespace`/`name`. Raises a `SealError` subclass."""
    head = parse(envelope)
    private_key = keys(head.key_id)
    if private_key is None:
        raise UnknownKey(
            f"sealed with key {head.key_id.hex()}, which this cluster does not have (sealed "
            "for another cluster, or with a certificate of a key that was never committed)",
            head.key_id,
        )
    try:
        label = scope_label(head.scope, namespace, name)
    except ValueError as exc:
        raise ScopeMismatch(
            f"sealed with scope {head.scope.text}, which needs a namespace and name: {exc}"
        ) from None
    try:
        data_key = private_key.decrypt(head.wrapped_key, _oaep())
    except ValueError:
        raise Tampered(
            f"the wrapped data key does not unwrap with key {head.key_id.hex()}: the sealed "
            "value was altered"
        ) from None
    if len(data_key) != DATA_KEY_BYTES:
        raise Tampered("the wrapped data key has the wrong length: the sealed value was altered")
    k_enc, k_scope = _subkeys(data_key)
    if not hmac.compare_digest(_scope_tag(k_scope, label), head.scope_tag):
        raise ScopeMismatch(
            f"this value was sealed with scope {head.scope.text} for another "
            f"{'namespace and name' if head.scope is Scope.STRICT else 'namespace'} than "
            f"{_where(head.scope, namespace, name)} (moved, or its scope altered); seal it "
            "again for this name, or seal it with a wider --scope"
        )
    try:
        value = AESGCM(k_enc).decrypt(head.nonce, head.sealed, head.authenticated + label)
    except InvalidTag:
        raise Tampered(
            "the ciphertext does not authenticate: the sealed value was altered"
        ) from None
    return Opened(value, head.key_id, head.scope)
