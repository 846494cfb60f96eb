"""concord.v1.Secrets: sealing certificates, key renewal, Unseal, ReEncrypt, ValidateSealed.

The sealing key pairs live in the replicated state (`coordinator.fsm.sealing_keys`); this
service is the only code that reads their private halves, and no response carries one.

**Keys.** A key is made where it is proposed: `new_sealing_key` (RSA-4096 generation, about a
second of CPU, run in a worker thread so the Raft loop keeps its heartbeats) on the member
that answers, then committed as a conditional `SealingKeyAdd` naming the key it expects to be
newest. Racing first uses or renewals therefore commit one key; the losers answer with the
winner. GetSealingCertificate creates the first key on first use; RenewSealingKey makes a new
one current; the leader also renews on a schedule (`ServiceConfig.sealing_key_renew_s`,
checked a tenth of the period apart, at most every 10 minutes), from its wall clock against
the newest key's `created_ms`. Old keys are kept: everything sealed to them still unseals.

**Who may call what.** Every method needs a client certificate of the cluster (the client
port demands one under TLS). Unseal, the one method that answers plaintext, is for the
operator's identity only: a client certificate naming the role URI `concord://role/operator`
(`coordinator.pki.roles_of`), which `concordctl cluster init` issues in
`operator/`. A certificate chains to the cluster CA or the TLS handshake fails, so the role in
it is as trustworthy as the CA key. Without TLS nobody can be identified, and Unseal refuses
everyone. ReEncrypt and ValidateSealed never return plaintext, so any client may call them.

Workload identities (pods with a ServiceAccount token, on the workload port: `_workload.py`)
may Unseal values of their own namespace sealed strict or namespace-wide; the port's policy
(`_policy.py`) decides that before this service runs.

**Unsealing** reads the key named in the envelope from the local state machine; a key it does
not know yet (a follower a moment behind a renewal) gets a linearizable read first, so
UNKNOWN_KEY is only ever answered for a key the cluster has not committed. The RSA and AES
work runs in a worker thread. A value that does not unseal ends the call with a status by
reason (MALFORMED: INVALID_ARGUMENT, UNKNOWN_KEY: NOT_FOUND, SCOPE_MISMATCH and TAMPERED:
FAILED_PRECONDITION) and the reason's name in the trailing metadata `concord-seal-failure`.
Nothing here logs a plaintext, a ciphertext or a key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from coordinator import sealing
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import SealingKey, SealingKeyAdd, SealingKeyResult
from coordinator.pki import OPERATOR_ROLE, ROLE_URI_PREFIX, roles_of

from ._caller import workload
from ._core import Core
from ._errors import Code, ServiceError
from ._rpc import Call, Servicer, blocking, unary

log = logging.getLogger("concord.secrets")

SEAL_FAILURE_METADATA_KEY = "concord-seal-failure"
"""Trailing metadata: the `Reason` name of a value that did not unseal."""
VALIDATE_VALUES_MAX = 1000
RENEW_CHECK_S_MAX = 600.0
_CODES = {
    sealing.Reason.MALFORMED: Code.INVALID_ARGUMENT,
    sealing.Reason.UNKNOWN_KEY: Code.NOT_FOUND,
    sealing.Reason.SCOPE_MISMATCH: Code.FAILED_PRECONDITION,
    sealing.Reason.TAMPERED: Code.FAILED_PRECONDITION,
}


def seal_failure(err: sealing.SealError) -> ServiceError:
    return ServiceError(
        _CODES[err.reason],
        f"{err.reason.name.lower().replace('_', ' ')}: {err}",
        ((SEAL_FAILURE_METADATA_KEY, err.reason.name),),
    )


def renewal_due(newest_created_ms: int, now_ms: int, period_ms: int) -> bool:
    """Whether the newest key is old enough to renew (a clock that went back: not yet)."""
    return now_ms - newest_created_ms >= period_ms


def operator_refusal(auth: Mapping[str, Sequence[bytes]]) -> str:
    """Why this caller may not unseal ("" if it may): see the module docstring."""
    needed = (
        "Unseal answers only the operator's identity: a client certificate of this cluster "
        f"naming {ROLE_URI_PREFIX}{OPERATOR_ROLE} (`concordctl cluster init` writes one in "
        "operator/)"
    )
    if b"".join(auth.get("transport_security_type", ())) != b"ssl":
        return f"{needed}; this member serves without TLS, so no caller can be identified"
    pems = auth.get("x509_pem_cert", ())
    if not pems:
        return f"{needed}; no client certificate was presented"
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return f"{needed}; the client certificate cannot be read"
    roles = roles_of(cert)
    if OPERATOR_ROLE in roles:
        return ""
    shown = ", ".join(sorted(roles)) or "none"
    return f"{needed}; this certificate ({cert.subject.rfc4514_string()}) has roles: {shown}"


def _info(key: SealingKey) -> pb.SealingKeyInfo:
    return pb.SealingKeyInfo(
        key_id=key.id.hex(),
        created_ms=key.created_ms,
        certificate_pem=key.certificate_pem.decode("ascii"),
    )


class SecretsService(Servicer):
    def __init__(self, core: Core) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core
        self._private: dict[bytes, rsa.RSAPrivateKey] = {}
        """Loaded private keys by id (parsing a 4096-bit key costs milliseconds)."""
        self._public: dict[bytes, rsa.RSAPublicKey] = {}
        self._generating = asyncio.Lock()
        """One key generation at a time on this member."""

    # --- keys ----------------------------------------------------------------------------------

    def _newest(self) -> SealingKey | None:
        keys = self.core.fsm.sealing_keys()
        return keys[-1] if keys else None

    async def _add_key(self, after: bytes) -> tuple[SealingKey, bool]:
        """Propose a new key to follow `after` (b"": the first); (newest key, added)."""
        core = self.core
        # A follower would make a key only to be redirected: lead first, then spend the CPU.
        await core.require_leader()
        async with self._generating:
            now_ms = core.view.wall_ms()
            now = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
            pair = await asyncio.to_thread(sealing.new_sealing_key, now)
            add = SealingKeyAdd(
                pair.key_id, now_ms, pair.private_key_der, pair.certificate_pem, after
            )
            result = core.expect(await core.propose(add), SealingKeyResult)
        key = core.fsm.sealing_key(result.key_id)
        if key is None:  # pragma: no cover - keys are never removed
            raise ServiceError(Code.INTERNAL, "the committed sealing key is missing")
        if result.added:
            log.info("sealing key %s is now current", key.id.hex())
        return key, result.added

    async def _current(self) -> SealingKey:
        """The key that seals, after a linearizable read; the first one made if none."""
        await self.core.read(False)
        newest = self._newest()
        if newest is None:
            newest, _ = await self._add_key(b"")
        return newest

    async def renew_on_schedule(self, period_s: float) -> None:
        """The leader's renewal duty (runs for the service's lifetime; see the docstring)."""
        period_ms = max(1, round(period_s * 1000))
        check_s = min(period_s / 10, RENEW_CHECK_S_MAX)
        while True:
            await asyncio.sleep(check_s)
            newest = self._newest()
            if not self.core.view.is_leader or newest is None:
                continue
            if not renewal_due(newest.created_ms, self.core.view.wall_ms(), period_ms):
                continue
            try:
                await self._add_key(newest.id)
            except (ServiceError, OSError) as exc:
                log.warning("scheduled sealing key renewal failed (retrying later): %s", exc)

    async def _private_key(self, key_id: bytes) -> rsa.RSAPrivateKey | None:
        cached = self._private.get(key_id)
        if cached is not None:
            return cached
        key = self.core.fsm.sealing_key(key_id)
        if key is None:
            await self.core.read(False)  # a follower may not have applied a renewal yet
            key = self.core.fsm.sealing_key(key_id)
        if key is None:
            return None
        loaded = await asyncio.to_thread(sealing.load_private_key, key.private_key_der)
        self._private[key_id] = loaded
        return loaded

    def _public_key(self, key: SealingKey) -> rsa.RSAPublicKey:
        cached = self._public.get(key.id)
        if cached is None:
            public = x509.load_pem_x509_certificate(key.certificate_pem).public_key()
            if not isinstance(public, rsa.RSAPublicKey):  # pragma: no cover - we made it
                raise ServiceError(Code.INTERNAL, f"sealing key {key.id.hex()} is not RSA")
            cached = self._public[key.id] = public
        return cached

    async def _open(self, value: pb.SealedValue) -> sealing.Opened:
        """Unseal `value` inside the member; SealError if it does not unseal."""
        head = sealing.parse(value.ciphertext)
        private = await self._private_key(head.key_id)
        ring = {head.key_id: private} if private is not None else {}
        return await asyncio.to_thread(
            sealing.unseal, value.ciphertext, value.namespace, value.name, ring.get
        )

    # --- the RPCs --------------------------------------------------------------------------------

    @blocking
    async def GetSealingCertificate(
        self, request: pb.GetSealingCertificateRequest, call: Call
    ) -> pb.GetSealingCertificateResponse:
        current = await self._current()
        return pb.GetSealingCertificateResponse(
            header=self.core.header(),
            current=_info(current),
            keys=[_info(k) for k in self.core.fsm.sealing_keys()],
        )

    @blocking
    async def RenewSealingKey(
        self, request: pb.RenewSealingKeyRequest, call: Call
    ) -> pb.RenewSealingKeyResponse:
        await self.core.read(False)
        newest = self._newest()
        previous = newest.id if newest is not None else b""
        current, _ = await self._add_key(previous)
        return pb.RenewSealingKeyResponse(
            header=self.core.header(), current=_info(current), previous_key_id=previous.hex()
        )

    async def Unseal(
        self,
        request: pb.UnsealRequest,
        context: Any,  # noqa: ANN401 (grpc's context)
    ) -> pb.UnsealResponse:
        # A workload identity was admitted by the workload port's policy (its own namespace,
        # a strict or namespace-wide value); everyone else must be the operator.
        refusal = "" if workload() is not None else operator_refusal(context.auth_context())
        if refusal:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        return await self._unseal(request, context)

    @unary
    async def _unseal(self, request: pb.UnsealRequest, call: Call) -> pb.UnsealResponse:
        try:
            opened = await self._open(request.value)
        except sealing.SealError as err:
            raise seal_failure(err) from None
        return pb.UnsealResponse(
            header=self.core.header(),
            plaintext=opened.value,
            key_id=opened.key_id.hex(),
            scope=opened.scope.text,
        )

    @unary
    async def ReEncrypt(self, request: pb.ReEncryptRequest, call: Call) -> pb.ReEncryptResponse:
        value = request.value
        try:
            opened = await self._open(value)
        except sealing.SealError as err:
            raise seal_failure(err) from None
        newest = await self._current()
        ciphertext = await asyncio.to_thread(
            sealing.seal,
            self._public_key(newest),
            opened.value,
            opened.scope,
            value.namespace,
            value.name,
        )
        return pb.ReEncryptResponse(
            header=self.core.header(),
            ciphertext=ciphertext,
            key_id=newest.id.hex(),
            previous_key_id=opened.key_id.hex(),
        )

    @unary
    async def ValidateSealed(
        self, request: pb.ValidateSealedRequest, call: Call
    ) -> pb.ValidateSealedResponse:
        if len(request.values) > VALIDATE_VALUES_MAX:
            raise ServiceError(
                Code.INVALID_ARGUMENT,
                f"at most {VALIDATE_VALUES_MAX} values per call, not {len(request.values)}",
            )
        checks = []
        for value in request.values:
            try:
                opened = await self._open(value)
            except sealing.SealError as err:
                key_id = err.key_id.hex() if isinstance(err, sealing.UnknownKey) else ""
                if not key_id and err.reason is not sealing.Reason.MALFORMED:
                    key_id = sealing.parse(value.ciphertext).key_id.hex()
                checks.append(
                    pb.SealedValueCheck(
                        failure=pb.SealFailure.Name(err.reason.value),
                        message=str(err),
                        key_id=key_id,
                    )
                )
            else:
                checks.append(pb.SealedValueCheck(key_id=opened.key_id.hex()))
        return pb.ValidateSealedResponse(header=self.core.header(), checks=checks)
