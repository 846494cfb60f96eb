"""The typed results of the client's sealed-secret calls (`Client.sealing_certificate`,
`renew_sealing_key`, `unseal`, `re_encrypt`, `validate_sealed`), kept apart from the generated
messages so callers (concordctl seal, the operator) never handle protobuf objects, and
`SealFailed`, which says why a value did not unseal."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.sealing import Reason

from ._errors import ConcordError

SEAL_FAILURE_METADATA_KEY = "concord-seal-failure"
"""Trailing metadata naming the `Reason` a value did not unseal (server/_secrets.py)."""


class SealFailed(ConcordError):
    """A sealed value did not unseal; `reason` says why (malformed, unknown key, scope
    mismatch, tampered)."""

    def __init__(self, code: str, message: str, reason: Reason) -> None:
        super().__init__(code, message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SealingKeyInfo:
    """The public part of one sealing key."""

    key_id: str
    """16 hex digits (coordinator.sealing.key_id_of)."""
    created_ms: int
    certificate_pem: bytes


@dataclass(frozen=True, slots=True)
class SealingKeys:
    current: SealingKeyInfo
    """The key that seals."""
    keys: tuple[SealingKeyInfo, ...]
    """Every key, oldest first; all of them unseal."""


@dataclass(frozen=True, slots=True)
class Unsealed:
    plaintext: bytes
    key_id: str
    scope: str


@dataclass(frozen=True, slots=True)
class ReEncrypted:
    ciphertext: bytes
    key_id: str
    """The newest key, which it is sealed to now."""
    previous_key_id: str


@dataclass(frozen=True, slots=True)
class SealedCheck:
    failure: Reason | None
    """None: the value unseals as the name asked."""
    message: str
    key_id: str

    @property
    def ok(self) -> bool:
        return self.failure is None


def sealing_key(info: pb.SealingKeyInfo) -> SealingKeyInfo:
    return SealingKeyInfo(str(info.key_id), int(info.created_ms), info.certificate_pem.encode())


def sealed_value(ciphertext: bytes, namespace: str, name: str) -> pb.SealedValue:
    return pb.SealedValue(ciphertext=ciphertext, namespace=namespace, name=name)
