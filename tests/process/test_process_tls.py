"""Process tests: mutual TLS on a real member's client and peer ports (DESIGN.md §4).

A member answers only callers with a certificate from its cluster CA, and callers trust
only that CA. Probes go straight to one member with raw gRPC (no retries), so a refusal is
seen as the UNAVAILABLE of a failed handshake, not as a client library's timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import concord_pb2_grpc, raft_pb2_grpc
from coordinator.api.v1 import raft_pb2 as raft_pb
from coordinator.client import ConcordError
from coordinator.pki import create_ca, issue_client_cert, issue_member_cert, load_member_tls
from coordinator.runtime.tls import channel_credentials, member_channel_credentials
from coordinator.testing.process_cluster import MakeCluster, ProcessCluster, run

pytestmark = pytest.mark.process

rpc: Any = concord_pb2_grpc  # the generated stubs are untyped
raft_rpc: Any = raft_pb2_grpc

Call = Callable[[grpc.aio.Channel], Any]


async def outcome(address: str, credentials: grpc.ChannelCredentials, call: Call) -> str:
    """The status code name of the failed call, or "served"."""
    async with grpc.aio.secure_channel(address, credentials) as channel:
        try:
            await call(channel)
        except grpc.aio.AioRpcError as err:
            return str(err.code().name)
    return "served"


def client_call(ch: grpc.aio.Channel) -> Any:
    return rpc.KVStub(ch).Range(pb.RangeRequest(key=b"k"), timeout=5)


def peer_call(cluster: ProcessCluster) -> Call:
    """An empty Raft batch for the right cluster: harmless, and accepted only from a peer."""
    batch = raft_pb.RaftBatch(cluster_id=cluster.cluster_id)
    return lambda ch: raft_rpc.RaftStub(ch).Stream(iter([batch]), timeout=5)


def test_callers_without_a_certificate_from_the_cluster_ca_are_refused(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(1)
    member = cluster.members[1]
    ca = cluster.ca.cert_pem
    impostor_ca = create_ca("impostor")
    rogue_client = issue_client_cert(impostor_ca, "rogue-client")
    rogue_member = issue_member_cert(impostor_ca, "member-1")
    good = cluster.client_cert
    member_tls = load_member_tls(member.tls_dir)
    refused_callers = {
        "client certificate from another CA": channel_credentials(
            ca, rogue_client.cert_pem, rogue_client.key_pem
        ),
        "member certificate from another CA": channel_credentials(
            ca, rogue_member.cert_pem, rogue_member.key_pem
        ),
        "no client certificate": channel_credentials(ca),
        # The caller's certificate is good, but it does not trust the member's: it must not
        # talk to a server it cannot authenticate (the CA is the only root it accepts).
        "trusting another CA only": channel_credentials(
            impostor_ca.cert_pem, good.cert_pem, good.key_pem
        ),
    }

    async def scenario() -> dict[str, tuple[str, str]]:
        await cluster.wait_ready()
        async with cluster.client() as c:
            await c.put(b"k", b"v")
        seen: dict[str, tuple[str, str]] = {}
        for what, credentials in refused_callers.items():
            seen[what] = (
                await outcome(member.client_address, credentials, client_call),
                await outcome(member.peer_address, credentials, peer_call(cluster)),
            )
        # The library client gives up too, and nothing it sent was executed.
        rogue = refused_callers["client certificate from another CA"]
        async with cluster.client(timeout_s=2, credentials=rogue) as c:
            with pytest.raises(ConcordError) as err:
                await c.put(b"written-by-a-rogue", b"x")
            assert err.value.code == "UNAVAILABLE"
        async with cluster.client() as c:
            assert await c.get(b"written-by-a-rogue") is None
        # The same probes with the right certificates are served (the probes are sound).
        seen["cluster client / member certificate"] = (
            await outcome(member.client_address, cluster.credentials(), client_call),
            await outcome(
                member.peer_address, member_channel_credentials(member_tls), peer_call(cluster)
            ),
        )
        return seen

    seen = run(scenario(), 60)
    expected = {what: ("UNAVAILABLE", "UNAVAILABLE") for what in refused_callers}
    expected["cluster client / member certificate"] = ("served", "served")
    assert seen == expected


def test_a_client_certificate_cannot_pose_as_a_member_on_the_peer_port(
    make_cluster: MakeCluster,
) -> None:
    """tls.py: client certificates are clientAuth-only, "it can call members, never pose as
    one". A peer stream opened with one must be refused (handshake or PERMISSION_DENIED)."""
    cluster = make_cluster(1)
    member = cluster.members[1]

    async def scenario() -> str:
        await cluster.wait_ready()
        return await outcome(member.peer_address, cluster.credentials(), peer_call(cluster))

    assert run(scenario(), 60) in {"UNAVAILABLE", "PERMISSION_DENIED", "UNAUTHENTICATED"}
