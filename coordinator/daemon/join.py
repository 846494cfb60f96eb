"""Joining a running cluster over the network: the joining member's side.

**The joiner** (`concord-coordinator --join HOST:PORT --join-token TOKEN`, new data dir):

1. fetch the cluster CA from the join port without trusting anything yet: a TLS handshake
   that does not verify the server (`fetch_presented_chain`; the join port sends the CA after
   its own certificate), then pick the certificate whose SHA-256 fingerprint is the one in
   the token (`tls.check_ca_fingerprint`). No match: stop, naming both fingerprints (wrong
   cluster, or someone in the middle). Only then is anything sent;
2. generate its key locally (it never leaves the member) and call `Join` with a CSR over a
   gRPC channel that trusts that CA only, so the answer comes from a holder of a certificate
   the cluster CA issued for that address;
3. check the answer (the certificate is the CA's, for our key, bound to the id we were
   given), write `ca.pem`, `member.pem` and `member-key.pem` (0600) into its `--tls-dir`,
   and `join.json` (the `JoinRecord`: cluster id, member id, name, address book, the
   configuration the log starts from, whether to ask for promotion) into its data dir;
4. then start as any member does, from an empty WAL that starts at the configuration the
   leader's log starts from (or at none: the leader then sends a snapshot). It is a learner;
   once it has caught up it asks the leader to make it a voter
   (`membership.promote_when_caught_up`),
   unless `--join-as learner`.

UNAVAILABLE and DEADLINE_EXCEEDED (no leader for a moment, the join port not up yet,
connection refused) are retried until `--join-timeout`; a refusal (a token that is wrong,
revoked or of another cluster; an id or name taken) ends the join at once with the
cluster's message. A join whose answer was lost may have admitted the member anyway: a retry
with the same name and peer URL resumes it if its learner change never committed, and is
refused (ALREADY_EXISTS, saying how to remove the first one) if it did.

A restart of a joined member needs neither the token nor `--initial-cluster`: `join.json`
supplies the cluster id, the member id and the addresses (`read_join_record`).

What a running member does for membership (lending the join services its authority, its
own directory entry, asking to be promoted, the first start of a new data dir) is in
`membership.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from coordinator.api.v1 import join_pb2 as jpb
from coordinator.api.v1 import join_pb2_grpc as jpb_grpc
from coordinator.pki import (
    CertifiedKey,
    JoinToken,
    JoinTokenError,
    TlsError,
    ca_fingerprint,
    check_ca_fingerprint,
    key_pem,
    make_csr,
    member_id_of,
    new_member_key,
    write_pem,
)
from coordinator.raft import ConfState

log = logging.getLogger("concord.join")

_generated: Any = jpb_grpc  # untyped generated module


JOIN_RECORD_FILE = "join.json"
JOIN_RECORD_VERSION = 1
_RETRY_MAX_S = 2.0


class JoinError(Exception):
    """The join did not happen; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class JoinSettings:
    """`--join`, `--join-token`, `--join-as`, `--join-timeout`."""

    address: str
    """host:port of a member's join port (`--join-listen`)."""
    token: JoinToken
    as_learner: bool = False
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class JoinRecord:
    """What a member that joined keeps in its data dir (`join.json`, not secret)."""

    cluster_id: str
    member_id: int
    name: str
    peers: dict[int, str]
    """The address book at the join: member id -> peer URL or host:port."""
    log_start: ConfState | None
    """The configuration the leader's log started from (its index-0 snapshot), or None
    when the leader had compacted past it (then it sends a snapshot)."""
    promote: bool
    """Ask to become a voter once caught up (`--join-as voter`)."""

    def dial_addresses(self) -> dict[int, str]:
        return {i: dial_address(url) for i, url in self.peers.items()}


def dial_address(url: str) -> str:
    """'scheme://host:port' or 'host:port' -> 'host:port'."""
    return (url.split("://", 1)[1] if "://" in url else url).rstrip("/")


def read_join_record(data_dir: Path) -> JoinRecord | None:
    """The data dir's join record; None if the member did not join over the network.
    JoinError if it is there but unreadable."""
    path = data_dir / JOIN_RECORD_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise JoinError(f"cannot read {path}: {err.strerror}") from None
    try:
        doc = json.loads(raw)
        if doc.get("version") != JOIN_RECORD_VERSION:
            raise JoinError(f"{path}: unsupported version {doc.get('version')!r}")
        start = doc["log_start"]
        log_start = (
            None
            if start is None
            else ConfState(
                frozenset(int(i) for i in start["voters"]),
                frozenset(int(i) for i in start["learners"]),
            )
        )
        return JoinRecord(
            cluster_id=str(doc["cluster_id"]),
            member_id=int(doc["member_id"]),
            name=str(doc["name"]),
            peers={int(i): str(url) for i, url in doc["peers"].items()},
            log_start=log_start,
            promote=bool(doc["promote"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise JoinError(f"{path} is damaged ({err}); it records how this member joined") from None


def write_join_record(data_dir: Path, record: JoinRecord) -> None:
    start = record.log_start
    doc = {
        "version": JOIN_RECORD_VERSION,
        "cluster_id": record.cluster_id,
        "member_id": record.member_id,
        "name": record.name,
        "peers": {str(i): url for i, url in sorted(record.peers.items())},
        "log_start": None
        if start is None
        else {"voters": sorted(start.voters), "learners": sorted(start.learners)},
        "promote": record.promote,
    }
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_pem(data_dir / JOIN_RECORD_FILE, json.dumps(doc, indent=2).encode("utf-8") + b"\n")


# --- step 1: the CA, fetched unverified and checked against the token ---------------------------


async def fetch_presented_chain(host: str, port: int, timeout_s: float) -> list[bytes]:
    """The certificates (DER) a TLS server presents, without verifying any of them. OSError
    if nothing answers there or the handshake fails."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])  # a gRPC server may insist on HTTP/2
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), timeout_s)
    except TimeoutError:
        raise OSError(f"no TLS handshake within {timeout_s:.0f} s") from None
    try:
        return _unverified_chain(writer.get_extra_info("ssl_object"))
    finally:
        # Abort rather than close: a graceful TLS close waits for the server's close_notify,
        # which a gRPC server that got no HTTP/2 preface may never send.
        writer.transport.abort()


def _unverified_chain(ssl_object: Any) -> list[bytes]:  # noqa: ANN401 (ssl.SSLObject)
    """`SSLObject.get_unverified_chain()` (public from Python 3.13, DER bytes), or the
    `_sslobj.get_unverified_chain()` that CPython 3.10 to 3.12 have (certificate objects)."""
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        raise OSError(
            "this Python cannot read the certificates a server presents; give the cluster "
            "CA another way"
        )
    out: list[bytes] = []
    for cert in getter() or ():
        if isinstance(cert, bytes):
            out.append(cert)
        else:
            out.append(ssl.PEM_cert_to_DER_cert(cert.public_bytes()))
    return out


def pick_ca(token: JoinToken, chain_der: Iterable[bytes], where: str) -> bytes:
    """The CA certificate (PEM) in a presented chain that the token names; JoinError naming
    both fingerprints if none is."""
    presented: list[bytes] = []
    for der in chain_der:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        pem = cert.public_bytes(serialization.Encoding.PEM)
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if constraints.ca:
            presented.append(pem)
            if ca_fingerprint(pem) == token.ca_fingerprint:
                return pem
    if not presented:
        raise JoinError(
            f"{where} presents no CA certificate in its TLS handshake: is it a member's join "
            "port (--join-listen)?"
        )
    try:
        check_ca_fingerprint(token, presented[-1])
    except JoinTokenError as err:
        raise JoinError(f"refusing to join through {where}: {err}") from None
    raise AssertionError("unreachable: the fingerprint matched")  # pragma: no cover


# --- steps 2 and 3: the Join call, and checking its answer ---------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    """What a successful join gives the new member."""

    ca_pem: bytes
    certified: CertifiedKey
    record: JoinRecord


@dataclass(frozen=True, slots=True)
class JoinAsk:
    """Who the joiner says it is (0 / "" leave the choice to the cluster)."""

    member_id: int
    name: str
    peer_url: str
    client_url: str
    cluster_id: str = ""
    """If set, the cluster's id must be this one."""


async def join_cluster(
    settings: JoinSettings,
    ask: JoinAsk,
    *,
    stop: asyncio.Event | None = None,
) -> Joined:
    """Steps 1 to 3 of the module docstring; JoinError saying why if the join fails (or
    `stop` is set meanwhile)."""
    host, _, port_text = settings.address.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit():
        raise JoinError(f"--join {settings.address!r} must be HOST:PORT")
    port = int(port_text)
    clock = asyncio.get_running_loop()
    deadline = clock.time() + settings.timeout_s
    delay_s = 0.1
    reported = ""

    async def pause(why: str) -> None:
        nonlocal delay_s, reported
        if clock.time() + delay_s > deadline:
            raise JoinError(f"{why}; gave up after {settings.timeout_s:g} s (--join-timeout)")
        if why != reported:
            log.warning("%s; retrying for up to %g s", why, settings.timeout_s)
            reported = why
        if stop is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
            if stop.is_set():
                raise JoinError("stopped while joining")
        else:
            await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, _RETRY_MAX_S)

    while True:
        try:
            chain = await fetch_presented_chain(host, port, min(5.0, settings.timeout_s))
            break
        except OSError as err:
            why = err.strerror or str(err) or type(err).__name__
            await pause(f"cannot reach the join address {settings.address}: {why}")
    ca_pem = pick_ca(settings.token, chain, settings.address)
    log.info(
        "the cluster CA at %s matches the join token (fingerprint %s...)",
        settings.address,
        settings.token.ca_fingerprint[:12],
    )
    key = new_member_key()
    request = jpb.JoinRequest(
        token=str(settings.token),
        csr=make_csr(key, ask.name),
        id=ask.member_id,
        name=ask.name,
        peer_url=ask.peer_url,
        client_url=ask.client_url,
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(settings.address, credentials) as channel:
        stub = _generated.JoinStub(channel)
        while True:
            remaining = deadline - clock.time()
            try:
                response: jpb.JoinResponse = await stub.Join(
                    request, timeout=max(1.0, min(15.0, remaining))
                )
                break
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise JoinError(
                        f"the cluster refused the join: {code.name}: {details}"
                    ) from None
                await pause(f"the join through {settings.address} did not go through: {details}")
    return _check_answer(response, ca_pem, CertifiedKey(b"", key_pem(key)), ask, settings)


def _check_answer(
    response: jpb.JoinResponse,
    ca_pem: bytes,
    own: CertifiedKey,
    ask: JoinAsk,
    settings: JoinSettings,
) -> Joined:
    if bytes(response.ca).strip() != ca_pem.strip():
        raise JoinError("the member answered with another CA than the one it presented")
    try:
        cert = x509.load_pem_x509_certificate(bytes(response.certificate))
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
        bound = member_id_of(cert)
    except (ValueError, TypeError, InvalidSignature, TlsError) as err:
        raise JoinError(f"the certificate the cluster sent is not valid: {err}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = own.private_key().public_key().public_bytes(serialization.Encoding.DER, public)
    if cert.public_key().public_bytes(serialization.Encoding.DER, public) != ours:
        raise JoinError("the certificate the cluster sent is not for this member's key")
    member = int(response.member_id)
    if bound != member or (ask.member_id and member != ask.member_id):
        raise JoinError(
            f"the cluster answered for member {member} with a certificate of member {bound} "
            f"(asked for {ask.member_id or 'any id'})"
        )
    if ask.cluster_id and response.cluster_id != ask.cluster_id:
        raise JoinError(
            f"the cluster at {settings.address} is {response.cluster_id!r}, not "
            f"{ask.cluster_id!r} (--cluster-id)"
        )
    log_start = (
        ConfState(frozenset(response.log_start_voters), frozenset(response.log_start_learners))
        if response.log_start_known
        else None
    )
    record = JoinRecord(
        cluster_id=response.cluster_id,
        member_id=member,
        name=response.name,
        peers={int(i): str(url) for i, url in response.peers.items()},
        log_start=log_start,
        promote=not settings.as_learner,
    )
    certified = CertifiedKey(bytes(response.certificate), own.key_pem)
    return Joined(ca_pem, certified, record)
