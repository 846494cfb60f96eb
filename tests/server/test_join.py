"""Join tokens through the Cluster service, and joining over the network (concord.v1.Join and
Admission), against a real 3-member cluster in process.

Each member gets the join services over its loop (`JoinServices`), a peer port that serves
only Admission (mutual TLS with member certificates bound to ids, real gRPC), and a join
port (TLS, no client certificate). Joins go through the real joiner code
(`coordinator.daemon.join.join_cluster`), so the CA fetch, the fingerprint check, the CSR and
the checks of the answer all run for real; members 1 and 2 hold the CA key, member 3 does
not. The joined member is not started here (the process tests do that): it stays a learner
that never catches up, which is what the promotion refusals need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.api.v1 import join_pb2 as jpb
from coordinator.api.v1 import join_pb2_grpc
from coordinator.daemon.join import JoinAsk, JoinError, JoinSettings, join_cluster
from coordinator.daemon.membership import MemberAuthority
from coordinator.pki import (
    CertifiedKey,
    JoinToken,
    MemberTls,
    create_ca,
    issue_client_cert,
    issue_member_cert,
    make_csr,
    member_id_of,
    new_join_token,
    new_member_key,
)
from coordinator.raft import ConfState
from coordinator.runtime.tls import (
    join_server_credentials,
    member_channel_credentials,
    member_server_credentials,
)
from coordinator.server import start_server
from coordinator.server.server import JoinServices

from .harness import Cluster, Member, rpc_error, run, wait_for

join_rpc: Any = join_pb2_grpc  # untyped generated module

CA = create_ca("join-test")
OTHER_CA = create_ca("another-cluster")
CLUSTER_ID = "join-test"


def member_tls(member: int) -> MemberTls:
    cert = issue_member_cert(CA, f"m{member}", member_id=member)
    return MemberTls(
        CA.cert_pem, cert.cert_pem, cert.key_pem, cert.cert.not_valid_after_utc, member
    )


class TlsCluster(Cluster):
    """The server harness' cluster, with the cluster CA given to the Cluster service."""

    async def start_member(self, member: int, conf: ConfState) -> Member:
        m = await super().start_member(member, conf)
        await m.served.stop(None)  # the same member, served again with the CA
        m.served = await start_server(
            m.loop, "127.0.0.1:0", None, config=self.service, cluster_ca_pem=CA.cert_pem
        )
        await m.client.close()
        m.client = type(m.client)(m.served.port)
        return m


@dataclass
class Joinable:
    """Join services on every member: peer ports (Admission) and join ports."""

    cluster: Cluster
    services: dict[int, JoinServices] = field(default_factory=dict)
    peer_servers: dict[int, grpc.aio.Server] = field(default_factory=dict)
    peer_addresses: dict[int, str] = field(default_factory=dict)

    async def start(self, signers: set[int]) -> None:
        for i, m in self.cluster.members.items():
            tls = member_tls(i)
            authority = MemberAuthority(
                cluster_id=CLUSTER_ID,
                tls=tls,
                signing_ca=CA if i in signers else None,
                book=lambda: {j: f"https://{a}" for j, a in self.peer_addresses.items()},
                peers=lambda: dict(self.peer_addresses),
            )
            services = self.services[i] = JoinServices(m.loop, authority)
            server = self.peer_servers[i] = grpc.aio.server()
            services.add_to_peer_server(server)
            port = server.add_secure_port("127.0.0.1:0", member_server_credentials(tls))
            await server.start()
            self.peer_addresses[i] = f"127.0.0.1:{port}"
            await services.listen("127.0.0.1:0", join_server_credentials(tls))

    def join_address(self, member: int) -> str:
        return f"127.0.0.1:{self.services[member].port}"

    async def close(self) -> None:
        for services in self.services.values():
            await services.stop(0)
        for server in self.peer_servers.values():
            await server.stop(0)


def with_joinable(
    root: Path, scenario: Callable[[Cluster, Joinable], Awaitable[None]], signers: set[int]
) -> None:
    async def main() -> None:
        c = await TlsCluster.start(root)
        j = Joinable(c)
        try:
            await j.start(signers)
            await scenario(c, j)
        finally:
            await j.close()
            await c.close()

    run(main())


def ask(name: str = "", member: int = 0, port: int = 7400) -> JoinAsk:
    return JoinAsk(member, name, f"https://127.0.0.1:{port}", f"https://127.0.0.1:{port + 1}")


async def on_leader(c: Cluster, call: Callable[[Any], Awaitable[Any]]) -> Any:
    """`call(the leader's Cluster stub)`, again on the new leader if leadership moved (10 ms
    ticks on a loaded machine can cost a leader its term); bounded."""
    for _ in range(50):
        async with c.changes() as changed:
            leader = await c.leader()
            try:
                return await call(leader.client.cluster)
            except grpc.aio.AioRpcError as err:
                if err.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.wait_for(changed.wait(), 10)  # leadership moved, or the log did
    raise AssertionError("no leader answered")


async def create_token(c: Cluster) -> str:
    resp = await on_leader(c, lambda s: s.JoinTokenCreate(pb.JoinTokenCreateRequest(), timeout=5))
    return str(resp.token)


def settings(j: Joinable, member: int, token: str, timeout_s: float = 10.0) -> JoinSettings:
    return JoinSettings(j.join_address(member), JoinToken.parse(token), False, timeout_s)


# --- tokens ---------------------------------------------------------------------------------


def test_tokens_are_created_listed_and_revoked_and_never_shown_again(tmp_path: Path) -> None:
    async def scenario(c: Cluster, j: Joinable) -> None:
        create = pb.JoinTokenCreateRequest()
        made = await on_leader(c, lambda s: s.JoinTokenCreate(create, timeout=5))
        token = JoinToken.parse(made.token)
        assert token.ca_fingerprint == new_join_token(CA.cert_pem).ca_fingerprint
        assert made.info.id == token.id and made.info.created_ms > 0
        second = await on_leader(c, lambda s: s.JoinTokenCreate(create, timeout=5))

        # Every member lists ids and times only; the table replicates to all of them.
        follower = next(m for m in c.running() if not m.loop.is_leader)
        await wait_for(lambda: len(follower.loop.fsm.join_tokens()) == 2)
        listed = await follower.client.cluster.JoinTokenList(pb.JoinTokenListRequest(), timeout=5)
        assert [t.id for t in listed.tokens] == [token.id, second.info.id]
        assert token.secret not in str(listed) and made.token not in str(listed)
        # Nothing of it is in the keyspace.
        kvs = await follower.client.kv.Range(
            pb.RangeRequest(key=b"\0", range_end=b"\0", serializable=True), timeout=5
        )
        assert list(kvs.kvs) == []

        def revoke(what: str) -> Callable[[Any], Awaitable[Any]]:
            return lambda s: s.JoinTokenRevoke(pb.JoinTokenRevokeRequest(id=what), timeout=5)

        by_id = await on_leader(c, revoke(token.id))
        assert by_id.info.id == token.id and by_id.info.revoked_ms > 0
        again = await on_leader(c, revoke(made.token))
        assert again.info.revoked_ms == by_id.info.revoked_ms  # by the token; level-based

        unknown = await rpc_error(on_leader(c, revoke("0123456789ab")))
        assert unknown.code() is grpc.StatusCode.NOT_FOUND
        assert "join-token list" in (unknown.details() or "")
        for bad in ("CONCORD-JOIN-1-x-y", "not an id"):
            damaged = await rpc_error(on_leader(c, revoke(bad)))
            assert damaged.code() is grpc.StatusCode.INVALID_ARGUMENT

    with_joinable(tmp_path, scenario, signers={1, 2})


def test_a_member_without_the_cluster_ca_cannot_make_tokens(tmp_path: Path) -> None:
    """The plain harness serves without TLS: no CA to name in a token."""

    async def main() -> None:
        c = await Cluster.start(tmp_path)
        try:
            leader = await c.leader()
            err = await rpc_error(
                leader.client.cluster.JoinTokenCreate(pb.JoinTokenCreateRequest(), timeout=5)
            )
            assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "--insecure" in (err.details() or "")
        finally:
            await c.close()

    run(main())


# --- joining --------------------------------------------------------------------------------


def test_a_member_joins_through_a_follower_with_a_certificate_bound_to_its_id(
    tmp_path: Path,
) -> None:
    async def scenario(c: Cluster, j: Joinable) -> None:
        token = await create_token(c)
        leader = await c.leader()
        follower = next(m for m in c.running() if m is not leader and m.id in (1, 2))
        joined = await join_cluster(settings(j, follower.id, token), ask("newcomer"))

        rec = joined.record
        assert (rec.cluster_id, rec.member_id, rec.name) == (CLUSTER_ID, 4, "newcomer")
        assert rec.log_start == ConfState(frozenset({1, 2, 3}))  # the bootstrap configuration
        assert sorted(rec.peers) == [1, 2, 3] and rec.promote
        assert joined.ca_pem == CA.cert_pem
        cert = x509.load_pem_x509_certificate(joined.certified.cert_pem)
        cert.verify_directly_issued_by(CA.cert)
        assert member_id_of(cert) == 4
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        key = CertifiedKey(joined.certified.cert_pem, joined.certified.key_pem)
        assert key.private_key().public_key() == cert.public_key()  # our own key

        # It was committed as a learner, and recorded, before the answer: every member has
        # (or is about to have) both.
        for m in c.running():
            loop = m.loop
            await wait_for(lambda loop=loop: 4 in loop.node.conf.learners)
            # Both entries are committed before the answer, but a follower may apply the
            # directory entry a moment after the configuration change.
            await wait_for(lambda loop=loop: any(e.id == 4 for e in loop.fsm.members()))
            entry = next(e for e in loop.fsm.members() if e.id == 4)
            assert (entry.name, entry.peer_url) == ("newcomer", "https://127.0.0.1:7400")

        # The next join gets the next id; asking for a taken id or name is refused. (Members
        # 1 and 2 both sign, leading or not.)
        second = await join_cluster(settings(j, 1, token), ask(port=7410))
        assert (second.record.member_id, second.record.name) == (5, "member-5")
        with pytest.raises(JoinError, match=r"ALREADY_EXISTS: member id 2 is taken \(a voter\)"):
            await join_cluster(settings(j, 2, token), ask("x", member=2, port=7420))
        with pytest.raises(JoinError, match="member name 'newcomer' belongs to member 4"):
            await join_cluster(settings(j, 1, token), ask("newcomer", port=7430))

        # A removed id is never given out again, even when it was the highest.
        await on_leader(c, lambda s: s.MemberRemove(pb.MemberIdRequest(id=5), timeout=5))
        with pytest.raises(JoinError, match="FAILED_PRECONDITION: member id 5 was removed"):
            await join_cluster(settings(j, 1, token), ask("again", member=5, port=7440))
        third = await join_cluster(settings(j, 1, token), ask(port=7450))
        assert third.record.member_id == 6

    with_joinable(tmp_path, scenario, signers={1, 2})


def test_bad_tokens_and_requests_are_refused_with_what_to_do(tmp_path: Path) -> None:
    async def scenario(c: Cluster, j: Joinable) -> None:
        token = await create_token(c)
        signer = 1
        parsed = JoinToken.parse(token)

        # A well-formed token with a secret the cluster never issued.
        forged = JoinToken(1, parsed.ca_fingerprint, "a" * 32)
        with pytest.raises(JoinError, match="PERMISSION_DENIED: join token not valid for this"):
            await join_cluster(settings(j, signer, str(forged)), ask())

        # A revoked token: refused, saying which and when.
        revoked = await create_token(c)
        await on_leader(
            c, lambda s: s.JoinTokenRevoke(pb.JoinTokenRevokeRequest(id=revoked), timeout=5)
        )
        rid = JoinToken.parse(revoked).id
        with pytest.raises(JoinError, match=rf"join token {rid} was revoked at \d{{4}}-\d\d-\d\d"):
            await join_cluster(settings(j, signer, revoked), ask())

        # Another cluster's token: the joiner refuses the CA it is shown, naming both
        # fingerprints, before it sends anything.
        foreign = new_join_token(OTHER_CA.cert_pem)
        with pytest.raises(JoinError, match="someone in the middle") as mitm:
            await join_cluster(settings(j, signer, str(foreign)), ask())
        assert foreign.ca_fingerprint in str(mitm.value)
        assert parsed.ca_fingerprint in str(mitm.value)

        # ... and a joiner that skipped that check is refused by the member as well.
        async with grpc.aio.secure_channel(
            j.join_address(signer), grpc.ssl_channel_credentials(CA.cert_pem)
        ) as channel:
            stub = join_rpc.JoinStub(channel)
            csr = make_csr(new_member_key(), "x")

            async def join(**fields: Any) -> grpc.aio.AioRpcError:
                request = {
                    "token": token,
                    "csr": csr,
                    "peer_url": "https://127.0.0.1:7500",
                    "client_url": "https://127.0.0.1:7501",
                    **fields,
                }
                return await rpc_error(stub.Join(jpb.JoinRequest(**request), timeout=10))

            err = await join(token=str(foreign))
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED
            assert foreign.ca_fingerprint in (err.details() or "")
            err = await join(token="CONCORD-JOIN-1-short-x")
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            err = await join(csr=b"not a csr")
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "certificate signing request" in (err.details() or "")
            err = await join(peer_url="10.0.0.1:7500")
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "scheme://host:port" in (err.details() or "")

        # A member without the CA key cannot sign: it says where to join instead.
        with pytest.raises(JoinError, match=r"FAILED_PRECONDITION: .*--ca-key-file"):
            await join_cluster(settings(j, 3, token), ask())

        # Nothing of the above was admitted.
        leader = await c.leader()
        assert leader.loop.node.conf.learners == frozenset()
        assert leader.loop.fsm.members() == ()

    with_joinable(tmp_path, scenario, signers={1, 2})


def test_an_unreachable_join_address_fails_with_a_clear_message() -> None:
    token = new_join_token(CA.cert_pem)
    dead = JoinSettings("127.0.0.1:1", token, False, 0.5)
    with pytest.raises(JoinError, match=r"cannot reach the join address 127.0.0.1:1: .*gave up"):
        asyncio.run(join_cluster(dead, ask()))


# --- promotion ------------------------------------------------------------------------------


def test_only_a_caught_up_learner_is_promoted_and_only_at_its_own_request(tmp_path: Path) -> None:
    async def scenario(c: Cluster, j: Joinable) -> None:
        token = await create_token(c)
        joined = await join_cluster(settings(j, 1, token), ask("learner"))
        new_id = joined.record.member_id

        async def promote(credentials: grpc.ChannelCredentials, member: int) -> Any:
            """PromoteSelf on the leader's peer port (again if leadership moved)."""
            for _ in range(50):
                async with c.changes() as changed:
                    leader = await c.leader()
                    address = j.peer_addresses[leader.id]
                    async with grpc.aio.secure_channel(address, credentials) as channel:
                        stub = join_rpc.AdmissionStub(channel)
                        try:
                            return await stub.PromoteSelf(
                                jpb.PromoteSelfRequest(id=member), timeout=5
                            )
                        except grpc.aio.AioRpcError as err:
                            if err.code() is not grpc.StatusCode.UNAVAILABLE:
                                return err
                    await asyncio.wait_for(changed.wait(), 10)
            raise AssertionError("no leader answered")

        own = grpc.ssl_channel_credentials(
            CA.cert_pem, joined.certified.key_pem, joined.certified.cert_pem
        )
        lagging = await promote(own, new_id)
        assert lagging.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "has not caught up" in lagging.details()

        other = member_channel_credentials(member_tls(2))
        posing = await promote(other, new_id)
        assert posing.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "may promote only itself" in posing.details()

        client = issue_client_cert(CA, "concordctl")
        as_client = grpc.ssl_channel_credentials(CA.cert_pem, client.key_pem, client.cert_pem)
        refused = await promote(as_client, new_id)
        assert refused.code() is grpc.StatusCode.PERMISSION_DENIED

        voter = await promote(member_channel_credentials(member_tls(2)), 2)
        assert voter.already_voter
        assert all(new_id in m.loop.node.conf.learners for m in c.running())

    with_joinable(tmp_path, scenario, signers={1, 2})


def test_a_member_lists_itself_in_the_directory_and_only_itself(tmp_path: Path) -> None:
    async def scenario(c: Cluster, j: Joinable) -> None:
        async def register(member: int, name: str, as_member: int | None = None) -> Any:
            """RegisterSelf on the leader's peer port with `as_member`'s certificate."""
            credentials = member_channel_credentials(member_tls(as_member or member))
            request = jpb.RegisterSelfRequest(
                id=member,
                name=name,
                peer_url=f"https://127.0.0.1:{7000 + member}",
                client_url=f"https://127.0.0.1:{8000 + member}",
            )
            for _ in range(50):
                async with c.changes() as changed:
                    leader = await c.leader()
                    async with grpc.aio.secure_channel(
                        j.peer_addresses[leader.id], credentials
                    ) as channel:
                        try:
                            return await join_rpc.AdmissionStub(channel).RegisterSelf(
                                request, timeout=5
                            )
                        except grpc.aio.AioRpcError as err:
                            if err.code() is not grpc.StatusCode.UNAVAILABLE:
                                return err
                    await asyncio.wait_for(changed.wait(), 10)
            raise AssertionError("no leader answered")

        first = await register(2, "bravo")
        assert first.changed and first.raft_index > 0
        again = await register(2, "bravo")  # level-based: nothing to change
        assert not again.changed
        leader = await c.leader()
        entry = next(m for m in leader.loop.fsm.members() if m.id == 2)
        assert (entry.name, entry.peer_url, entry.client_url) == (
            "bravo",
            "https://127.0.0.1:7002",
            "https://127.0.0.1:8002",
        )
        posing = await register(3, "charlie", as_member=2)
        assert posing.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "may list only itself" in posing.details()
        outsider = await register(9, "india")
        assert outsider.code() is grpc.StatusCode.NOT_FOUND
        assert "not in this cluster's configuration" in outsider.details()
        taken = await register(3, "bravo")
        assert taken.code() is grpc.StatusCode.ALREADY_EXISTS
        assert "belongs to member 2" in taken.details()

    with_joinable(tmp_path, scenario, signers={1})
