"""concord.v1.Secrets on a real 3-member cluster (encrypted DiskWal in a tmp dir, grpc.aio
with mutual TLS from a real cluster CA), through the client library: who may unseal, the
reasons a value does not unseal, renewal (on demand and scheduled), ReEncrypt, validation,
and that no plaintext and no sealing private key is readable in any member's data dir."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from coordinator import sealing
from coordinator.client import Client, ConcordError, SealFailed
from coordinator.pki import (
    OPERATOR_ROLE,
    CertifiedKey,
    create_ca,
    issue_client_cert,
    issue_member_cert,
)
from coordinator.runtime.tls import channel_credentials, server_credentials
from coordinator.sealing import Reason, Scope
from coordinator.server import ServiceConfig
from coordinator.server._secrets import renewal_due

from .harness import Cluster, run, wait_for

CA = create_ca("secrets-test")
MEMBER = issue_member_cert(CA, "member")
CLIENT = issue_client_cert(CA, "concordctl")
OPERATOR = issue_client_cert(CA, "concord-operator", roles=[OPERATOR_ROLE])


def client(c: Cluster, who: CertifiedKey) -> Client:
    creds = channel_credentials(CA.cert_pem, who.cert_pem, who.key_pem)
    ends = [f"127.0.0.1:{m.served.port}" for m in c.running()]
    return Client(ends, credentials=creds, timeout_s=30.0, rpc_timeout_s=10.0)


def with_tls_cluster(
    root: Path, scenario: Callable[[Cluster], Awaitable[None]], **kwargs: object
) -> None:
    async def main() -> None:
        creds = server_credentials(CA.cert_pem, MEMBER.cert_pem, MEMBER.key_pem)
        c = await Cluster.start(root, credentials=creds, **kwargs)
        try:
            await scenario(c)
        finally:
            await c.close()

    run(main())


def public_key(pem: bytes) -> sealing.SealingCertificate:
    return sealing.load_sealing_certificate(pem, dt.datetime.now(dt.UTC))


def test_unseal_answers_the_operator_only_and_each_failure_names_its_reason(
    tmp_path: Path,
) -> None:
    async def scenario(c: Cluster) -> None:
        async with client(c, CLIENT) as user, client(c, OPERATOR) as op:
            keys = await user.sealing_certificate()
            cert = public_key(keys.current.certificate_pem)
            assert keys.keys == (keys.current,) and cert.key_id_hex == keys.current.key_id
            sealed = sealing.seal(cert.public_key, b"hunter2", Scope.STRICT, "prod", "db")

            with pytest.raises(ConcordError) as denied:
                await user.unseal(sealed, "prod", "db")
            assert denied.value.code == "PERMISSION_DENIED"
            assert "concord://role/operator" in denied.value.message
            assert "CN=concordctl" in denied.value.message

            opened = await op.unseal(sealed, "prod", "db")
            assert (opened.plaintext, opened.scope) == (b"hunter2", "strict")
            assert opened.key_id == cert.key_id_hex

            tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
            stranger = public_key(sealing.new_sealing_key(dt.datetime.now(dt.UTC)).certificate_pem)
            other = sealing.seal(stranger.public_key, b"x", Scope.CLUSTER_WIDE)
            cases = [
                (sealed, "prod", "web", Reason.SCOPE_MISMATCH, "FAILED_PRECONDITION"),
                (sealed, "dev", "db", Reason.SCOPE_MISMATCH, "FAILED_PRECONDITION"),
                (tampered, "prod", "db", Reason.TAMPERED, "FAILED_PRECONDITION"),
                (other, "prod", "db", Reason.UNKNOWN_KEY, "NOT_FOUND"),
                (b"garbage", "prod", "db", Reason.MALFORMED, "INVALID_ARGUMENT"),
            ]
            for value, ns, name, reason, code in cases:
                with pytest.raises(SealFailed) as failed:
                    await op.unseal(value, ns, name)
                assert (failed.value.reason, failed.value.code) == (reason, code)
                with pytest.raises(SealFailed) as failed:
                    await user.re_encrypt(value, ns, name)
                assert failed.value.reason is reason

            checks = await user.validate_sealed(
                [(sealed, "prod", "db")] + [(v, ns, n) for v, ns, n, _, _ in cases]
            )
            assert [ch.failure for ch in checks] == [None] + [r for *_, r, _ in cases]
            assert checks[0].ok and checks[0].key_id == cert.key_id_hex
            assert "scope strict" in checks[1].message

    with_tls_cluster(tmp_path, scenario)


def test_renewal_keeps_old_values_unsealable_and_reencrypt_moves_them_to_the_newest_key(
    tmp_path: Path,
) -> None:
    async def scenario(c: Cluster) -> None:
        async with client(c, CLIENT) as user, client(c, OPERATOR) as op:
            first = (await user.sealing_certificate()).current
            old = sealing.seal(
                public_key(first.certificate_pem).public_key, b"v1", Scope.NAMESPACE_WIDE, "prod"
            )
            second = await user.renew_sealing_key()
            assert second.key_id != first.key_id
            keys = await user.sealing_certificate()
            assert keys.current == second and [k.key_id for k in keys.keys] == [
                first.key_id,
                second.key_id,
            ]
            # Old values still unseal, on every member (followers included).
            for m in c.running():
                async with Client(
                    [f"127.0.0.1:{m.served.port}"],
                    credentials=channel_credentials(
                        CA.cert_pem, OPERATOR.cert_pem, OPERATOR.key_pem
                    ),
                ) as one:
                    assert (await one.unseal(old, "prod", "any")).plaintext == b"v1"
            moved = await user.re_encrypt(old, "prod", "any")
            assert (moved.key_id, moved.previous_key_id) == (second.key_id, first.key_id)
            assert sealing.parse(moved.ciphertext).key_id.hex() == second.key_id
            assert sealing.parse(moved.ciphertext).scope is Scope.NAMESPACE_WIDE
            again = await op.unseal(moved.ciphertext, "prod", "other")
            assert (again.plaintext, again.key_id) == (b"v1", second.key_id)
            with pytest.raises(SealFailed) as failed:
                await op.unseal(moved.ciphertext, "dev", "other")
            assert failed.value.reason is Reason.SCOPE_MISMATCH

    with_tls_cluster(tmp_path, scenario)


def test_racing_first_uses_commit_one_key(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        async with client(c, CLIENT) as a, client(c, CLIENT) as b:
            one, two = await asyncio.gather(a.sealing_certificate(), b.sealing_certificate())
            assert one.current == two.current and len(two.keys) == 1
            for m in c.running():
                await wait_for(lambda m=m: len(m.loop.fsm.sealing_keys()) == 1)

    with_tls_cluster(tmp_path, scenario)


def test_the_leader_renews_on_schedule(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        async with client(c, CLIENT) as user:
            first = (await user.sealing_certificate()).current
            leader = await c.leader()
            await wait_for(lambda: len(leader.loop.fsm.sealing_keys()) >= 2, timeout_s=60)
            keys = leader.loop.fsm.sealing_keys()
            assert keys[0].id.hex() == first.key_id and keys[1].created_ms >= first.created_ms

    with_tls_cluster(tmp_path, scenario, service=ServiceConfig(sealing_key_renew_s=1.0))


def test_renewal_is_due_by_age_and_never_for_a_clock_that_went_back() -> None:
    day_ms = 86_400_000
    assert not renewal_due(10 * day_ms, 39 * day_ms, 30 * day_ms)
    assert renewal_due(10 * day_ms, 40 * day_ms, 30 * day_ms)
    assert not renewal_due(10 * day_ms, 5 * day_ms, 30 * day_ms)


def test_without_tls_nobody_may_unseal(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        async with Client([f"127.0.0.1:{m.served.port}" for m in c.running()]) as plain:
            cert = public_key((await plain.sealing_certificate()).current.certificate_pem)
            sealed = sealing.seal(cert.public_key, b"x", Scope.CLUSTER_WIDE)
            with pytest.raises(ConcordError) as denied:
                await plain.unseal(sealed, "a", "b")
            assert denied.value.code == "PERMISSION_DENIED"
            assert "without TLS" in denied.value.message
            assert (await plain.validate_sealed([(sealed, "a", "b")]))[0].ok

    async def main() -> None:
        c = await Cluster.start(tmp_path)
        try:
            await scenario(c)
        finally:
            await c.close()

    run(main())


def test_no_plaintext_and_no_private_key_in_any_data_dir(tmp_path: Path) -> None:
    plaintext = b"correct-horse-battery-staple-0123456789"
    found: dict[str, bytes] = {}

    async def scenario(c: Cluster) -> None:
        async with client(c, CLIENT) as user, client(c, OPERATOR) as op:
            cert = public_key((await user.sealing_certificate()).current.certificate_pem)
            sealed = sealing.seal(cert.public_key, plaintext, Scope.STRICT, "prod", "db")
            assert (await op.unseal(sealed, "prod", "db")).plaintext == plaintext
            await user.renew_sealing_key()
            moved = await user.re_encrypt(sealed, "prod", "db")
            assert (await op.unseal(moved.ciphertext, "prod", "db")).plaintext == plaintext
            for i in range(12):  # past snapshot_every_entries: the keys are in snapshots too
                await user.put(b"k%d" % i, b"v")
            for m in c.running():
                await wait_for(lambda m=m: len(m.loop.fsm.sealing_keys()) == 2)
                await wait_for(lambda m=m: m.loop.storage.snapshot().meta.index > 0)
                for key in m.loop.fsm.sealing_keys():
                    found[key.id.hex()] = key.private_key_der

    with_tls_cluster(tmp_path, scenario, snapshot_every_entries=4)
    assert len(found) == 2
    needles = {"plaintext": plaintext}
    for key_id, der in found.items():
        private = serialization.load_der_private_key(der, None)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        body = b"".join(pem.splitlines()[1:-1])
        needles[f"key {key_id} DER"] = der
        needles[f"key {key_id} DER middle"] = der[200:264]
        needles[f"key {key_id} PEM body"] = body[100:164]
        needles[f"key {key_id} base64"] = base64.b64encode(der)[100:164]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files, "the members wrote nothing?"
    for path in files:
        data = path.read_bytes()
        for what, needle in needles.items():
            assert needle not in data, f"{what} readable in {path}"
