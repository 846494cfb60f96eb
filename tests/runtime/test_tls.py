"""Mutual TLS (certificates, files, a real handshake over grpc.aio) and join tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from coordinator.api.v1 import raft_pb2 as pb
from coordinator.api.v1 import raft_pb2_grpc as pb_grpc
from coordinator.raft import Message, MessageType
from coordinator.runtime.clock import SystemClock
from coordinator.runtime.grpc_transport import GrpcTransport, server_options
from coordinator.runtime.tls import (
    CA_FILE,
    MEMBER_CERT_FILE,
    MEMBER_KEY_FILE,
    CertifiedKey,
    JoinToken,
    JoinTokenError,
    JoinTokenStore,
    TlsError,
    ca_fingerprint,
    channel_credentials,
    create_ca,
    issue_client_cert,
    issue_member_cert,
    load_member_tls,
    member_channel_credentials,
    member_server_credentials,
    verify_join_token,
    write_ca,
    write_member_tls,
)
from coordinator.runtime.wire import to_wire

CLUSTER = "tls-test"


@pytest.fixture(scope="module")
def ca() -> CertifiedKey:
    return create_ca(CLUSTER)


@pytest.fixture(scope="module")
def other_ca() -> CertifiedKey:
    return create_ca("someone-else")


def test_certificates_have_the_right_shape(ca: CertifiedKey) -> None:
    ca_cert = ca.cert
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    life = ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < life < dt.timedelta(days=3651)

    member = issue_member_cert(ca, "member-1", ["concord-0.concord.ns.svc"], ["10.0.0.7"])
    cert = member.cert
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "concord-0.concord.ns.svc"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
        "10.0.0.7",
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    client = issue_client_cert(ca, "concordctl").cert
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_files_are_private_and_checked_on_load(
    tmp_path: Path, ca: CertifiedKey, other_ca: CertifiedKey
) -> None:
    write_ca(tmp_path / "ca", ca)
    member = issue_member_cert(ca, "member-1")
    tls_dir = tmp_path / "m1"
    write_member_tls(tls_dir, ca.cert_pem, member)
    for path in [*(tmp_path / "ca").iterdir(), *tls_dir.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(p.name for p in tls_dir.iterdir()) == sorted(
        [CA_FILE, MEMBER_CERT_FILE, MEMBER_KEY_FILE]
    )
    loaded = load_member_tls(tls_dir)
    assert loaded.cert_pem == member.cert_pem

    # A member certificate from another cluster's CA is caught before any socket opens.
    write_member_tls(tmp_path / "wrong-ca", ca.cert_pem, issue_member_cert(other_ca, "m"))
    with pytest.raises(TlsError, match="not issued by the CA"):
        load_member_tls(tmp_path / "wrong-ca")
    # A key that is not the certificate's.
    mixed = tmp_path / "mixed"
    write_member_tls(mixed, ca.cert_pem, CertifiedKey(member.cert_pem, other_ca.key_pem))
    with pytest.raises(TlsError, match="is not the key of"):
        load_member_tls(mixed)
    # Expired (or not yet valid).
    with pytest.raises(TlsError, match="issue a new one"):
        load_member_tls(tls_dir, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=400))
    with pytest.raises(TlsError, match="is missing"):
        load_member_tls(tmp_path / "nothing-here")


# --- the handshake, for real -------------------------------------------------------------------


async def _call(port: int, credentials: grpc.ChannelCredentials) -> pb.RaftAck:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        call = pb_grpc.RaftStub(channel).Stream(timeout=10)
        await call.write(pb.RaftBatch(cluster_id=CLUSTER, messages=[_heartbeat()]))
        await call.done_writing()
        ack: pb.RaftAck = await call
        return ack


def _heartbeat() -> pb.RaftMessage:
    return to_wire(Message(MessageType.HEARTBEAT, to=1, frm=2, term=1))


async def _with_mtls_server(
    tmp_path: Path, ca: CertifiedKey, body: Callable[[int, list[Message]], Awaitable[None]]
) -> None:
    tls_dir = tmp_path / "server"
    write_member_tls(tls_dir, ca.cert_pem, issue_member_cert(ca, "member-1"))
    server_tls = load_member_tls(tls_dir)
    got: list[Message] = []
    transport = GrpcTransport(1, CLUSTER, SystemClock())
    transport.bind(got.append)
    server = grpc.aio.server(options=server_options())
    transport.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", member_server_credentials(server_tls))
    await server.start()
    try:
        await body(port, got)
    finally:
        await transport.close()
        await server.stop(0)


def test_mutual_tls_admits_only_certificates_of_the_cluster_ca(
    tmp_path: Path, ca: CertifiedKey, other_ca: CertifiedKey
) -> None:
    async def body(port: int, got: list[Message]) -> None:
        # A member certificate from the cluster CA: connects, and the message arrives.
        peer = issue_member_cert(ca, "member-2")
        ok = channel_credentials(ca.cert_pem, peer.cert_pem, peer.key_pem)
        assert isinstance(await _call(port, ok), pb.RaftAck)
        assert len(got) == 1

        # A client certificate from the cluster CA completes the handshake but may not speak
        # Raft: it could forge votes or TimeoutNow.
        client = issue_client_cert(ca, "concordctl")
        as_client = channel_credentials(ca.cert_pem, client.cert_pem, client.key_pem)
        with pytest.raises(grpc.aio.AioRpcError) as posing:
            await _call(port, as_client)
        assert posing.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "client certificate" in (posing.value.details() or "")
        assert len(got) == 1

        # A certificate from another CA (trusting our CA for the server): refused.
        stranger = issue_client_cert(other_ca, "mallory")
        bad = channel_credentials(ca.cert_pem, stranger.cert_pem, stranger.key_pem)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _call(port, bad)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

        # No client certificate at all: refused.
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await _call(port, channel_credentials(ca.cert_pem))
        assert anonymous.value.code() is grpc.StatusCode.UNAVAILABLE

        # A client that trusts another CA does not accept our server either.
        client_of_other = issue_client_cert(other_ca, "c")
        wrong_trust = channel_credentials(
            other_ca.cert_pem, client_of_other.cert_pem, client_of_other.key_pem
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await _call(port, wrong_trust)
        assert len(got) == 1

    asyncio.run(_with_mtls_server(tmp_path, ca, body))


def test_two_members_talk_over_mutual_tls(tmp_path: Path, ca: CertifiedKey) -> None:
    async def body(port: int, got: list[Message]) -> None:
        tls_dir = tmp_path / "client-member"
        write_member_tls(tls_dir, ca.cert_pem, issue_member_cert(ca, "member-2"))
        creds = member_channel_credentials(load_member_tls(tls_dir))
        sender = GrpcTransport(2, CLUSTER, SystemClock(), credentials=creds)
        try:
            sender.add_peer(1, f"127.0.0.1:{port}")

            async def until_delivered() -> None:
                while not got:
                    sender.send(Message(MessageType.HEARTBEAT, to=1, frm=2, term=1))
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(until_delivered(), 10)
            assert sender.stats()[1].connected
        finally:
            await sender.close()

    asyncio.run(_with_mtls_server(tmp_path, ca, body))


# --- join tokens -------------------------------------------------------------------------------


def test_join_tokens_pin_the_ca_and_check_the_secret(
    tmp_path: Path, ca: CertifiedKey, other_ca: CertifiedKey
) -> None:
    store = JoinTokenStore(tmp_path / "join-tokens.json")
    token = store.issue(ca.cert_pem, now_ms=1)
    text = str(token)
    assert text.startswith("CONCORD-JOIN-1-")
    prefix, one, fingerprint, secret = text.rsplit("-", 3)
    assert (prefix, one) == ("CONCORD-JOIN", "1")
    assert fingerprint == ca_fingerprint(ca.cert_pem) and len(fingerprint) == 52
    assert len(secret) == 32
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert secret not in store.path.read_text()  # only the hash is stored

    assert verify_join_token(text, ca.cert_pem, store) == token
    assert verify_join_token(f"  {text.lower()}\n", ca.cert_pem, store) == token
    assert JoinToken.parse(text) == token

    with pytest.raises(JoinTokenError, match="for another cluster"):
        verify_join_token(text, other_ca.cert_pem, store)
    forged = f"{prefix}-1-{fingerprint}-{'a' * 32}"
    with pytest.raises(JoinTokenError, match="not valid for this cluster"):
        verify_join_token(forged, ca.cert_pem, store)
    with pytest.raises(JoinTokenError, match="damaged"):
        verify_join_token(text[:-3], ca.cert_pem, store)
    with pytest.raises(JoinTokenError, match="not a join token"):
        verify_join_token("SWMTKN-1-abc-def", ca.cert_pem, store)
    with pytest.raises(JoinTokenError, match="version '2' is not supported"):
        verify_join_token(text.replace("-JOIN-1-", "-JOIN-2-"), ca.cert_pem, store)

    # Revoked tokens are refused as revoked; rotation revokes every valid one.
    store.revoke(token.id, now_ms=2)
    with pytest.raises(JoinTokenError, match="was revoked"):
        verify_join_token(text, ca.cert_pem, store)
    second = store.issue(ca.cert_pem, now_ms=3)
    third = store.rotate(ca.cert_pem, now_ms=4)
    with pytest.raises(JoinTokenError, match="was revoked"):
        verify_join_token(str(second), ca.cert_pem, store)
    assert verify_join_token(str(third), ca.cert_pem, store) == third
    store.revoke(str(third), now_ms=5)
    assert all(t.revoked_ms for t in store.tokens())
    with pytest.raises(JoinTokenError, match="no join token"):
        store.revoke("nope", now_ms=6)
