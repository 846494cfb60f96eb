"""The client's transport and errors against real sockets and a real in-process cluster:
endpoint checks, TLS directories and the environment, wrong endpoints reported quickly with
advice, one error type per status, honest deadlines, no grpc type escaping."""

from __future__ import annotations

import asyncio
import http.server
import inspect
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import coordinator.client as client_pkg
from coordinator.client import (
    Client,
    ConcordError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    error_for,
)
from coordinator.client._pipe import CallFailed
from coordinator.client._transport import Failure
from coordinator.pki import create_ca, issue_client_cert, issue_member_cert, write_member_tls
from coordinator.testing.ports import free_ports
from tests.server.harness import Cluster, with_cluster

QUICK_S = 4.0
"""A wrong endpoint is reported within this (connect_timeout_s is 2 s; the bound is generous
for a shared machine, and far below the 10 s `timeout_s` the client used to spend)."""


def endpoints(c: Cluster) -> list[str]:
    return [f"127.0.0.1:{m.served.port}" for m in c.running()]


# --- errors -----------------------------------------------------------------------------------


def test_every_status_has_its_own_error_type_and_keeps_the_old_attributes() -> None:
    err = error_for("NOT_FOUND", "lease 7 has ended")
    assert isinstance(err, NotFound) and isinstance(err, ConcordError)
    assert (err.code, err.message, str(err)) == ("NOT_FOUND", "lease 7 has ended", str(err))
    assert str(err) == "NOT_FOUND: lease 7 has ended"
    assert not err.locked and not err.waiting
    locked = error_for("UNAVAILABLE", "member is locked", locked=True)
    assert isinstance(locked, Unavailable) and locked.locked and not locked.waiting
    assert error_for("UNAVAILABLE", "no leader").waiting
    assert isinstance(error_for("FAILED_PRECONDITION", "x"), FailedPrecondition)
    assert isinstance(InvalidArgument("x"), ValueError)  # a caller's mistake
    odd = error_for("SOMETHING_NEW", "x")
    assert type(odd) is ConcordError and odd.code == "SOMETHING_NEW"


def test_the_public_api_exports_errors_and_no_grpc_types() -> None:
    for name in client_pkg.__all__:
        obj = getattr(client_pkg, name)
        assert not getattr(obj, "__module__", "").startswith("grpc"), name
    for name in ("NotFound", "Unavailable", "DeadlineExceeded", "InvalidArgument"):
        assert issubclass(getattr(client_pkg, name), ConcordError)
    # No protobuf message in what the calls take or return (the plumbing that runs raw
    # RPCs, `call`, `call_endpoint` and `session`, is for the library's own use).
    plumbing = {"call", "call_endpoint", "session"}
    for cls in (client_pkg.Client, client_pkg.SyncClient):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_") or name in plumbing:
                continue
            annotations = " ".join(str(a) for a in fn.__annotations__.values())
            assert "pb." not in annotations and "grpc" not in annotations.replace(
                "grpc.ChannelCredentials", ""
            ), (cls.__name__, name, annotations)


# --- endpoints, TLS directories, the environment -----------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("127.0.0.1:99999", "the port 99999 is out of range (1-65535)"),
        ("127.0.0.1:0", "the port 0 is out of range"),
        ("127.0.0.1", "expected host:port"),
        (":2379", "expected host:port"),
        ("127.0.0.1:http", "the port 'http' is not a number"),
        ("http://127.0.0.1:2379", "without a scheme"),
        ("::1:2379", "an IPv6 host goes in brackets"),
    ],
)
def test_bad_endpoints_are_refused_before_anything_is_dialled(endpoint: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(why)) as caught:
        Client([endpoint])
    assert repr(endpoint) in caught.value.message  # names the bad one
    with pytest.raises(ValueError, match="bad endpoint"):
        Client(f"127.0.0.1:2379,{endpoint}")


def test_good_endpoints_are_accepted_from_a_list_or_a_string() -> None:
    assert Client(" 127.0.0.1:2379 ,[::1]:2380,db-0.concord:65535").endpoints == [
        "127.0.0.1:2379",
        "[::1]:2380",
        "db-0.concord:65535",
    ]
    with pytest.raises(InvalidArgument, match="at least one endpoint"):
        Client([])


@pytest.fixture(scope="module")
def tls_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A client TLS directory as `cluster init` writes it, and a member's."""
    root = tmp_path_factory.mktemp("tls")
    ca = create_ca("transport-test")
    cert = issue_client_cert(ca, "c")
    client_dir = root / "client"
    client_dir.mkdir()
    (client_dir / "ca.pem").write_bytes(ca.cert_pem)
    (client_dir / "client.pem").write_bytes(cert.cert_pem)
    (client_dir / "client-key.pem").write_bytes(cert.key_pem)
    member_dir = root / "member"
    write_member_tls(member_dir, ca.cert_pem, issue_member_cert(ca, "member-1"))
    return client_dir, member_dir


def test_from_tls_dir_reads_a_client_or_a_member_directory(tls_dirs: tuple[Path, Path]) -> None:
    for d in tls_dirs:
        c = Client.from_tls_dir("127.0.0.1:2379", d, timeout_s=3.0)
        assert c.credentials is not None and c.timeout_s == 3.0


def test_a_missing_tls_dir_or_file_is_named(tmp_path: Path, tls_dirs: tuple[Path, Path]) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        Client.from_tls_dir("127.0.0.1:2379", tmp_path / "nope")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "ca.pem").write_bytes((tls_dirs[0] / "ca.pem").read_bytes())
    (partial / "client.pem").write_bytes(b"x")
    with pytest.raises(InvalidArgument, match=r"lacks client-key\.pem"):
        Client.from_tls_dir("127.0.0.1:2379", partial)


def test_from_env(tls_dirs: tuple[Path, Path]) -> None:
    env = {"CONCORD_ENDPOINTS": "127.0.0.1:2379,127.0.0.1:2380"}
    c = Client.from_env(env)
    assert c.endpoints == ["127.0.0.1:2379", "127.0.0.1:2380"] and c.credentials is None
    c = Client.from_env({**env, "CONCORD_TLS_DIR": str(tls_dirs[0])}, timeout_s=2.0)
    assert c.credentials is not None and c.timeout_s == 2.0
    with pytest.raises(InvalidArgument, match="CONCORD_ENDPOINTS is not set"):
        Client.from_env({})
    with pytest.raises(InvalidArgument, match="out of range"):
        Client.from_env({"CONCORD_ENDPOINTS": "127.0.0.1:70000"})


# --- wrong endpoints: real sockets -------------------------------------------------------------


def _free_port() -> int:
    (port,) = free_ports(1)
    return port


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP port that accepts connections and never says anything."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def http_port() -> Iterator[str]:
    """A real HTTP/1.1 server (as a member's metrics port is)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def _unavailable(c: Client) -> tuple[Unavailable, float]:
    started = time.perf_counter()
    with pytest.raises(Unavailable) as caught:
        await c.get(b"k")
    return caught.value, time.perf_counter() - started


def test_nothing_listening_is_reported_quickly() -> None:
    async def main() -> None:
        port = _free_port()
        async with Client([f"127.0.0.1:{port}"], timeout_s=10.0) as c:
            err, took = await _unavailable(c)
        assert f"nothing listens on 127.0.0.1:{port} (connection refused)" in err.message
        assert "cluster init" in err.message
        assert took < QUICK_S

    asyncio.run(main())


def test_an_http_port_is_reported_as_not_a_client_port(http_port: str) -> None:
    async def main() -> None:
        async with Client([http_port], timeout_s=10.0) as c:
            err, took = await _unavailable(c)
        assert f"{http_port} answered in HTTP/1.x, not gRPC" in err.message
        assert "metrics" in err.message
        assert took < QUICK_S

    asyncio.run(main())


def test_a_silent_listener_is_reported_quickly(silent_listener: str) -> None:
    async def main() -> None:
        async with Client([silent_listener], timeout_s=10.0) as c:
            err, took = await _unavailable(c)
        assert "never completed a gRPC handshake" in err.message
        assert took < QUICK_S

    asyncio.run(main())


def test_a_tls_client_against_a_plaintext_member(
    tmp_path: Path, tls_dirs: tuple[Path, Path]
) -> None:
    async def scenario(c: Cluster) -> None:
        eps = endpoints(c)
        async with Client.from_tls_dir(eps, tls_dirs[0], timeout_s=10.0) as tls_client:
            err, took = await _unavailable(tls_client)
        assert "does not speak TLS" in err.message
        assert "connect without a TLS directory" in err.message
        assert took < QUICK_S

    with_cluster(tmp_path, scenario)


def test_a_wrong_endpoint_among_good_ones_is_skipped(tmp_path: Path, http_port: str) -> None:
    async def scenario(c: Cluster) -> None:
        await c.register_directory()
        async with Client([http_port, *endpoints(c)], timeout_s=10.0) as client:
            assert await client.put(b"k", b"v") > 0

    with_cluster(tmp_path, scenario)


# --- retries, deadlines, streams ----------------------------------------------------------------


def test_the_whole_call_is_bounded_by_timeout_s(silent_listener: str) -> None:
    async def main() -> None:
        # connect_timeout_s above timeout_s: the call's own deadline ends it.
        async with Client(
            [silent_listener], timeout_s=0.3, attempt_timeout_s=5.0, connect_timeout_s=30.0
        ) as c:
            started = time.perf_counter()
            with pytest.raises((DeadlineExceeded, Unavailable)):
                await c.get(b"k")
            assert time.perf_counter() - started < 2.0

    asyncio.run(main())


def test_keepalive_once_on_an_ended_lease_is_not_found_and_never_a_grpc_error(
    tmp_path: Path,
) -> None:
    async def scenario(c: Cluster) -> None:
        await c.register_directory()
        async with Client(endpoints(c), timeout_s=5.0) as client:
            lease = await client.lease_grant(5_000)
            assert await client.lease_keepalive_once(lease) == 5_000
            await client.lease_revoke(lease)
            with pytest.raises(NotFound, match=f"lease {lease} "):
                await client.lease_keepalive_once(lease)
        # A deadline far too short for the stream: a ConcordError, not grpc's own types.
        async with Client(
            endpoints(c), timeout_s=0.5, attempt_timeout_s=0.0005, connect_timeout_s=0.1
        ) as tight:
            with pytest.raises(ConcordError) as caught:
                await tight.lease_keepalive_once(1)
            assert not isinstance(caught.value, grpc.RpcError)

    with_cluster(tmp_path, scenario)


def test_a_blocking_calls_deadline_error_names_the_callers_deadline(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        await c.register_directory()
        async with Client(endpoints(c), timeout_s=5.0) as holder:
            lease = await holder.lease_grant(10_000)
            await holder.acquire("busy", lease)
            # A waiter whose member-side wait is 2 ms: the member's answer must speak of
            # 2 ms, not of its own 5 s default.
            async with Client(endpoints(c), timeout_s=0.5, rpc_timeout_s=0.002) as waiter:
                other = await holder.lease_grant(10_000)
                with pytest.raises(ConcordError) as caught:
                    await waiter.acquire("busy", other)
                assert "5.0 s" not in caught.value.message

    with_cluster(tmp_path, scenario)


def test_transport_failures_are_retried_and_a_members_own_refusals_are_not() -> None:
    """What the retry loop retries: the classification of real status details."""

    def failure(code: grpc.StatusCode, details: str) -> Failure:
        return Failure(code, details, "", locked=False, queued=False)

    retried = [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"),
        (grpc.StatusCode.CANCELLED, "Cancelled"),
    ]
    for code, details in retried:
        assert failure(code, details).retryable, (code, details)
    refused = [
        (grpc.StatusCode.INTERNAL, "internal error (KeyError: 3); this is a bug in the member"),
        (grpc.StatusCode.NOT_FOUND, "lease 3 not found"),
        (grpc.StatusCode.INVALID_ARGUMENT, "lease TTL 5 ms is outside 1000..86400000 ms"),
        (grpc.StatusCode.FAILED_PRECONDITION, "not the leader of the election"),
    ]
    for code, details in refused:
        assert not failure(code, details).retryable, (code, details)


def test_a_timeout_on_a_member_that_answers_does_not_make_it_suspect() -> None:
    """A pipelined call that timed out on a member heard from since it was sent (the batch
    was acknowledged, or other calls answered) met a slow leader, not a stopped one: the
    followers' redirects back to it must be followed. Silence makes it suspect as before."""

    async def scenario() -> None:
        c = Client(["127.0.0.1:1", "127.0.0.1:2"])
        try:
            slow = CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "slow", answering=True)
            assert c._failure(slow, "127.0.0.1:1").retryable
            assert not c._suspect("127.0.0.1:1")
            silent = CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "silent")
            assert c._failure(silent, "127.0.0.1:2").retryable
            assert c._suspect("127.0.0.1:2")
        finally:
            await c.close()

    asyncio.run(scenario())
