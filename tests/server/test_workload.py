"""The workload port on a real 3-member cluster (TLS from a real cluster CA), reached through
the client library with a token file: authentication outcomes, namespace scoping on every
path (unary RPCs, pipelined calls, streams), lease ownership, administration, Unseal scopes,
and the denial counter.

The token verifier here is an in-memory twin (`FakeReviewer`): tokens are looked up in a
table. The real TokenReview against a real API server is tests/kube/test_identity.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from coordinator import sealing
from coordinator.client import Client, Compare, ConcordError, Delete, Get, PermissionDenied, Put
from coordinator.pki import create_ca, issue_client_cert, issue_member_cert
from coordinator.runtime.tls import channel_credentials, server_credentials
from coordinator.runtime.tokenreview import (
    RejectReason,
    ReviewUnavailable,
    TokenRejected,
    WorkloadIdentity,
)
from coordinator.sealing import Scope
from coordinator.server.server import start_workload_port

from .harness import Cluster, run

CA = create_ca("workload-test")
MEMBER = issue_member_cert(CA, "member", ["localhost"], ["127.0.0.1"])
ADMIN = issue_client_cert(CA, "concordctl")
A = WorkloadIdentity("team-a", "app", "app-0")
B = WorkloadIdentity("team-b", "app")


class FakeReviewer:
    """Tokens by table: an identity, a rejection, or an unreachable API server."""

    def __init__(self) -> None:
        self.table: dict[str, WorkloadIdentity | Exception] = {
            "token-a": A,
            "token-b": B,
            "expired": TokenRejected(RejectReason.EXPIRED, "the token was rejected (expired)"),
            "down": ReviewUnavailable("cannot reach the Kubernetes API server"),
        }

    async def verify(self, token: str) -> WorkloadIdentity:
        found = self.table.get(token)
        if found is None:
            raise TokenRejected(RejectReason.SIGNATURE, "the token was rejected (signature)")
        if isinstance(found, Exception):
            raise found
        return found


Scenario = Callable[[Cluster, list[str], list[tuple[str, str]]], Awaitable[None]]


def with_workload_cluster(root: Path, scenario: Scenario) -> None:
    async def main() -> None:
        creds = server_credentials(CA.cert_pem, MEMBER.cert_pem, MEMBER.key_pem)
        c = await Cluster.start(root, credentials=creds)
        denied: list[tuple[str, str]] = []
        reviewer = FakeReviewer()
        ports = []
        try:
            for m in c.running():
                tls = grpc.ssl_server_credentials(
                    [(MEMBER.key_pem, MEMBER.cert_pem)], require_client_auth=False
                )
                ports.append(
                    await start_workload_port(
                        m.served,
                        "127.0.0.1:0",
                        tls,
                        reviewer,
                        on_denied=lambda verb, reason: denied.append((verb, reason)),
                    )
                )
            await scenario(c, [f"127.0.0.1:{p.port}" for p in ports], denied)
        finally:
            for p in ports:
                await p.stop(None)
            await c.close()

    run(main())


def workload(
    ends: list[str], tmp: Path, token: str, *, pipeline: bool = True, **kw: float
) -> Client:
    token_file = tmp / f"token-{token}-{pipeline}"
    token_file.write_text(token + "\n")
    return Client(
        ends,
        credentials=grpc.ssl_channel_credentials(root_certificates=CA.cert_pem),
        token_file=token_file,
        pipeline=pipeline,
        **({"timeout_s": 10.0} | kw),
    )


def admin(c: Cluster) -> Client:
    creds = channel_credentials(CA.cert_pem, ADMIN.cert_pem, ADMIN.key_pem)
    return Client([f"127.0.0.1:{m.served.port}" for m in c.running()], credentials=creds)


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "unary"])
def test_a_workload_works_in_its_namespace_and_is_refused_in_another(
    tmp_path: Path, pipeline: bool
) -> None:
    async def scenario(c: Cluster, ends: list[str], denied: list[tuple[str, str]]) -> None:
        async with workload(ends, tmp_path, "token-a", pipeline=pipeline) as a:
            await a.put(b"k8s/team-a/config", b"1")
            got = await a.get(b"k8s/team-a/config")
            assert got is not None and got.value == b"1"
            await a.sequence_create("k8s/team-a/ids")
            assert await a.sequence_next("k8s/team-a/ids", 2) == [1, 2]
            async with a.lock("k8s/team-a/job") as held:
                assert held.fencing_token > 0
            for attempt, verb, obj in [
                (a.put(b"k8s/team-b/config", b"x"), "KV.Put", "key 'k8s/team-b/config'"),
                (a.get(b"k8s/team-b/config"), "KV.Range", "key 'k8s/team-b/config'"),
                (a.put(b"k8s/team-ab/x", b"x"), "KV.Put", "key 'k8s/team-ab/x'"),
                (a.sequence_next("k8s/team-b/ids"), "Sequence.Next", "sequence 'k8s/team-b/ids'"),
                (a.lock_info("k8s/team-b/job"), "Lock.Info", "lock 'k8s/team-b/job'"),
                (a.get_range(b"k8s/team-a/", b"k8s/team-b/"), "KV.Range", "key range"),
                (a.get_range(b"k8s/team-a/", b"\0"), "KV.Range", "key range"),
            ]:
                with pytest.raises(PermissionDenied) as info:
                    await attempt
                message = info.value.message
                assert "system:serviceaccount:team-a:app (pod app-0)" in message
                assert verb in message and obj in message, message
            with pytest.raises(PermissionDenied, match="lock 'k8s/team-b/job'"):
                async with a.lock("k8s/team-b/job"):
                    pass
            # The whole namespace as a range is fine; one byte past it is not.
            assert [kv.key for kv in await a.get_range(b"k8s/team-a/", b"k8s/team-a0")] == [
                b"k8s/team-a/config"
            ]
        assert ("KV.Put", "namespace") in denied and ("Lock.Lock", "namespace") in denied
        assert all(reason == "namespace" for _, reason in denied)

    with_workload_cluster(tmp_path, scenario)


def test_tokens_missing_rejected_or_unverifiable(tmp_path: Path) -> None:
    async def scenario(c: Cluster, ends: list[str], denied: list[tuple[str, str]]) -> None:
        bare = grpc.ssl_channel_credentials(root_certificates=CA.cert_pem)
        async with Client(ends, credentials=bare, timeout_s=3.0) as nobody:
            with pytest.raises(ConcordError) as info:
                await nobody.get(b"k8s/team-a/x")
            assert info.value.code == "UNAUTHENTICATED"
            assert "authorization: Bearer <token>" in info.value.message
        async with workload(ends, tmp_path, "expired", timeout_s=3.0) as old:
            with pytest.raises(ConcordError) as info:
                await old.get(b"k8s/team-a/x")
            assert info.value.code == "UNAUTHENTICATED" and "expired" in info.value.message
        async with workload(ends, tmp_path, "forged", timeout_s=3.0) as forged:
            with pytest.raises(ConcordError) as info:
                await forged.put(b"k8s/team-a/x", b"1")
            assert info.value.code == "UNAUTHENTICATED" and "signature" in info.value.message
        async with workload(ends, tmp_path, "down", timeout_s=1.5) as unlucky:
            with pytest.raises(ConcordError) as info:
                await unlucky.get(b"k8s/team-a/x")
            assert info.value.code == "UNAVAILABLE", info.value
            assert "cannot verify the token now" in info.value.message
        reasons = {reason for _, reason in denied}
        assert {"missing-token", "expired", "signature"} <= reasons
        assert not any("down" in r or "token-" in r for _, r in denied)  # never the token

    with_workload_cluster(tmp_path, scenario)


def test_leases_belong_to_the_namespace_that_granted_them(tmp_path: Path) -> None:
    async def scenario(c: Cluster, ends: list[str], denied: list[tuple[str, str]]) -> None:
        async with (
            workload(ends, tmp_path, "token-a") as a,
            workload(ends, tmp_path, "token-b") as b,
            admin(c) as root,
        ):
            lease = await a.lease_grant(10_000)
            leader = await c.leader()
            assert leader.loop.fsm.lease_owner(lease) == "team-a"
            await a.lease_keepalive_once(lease)
            await a.put(b"k8s/team-a/on-lease", b"1", lease=lease)
            for attempt, verb in [
                (b.lease_keepalive_once(lease), "Lease.KeepAlive"),
                (b.lease_revoke(lease), "Lease.Revoke"),
                (b.lease_time_to_live(lease), "Lease.TimeToLive"),
                (b.put(b"k8s/team-b/x", b"1", lease=lease), "KV.Put"),
            ]:
                with pytest.raises(PermissionDenied) as info:
                    await attempt
                assert f"lease {lease}" in info.value.message and verb in info.value.message
                assert "namespace 'team-a'" in info.value.message
            # A cluster client's lease is no workload's either; the cluster client itself
            # is not scoped.
            theirs = await root.lease_grant(10_000)
            assert leader.loop.fsm.lease_owner(theirs) == ""
            with pytest.raises(PermissionDenied, match="a cluster client"):
                await a.lease_revoke(theirs)
            await root.lease_revoke(lease)
        assert ("Lease.Revoke", "lease") in denied and ("Lease.KeepAlive", "lease") in denied

    with_workload_cluster(tmp_path, scenario)


def test_administration_and_unscoped_watches_are_refused(tmp_path: Path) -> None:
    async def scenario(c: Cluster, ends: list[str], denied: list[tuple[str, str]]) -> None:
        async with workload(ends, tmp_path, "token-a") as a:
            with pytest.raises(PermissionDenied, match=r"Cluster\.MemberList"):
                await a.members()
            with pytest.raises(PermissionDenied, match=r"Secrets\.RenewSealingKey"):
                await a.renew_sealing_key()
            with pytest.raises(PermissionDenied, match="every key"):
                async for _ in a.watch(b"", b""):
                    break
            with pytest.raises(PermissionDenied, match="k8s/team-b/x"):
                async for _ in a.watch(b"k8s/team-b/x"):
                    break
        assert ("Cluster.MemberList", "admin") in denied
        assert ("Watch.Watch", "unscoped") in denied

    with_workload_cluster(tmp_path, scenario)


def test_unseal_follows_the_sealed_scope(tmp_path: Path) -> None:
    async def scenario(c: Cluster, ends: list[str], denied: list[tuple[str, str]]) -> None:
        async with admin(c) as root, workload(ends, tmp_path, "token-a") as a:
            keys = await root.sealing_certificate()
            cert = sealing.load_sealing_certificate(
                keys.current.certificate_pem, dt.datetime.now(dt.UTC)
            )
            # Any workload may fetch the public certificate (to seal).
            assert (await a.sealing_certificate()).current == keys.current

            def seal(scope: Scope, ns: str, name: str) -> bytes:
                return sealing.seal(cert.public_key, b"pw-" + ns.encode(), scope, ns, name)

            strict = seal(Scope.STRICT, "team-a", "db")
            assert (await a.unseal(strict, "team-a", "db")).plaintext == b"pw-team-a"
            wide = seal(Scope.NAMESPACE_WIDE, "team-a", "")
            assert (await a.unseal(wide, "team-a", "any")).plaintext == b"pw-team-a"
            other = seal(Scope.STRICT, "team-b", "db")
            with pytest.raises(PermissionDenied) as info:
                await a.unseal(other, "team-b", "db")
            assert "Secrets.Unseal" in info.value.message
            assert "sealed value team-b/db" in info.value.message
            # Claiming another namespace's value as one's own does not unseal it either.
            with pytest.raises(ConcordError) as mismatch:
                await a.unseal(other, "team-a", "db")
            assert mismatch.value.code == "FAILED_PRECONDITION"
            cluster_wide = seal(Scope.CLUSTER_WIDE, "", "")
            with pytest.raises(PermissionDenied, match="cluster-wide"):
                await a.unseal(cluster_wide, "team-a", "db")
        assert ("Secrets.Unseal", "unseal-scope") in denied

    with_workload_cluster(tmp_path, scenario)


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "unary"])
def test_the_operators_sealed_records_are_read_only_to_workloads(
    tmp_path: Path, pipeline: bool
) -> None:
    """`k8s/NS/sealedsecrets/NAME` is the operator's (a cluster client): a pod reads and
    watches it (its sidecar delivers it as files) but cannot put, delete or txn-write it."""

    async def scenario(c: Cluster, ends: list[str], denied: list[tuple[str, str]]) -> None:
        record = b"k8s/team-a/sealedsecrets/db"
        async with admin(c) as root, workload(ends, tmp_path, "token-a", pipeline=pipeline) as a:
            await root.put(record, b'{"v": 1}')
            got = await a.get(record)
            assert got is not None and got.value == b'{"v": 1}'
            assert [kv.key for kv in await a.get_range(b"k8s/team-a/", b"k8s/team-a0")] == [record]
            # Reading it in a txn, and writing beside it, is fine.
            done = await a.txn(
                [Compare(record, "version", ">", 0)], [Put(b"k8s/team-a/seen", b"1"), Get(record)]
            )
            assert done.succeeded
            for attempt, verb, obj in [
                (a.put(record, b"swapped"), "KV.Put", f"key '{record.decode()}'"),
                (a.delete(record), "KV.Delete", f"key '{record.decode()}'"),
                (a.delete(b"k8s/team-a/", b"k8s/team-a0"), "KV.Delete", "key range"),
                (a.txn([], [Put(record, b"swapped")]), "KV.Txn", f"key '{record.decode()}'"),
                (a.txn([], [], [Delete(record)]), "KV.Txn", f"key '{record.decode()}'"),
            ]:
                with pytest.raises(PermissionDenied) as info:
                    await attempt
                message = info.value.message
                assert "system:serviceaccount:team-a:app (pod app-0)" in message
                assert verb in message and obj in message, message
                assert "operator's records" in message
            # The operator's own write goes through and the pod's watch sees it.
            await root.put(record, b'{"v": 1, "generation": 2}')
            watch = a.watch(
                b"k8s/team-a/sealedsecrets/",
                b"k8s/team-a/sealedsecrets0",
                start_revision=got.mod_revision + 1,
            )
            event = await anext(watch)
            assert event.kv.key == record and event.kv.value == b'{"v": 1, "generation": 2}'
            await watch.aclose()
            got = await a.get(record)
            assert got is not None and got.value == b'{"v": 1, "generation": 2}'
        assert {
            ("KV.Put", "read-only"),
            ("KV.Delete", "read-only"),
            ("KV.Txn", "read-only"),
        } <= set(denied)

    with_workload_cluster(tmp_path, scenario)
