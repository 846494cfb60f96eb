"""Join tokens, in Docker Swarm's manner.

They look like Swarm's: `CONCORD-JOIN-1-<CA fingerprint>-<secret>`, where the fingerprint is
the SHA-256 of the CA certificate (DER) in lower-case base32 and the secret is 160 random
bits, also base32. Whoever holds a token can check the CA a cluster presents against the
fingerprint (`check_ca_fingerprint`: a joiner trusts the right CA without copying it
beforehand), and the cluster checks the secret against the hashes it keeps in its replicated
state (`verify_join_token` over `StoredToken`s). The secret is high-entropy and random, so a
plain SHA-256 suffices (a slow password hash protects guessable secrets, which this is not);
comparisons are constant-time. Revoked tokens stay recorded so a person presenting one is
told it was revoked, and when, not that it is unknown.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .certs import TlsError

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
