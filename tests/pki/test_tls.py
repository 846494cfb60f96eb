"""Mutual TLS (certificates, files, a real handshake over grpc.aio), member ids bound to
certificates (CSR signing, the peer port's sender check) and join tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.api.v1 import raft_pb2 as pb
from coordinator.api.v1 import raft_pb2_grpc as pb_grpc
from coordinator.daemon.join import JoinError, fetch_presented_chain, pick_ca
from coordinator.pki import (
    CA_FILE,
    MEMBER_CERT_FILE,
    MEMBER_KEY_FILE,
    CertifiedKey,
    JoinToken,
    JoinTokenError,
    JoinTokenRefusedError,
    MemberTls,
    StoredToken,
    TlsError,
    ca_fingerprint,
    check_csr,
    create_ca,
    issue_client_cert,
    issue_member_cert,
    load_ca_key,
    load_member_tls,
    make_csr,
    member_id_of,
    new_join_token,
    new_member_key,
    sign_member_csr,
    verify_join_token,
    write_ca,
    write_member_tls,
)
from coordinator.raft import Message, MessageType
from coordinator.runtime.clock import SystemClock
from coordinator.runtime.grpc_transport import GrpcTransport, server_options
from coordinator.runtime.tls import (
    channel_credentials,
    join_server_credentials,
    member_channel_credentials,
    member_server_credentials,
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


async def _stream(
    port: int, credentials: grpc.ChannelCredentials, messages: list[pb.RaftMessage], sender: int = 0
) -> pb.RaftAck:
    """One batch on a peer stream; the call's own outcome (AioRpcError with the server's
    status if refused). A server that refuses at once may end the call while the batch is
    still being written: that write fails (INTERNAL, or the call is already over), and the
    status worth checking is the call's, not the write's."""
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        call = pb_grpc.RaftStub(channel).Stream(timeout=10)
        try:
            await call.write(pb.RaftBatch(cluster_id=CLUSTER, messages=messages, sender=sender))
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        ack: pb.RaftAck = await call
        return ack


async def _call(port: int, credentials: grpc.ChannelCredentials) -> pb.RaftAck:
    return await _stream(port, credentials, [_heartbeat()])


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
    ca: CertifiedKey, other_ca: CertifiedKey
) -> None:
    token = new_join_token(ca.cert_pem)
    text = str(token)
    assert text.startswith("CONCORD-JOIN-1-")
    prefix, one, fingerprint, secret = text.rsplit("-", 3)
    assert (prefix, one) == ("CONCORD-JOIN", "1")
    assert fingerprint == ca_fingerprint(ca.cert_pem) and len(fingerprint) == 52
    assert len(secret) == 32
    stored = [StoredToken(token.id, token.secret_hash, 1)]
    assert secret not in repr(stored)  # only the hash is kept
    assert token.secret_digest.hex() == token.secret_hash and len(token.secret_digest) == 32

    assert verify_join_token(text, ca.cert_pem, stored) == token
    assert verify_join_token(f"  {text.lower()}\n", ca.cert_pem, stored) == token
    assert JoinToken.parse(text) == token

    with pytest.raises(JoinTokenRefusedError, match="token of another cluster"):
        verify_join_token(text, other_ca.cert_pem, stored)
    forged = f"{prefix}-1-{fingerprint}-{'a' * 32}"
    with pytest.raises(JoinTokenRefusedError, match="join token not valid for this cluster"):
        verify_join_token(forged, ca.cert_pem, stored)
    with pytest.raises(JoinTokenError, match="damaged"):
        verify_join_token(text[:-3], ca.cert_pem, stored)
    with pytest.raises(JoinTokenError, match="not a join token"):
        verify_join_token("SWMTKN-1-abc-def", ca.cert_pem, stored)
    with pytest.raises(JoinTokenError, match="version '2' is not supported"):
        verify_join_token(text.replace("-JOIN-1-", "-JOIN-2-"), ca.cert_pem, stored)

    # Revoked tokens are refused as revoked, with the time.
    revoked = [StoredToken(token.id, token.secret_hash, 1, revoked_ms=1_700_000_000_000)]
    with pytest.raises(
        JoinTokenRefusedError, match=f"join token {token.id} was revoked at 2023-11-14 22:13:20"
    ):
        verify_join_token(text, ca.cert_pem, revoked)


# --- member ids bound to certificates ------------------------------------------------------------


def test_member_certificates_carry_their_id(tmp_path: Path, ca: CertifiedKey) -> None:
    bound = issue_member_cert(ca, "member-7", member_id=7)
    assert member_id_of(bound.cert) == 7
    sans = bound.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["concord://member/7"]
    assert member_id_of(issue_member_cert(ca, "older").cert) is None  # unbound: any id
    write_member_tls(tmp_path / "m7", ca.cert_pem, bound)
    assert load_member_tls(tmp_path / "m7").member_id == 7
    with pytest.raises(ValueError, match="positive integer"):
        issue_member_cert(ca, "m", member_id=0)


def test_a_csr_is_signed_as_a_member_certificate_bound_to_the_id(
    ca: CertifiedKey, other_ca: CertifiedKey, tmp_path: Path
) -> None:
    key = new_member_key()
    csr = make_csr(key, "joiner", ["joiner.concord.svc"], ["10.1.2.3"])
    request = check_csr(csr)
    assert request.dns_names == ("joiner.concord.svc",) and request.ip_addresses == ("10.1.2.3",)
    pem = sign_member_csr(
        ca, request, member_id=4, name="member-4", hosts=["db.example", "10.9.9.9"]
    )
    cert = x509.load_pem_x509_certificate(pem)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == key.public_key()  # the joiner's key, which never left it
    assert member_id_of(cert) == 4
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "localhost",
        "joiner.concord.svc",
        "db.example",
    }
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "10.9.9.9",
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}

    # A CSR whose signature does not hold (altered after signing), or that is not one at all.
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    altered = x509.load_der_x509_csr(der[:-2] + bytes([der[-2] ^ 1]) + der[-1:])
    with pytest.raises(TlsError, match="not signed by its own key"):
        check_csr(altered.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(TlsError, match="not a PEM certificate signing request"):
        check_csr(b"hello")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")]))
        .sign(rsa_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(TlsError, match="EC P-256"):
        check_csr(rsa_csr)

    # --ca-key-file must hold the key of the cluster CA.
    write_ca(tmp_path / "ca", ca)
    assert load_ca_key(ca.cert_pem, tmp_path / "ca" / "ca-key.pem").key_pem == ca.key_pem
    write_ca(tmp_path / "other", other_ca)
    with pytest.raises(TlsError, match="not the key of the cluster CA"):
        load_ca_key(ca.cert_pem, tmp_path / "other" / "ca-key.pem")


async def _send_as(
    port: int, credentials: grpc.ChannelCredentials, sender: int
) -> pb.RaftAck | grpc.aio.AioRpcError:
    msg = to_wire(Message(MessageType.HEARTBEAT, to=1, frm=sender, term=1))
    try:
        return await _stream(port, credentials, [msg])
    except grpc.aio.AioRpcError as err:
        return err


def test_the_peer_port_refuses_a_member_certificate_speaking_for_another_member(
    tmp_path: Path, ca: CertifiedKey
) -> None:
    """A compromised member certificate cannot pose as another member (vote, append...)."""

    async def body(port: int, got: list[Message]) -> None:
        def creds(cert: CertifiedKey) -> grpc.ChannelCredentials:
            return channel_credentials(ca.cert_pem, cert.cert_pem, cert.key_pem)

        member2 = creds(issue_member_cert(ca, "member-2", member_id=2))
        member3 = creds(issue_member_cert(ca, "member-3", member_id=3))
        assert isinstance(await _send_as(port, member2, 2), pb.RaftAck)
        assert [m.frm for m in got] == [2]

        posing = await _send_as(port, member3, 2)
        assert isinstance(posing, grpc.aio.AioRpcError)
        assert posing.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "certificate of member 3 cannot send messages as member 2" in (
            posing.details() or ""
        )
        assert [m.frm for m in got] == [2]  # nothing from the impostor arrived

        # Nor can it claim to be member 2 in a hello (a batch's sender, no messages).
        with pytest.raises(grpc.aio.AioRpcError) as hello:
            await _stream(port, member3, [], sender=2)
        assert hello.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "certificate of member 3 cannot send messages as member 2" in (
            hello.value.details() or ""
        )
        assert isinstance(await _stream(port, member3, [], sender=3), pb.RaftAck)

        # A certificate issued before ids were bound keeps its meaning (any id).
        legacy = creds(issue_member_cert(ca, "member-x"))
        assert isinstance(await _send_as(port, legacy, 3), pb.RaftAck)
        assert [m.frm for m in got] == [2, 3]

    asyncio.run(_with_mtls_server(tmp_path, ca, body))


# --- the join port's handshake -------------------------------------------------------------------


def test_the_join_port_presents_the_ca_for_the_token_to_check(
    tmp_path: Path, ca: CertifiedKey, other_ca: CertifiedKey
) -> None:
    async def body() -> None:
        cert = issue_member_cert(ca, "member-1", member_id=1)
        tls = MemberTls(ca.cert_pem, cert.cert_pem, cert.key_pem, cert.cert.not_valid_after_utc, 1)
        server = grpc.aio.server()
        port = server.add_secure_port("127.0.0.1:0", join_server_credentials(tls))
        await server.start()
        try:
            chain = await fetch_presented_chain("127.0.0.1", port, 5)
            assert len(chain) == 2
            token = new_join_token(ca.cert_pem)
            assert pick_ca(token, chain, "here") == ca.cert_pem
            foreign = new_join_token(other_ca.cert_pem)
            with pytest.raises(JoinError, match="wrong cluster, or someone in the middle") as err:
                pick_ca(foreign, chain, "here")
            assert ca_fingerprint(ca.cert_pem) in str(err.value)
            assert foreign.ca_fingerprint in str(err.value)
            # No client certificate is asked for (the joiner has none yet).
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{port}", channel_credentials(ca.cert_pem)
            ) as channel:
                await asyncio.wait_for(channel.channel_ready(), 10)
        finally:
            await server.stop(0)

    asyncio.run(body())
