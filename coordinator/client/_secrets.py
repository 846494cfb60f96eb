"""The client's sealed-secret calls (`Client.sealing_certificate`, `renew_sealing_key`,
`unseal`, `re_encrypt`, `validate_sealed`: `SecretCalls`) and their typed results, kept apart
from the generated messages so callers (concordctl seal, the operator) never handle protobuf
objects; `SealFailed` says why a value did not unseal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.sealing import Reason

from ._calls import Calls, _Stubs
from ._errors import ConcordError

T = TypeVar("T")

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


class SecretCalls(Calls):
    """`sealing_certificate`, `renew_sealing_key`, `unseal`, `re_encrypt`,
    `validate_sealed` (concord.v1.Secrets; coordinator/sealing)."""

    async def _secrets_call(self, fn: Callable[[_Stubs], Awaitable[T]]) -> T:
        """`call`, but a value that does not unseal raises `SealFailed` with its reason."""

        async def attempt(s: _Stubs) -> T:
            try:
                return await fn(s)
            except grpc.aio.AioRpcError as err:
                metadata = dict(err.trailing_metadata() or ())
                reason = str(metadata.get(SEAL_FAILURE_METADATA_KEY, ""))
                if reason in Reason.__members__:
                    code = err.code()
                    raise SealFailed(code.name, err.details() or "", Reason[reason]) from None
                raise

        return await self.call(attempt)

    async def sealing_certificate(self) -> SealingKeys:
        """The current sealing certificate and every key's public part (the first call on a
        new cluster makes the first key: allow a few seconds)."""
        req = pb.GetSealingCertificateRequest()
        resp = await self.call(
            lambda s: s.secrets.GetSealingCertificate(req, timeout=self.timeout_s)
        )
        return SealingKeys(sealing_key(resp.current), tuple(map(sealing_key, resp.keys)))

    async def renew_sealing_key(self) -> SealingKeyInfo:
        """Make a new sealing key current (older ones keep unsealing); returns it."""
        req = pb.RenewSealingKeyRequest()
        resp = await self.call(lambda s: s.secrets.RenewSealingKey(req, timeout=self.timeout_s))
        return sealing_key(resp.current)

    async def unseal(self, ciphertext: bytes, namespace: str, name: str) -> Unsealed:
        """The plaintext of one sealed value, as the Secret namespace/name. Only for the
        operator's certificate (PERMISSION_DENIED otherwise); `SealFailed` if it does not
        unseal."""
        req = pb.UnsealRequest(value=sealed_value(ciphertext, namespace, name))
        resp = await self._secrets_call(lambda s: s.secrets.Unseal(req, timeout=self.rpc_timeout_s))
        return Unsealed(bytes(resp.plaintext), str(resp.key_id), str(resp.scope))

    async def re_encrypt(self, ciphertext: bytes, namespace: str, name: str) -> ReEncrypted:
        """The same value sealed again to the newest key, inside the coordinator."""
        req = pb.ReEncryptRequest(value=sealed_value(ciphertext, namespace, name))
        resp = await self._secrets_call(
            lambda s: s.secrets.ReEncrypt(req, timeout=self.rpc_timeout_s)
        )
        return ReEncrypted(bytes(resp.ciphertext), str(resp.key_id), str(resp.previous_key_id))

    async def validate_sealed(self, values: Sequence[tuple[bytes, str, str]]) -> list[SealedCheck]:
        """Whether each (ciphertext, namespace, name) would unseal; no plaintext returned."""
        req = pb.ValidateSealedRequest(values=[sealed_value(*v) for v in values])
        resp = await self.call(lambda s: s.secrets.ValidateSealed(req, timeout=self.timeout_s))
        return [
            SealedCheck(Reason(c.failure) if c.failure else None, str(c.message), str(c.key_id))
            for c in resp.checks
        ]
