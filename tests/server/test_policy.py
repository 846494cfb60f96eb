"""The workload policy (`coordinator.server._policy`) as a pure function: what each RPC
touches, where the namespace's boundary lies, leases, administration, Unseal scopes, and the
room left for grants. The same rules on a live cluster: test_workload.py."""

from __future__ import annotations

import datetime as dt

import pytest

from coordinator import sealing
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.runtime.tokenreview import WorkloadIdentity
from coordinator.sealing import Scope
from coordinator.server._gateway import REGISTRARS, method_handlers
from coordinator.server._policy import (
    PIPELINE_VERBS,
    Denial,
    Policy,
    access_of,
    operator_record_prefixes,
    verb_of,
)

A = WorkloadIdentity("team-a", "app", "app-0")
OWNERS = {7: "team-a", 8: "team-b", 9: ""}


def decide(verb: str, request: object, policy: Policy | None = None) -> Denial | None:
    return (policy or Policy()).decide(A, access_of(verb, request), OWNERS.get)


@pytest.mark.parametrize(
    ("verb", "request_"),
    [
        ("KV.Put", pb.PutRequest(key=b"k8s/team-a/x")),
        ("KV.Range", pb.RangeRequest(key=b"k8s/team-a/")),
        ("KV.Range", pb.RangeRequest(key=b"k8s/team-a/", range_end=b"k8s/team-a0")),
        ("KV.Delete", pb.DeleteRequest(key=b"k8s/team-a/a", range_end=b"k8s/team-a/b")),
        ("Lock.Lock", pb.LockRequest(name="k8s/team-a/job", lease=7)),
        ("Election.Campaign", pb.CampaignRequest(election="k8s/team-a/e", lease=7)),
        ("Sequence.Next", pb.SequenceNextRequest(name="k8s/team-a/ids")),
        ("Lease.Revoke", pb.LeaseRevokeRequest(id=7)),
        ("Lease.KeepAlive", pb.LeaseKeepAliveRequest(id=12345)),  # unknown here: FSM decides
        ("Watch.Watch", pb.WatchRequest(key=b"k8s/team-a/", range_end=b"k8s/team-a0")),
        # The operator's record of the namespace's Lease CR: readable, not writable.
        ("KV.Range", pb.RangeRequest(key=b"concord.dev/v1alpha1/leases/team-a/job")),
        ("Secrets.GetSealingCertificate", pb.GetSealingCertificateRequest()),
        ("Pipeline.Stream", None),
    ],
)
def test_allowed_inside_the_namespace(verb: str, request_: object) -> None:
    assert decide(verb, request_) is None


@pytest.mark.parametrize(
    ("verb", "request_", "reason", "named"),
    [
        ("KV.Put", pb.PutRequest(key=b"k8s/team-b/x"), "namespace", "key 'k8s/team-b/x'"),
        ("KV.Put", pb.PutRequest(key=b"k8s/team-ab/x"), "namespace", "k8s/team-ab/x"),
        ("KV.Put", pb.PutRequest(key=b"k8s/team-a"), "namespace", "key 'k8s/team-a'"),
        (
            "KV.Range",
            pb.RangeRequest(key=b"k8s/team-a/", range_end=b"k8s/team-a1"),
            "namespace",
            "range",
        ),
        ("KV.Range", pb.RangeRequest(key=b"k8s/team-a/", range_end=b"\0"), "namespace", "no end"),
        (
            "KV.Put",
            pb.PutRequest(key=b"concord.dev/v1alpha1/leases/team-a/job"),
            "namespace",
            "leases",
        ),
        (
            "KV.Range",
            pb.RangeRequest(key=b"concord.dev/v1alpha1/leases/team-b/j"),
            "namespace",
            "team-b",
        ),
        (
            "KV.Txn",
            pb.TxnRequest(
                compares=[pb.Compare(key=b"k8s/team-a/x")],
                success=[pb.TxnOp(delete=pb.DeleteRequest(key=b"k8s/team-b/y"))],
            ),
            "namespace",
            "k8s/team-b/y",
        ),
        (
            "KV.Txn",
            pb.TxnRequest(compares=[pb.Compare(key=b"other", target=pb.Compare.LOCK_TOKEN)]),
            "namespace",
            "lock 'other'",
        ),
        ("Lock.Lock", pb.LockRequest(name="k8s/team-a/job", lease=8), "lease", "team-b"),
        ("Lease.KeepAlive", pb.LeaseKeepAliveRequest(id=9), "lease", "a cluster client"),
        ("Election.Resign", pb.ResignRequest(leader=pb.LeaderKey(election="x")), "namespace", "x"),
        ("Watch.Watch", pb.WatchRequest(), "unscoped", "every key"),
        ("Cluster.MemberList", pb.MemberListRequest(), "admin", "Cluster.MemberList"),
        ("Maintenance.Snapshot", pb.SnapshotRequest(), "admin", "administration"),
        ("Secrets.RenewSealingKey", pb.RenewSealingKeyRequest(), "admin", "administration"),
        ("Secrets.ValidateSealed", pb.ValidateSealedRequest(), "admin", "administration"),
    ],
)
def test_refused_outside_with_the_identity_verb_and_object(
    verb: str, request_: object, reason: str, named: str
) -> None:
    denial = decide(verb, request_)
    assert denial is not None and denial.reason == reason
    assert "system:serviceaccount:team-a:app (pod app-0)" in denial.message
    assert verb in denial.message and named in denial.message


def test_unseal_needs_the_own_namespace_and_a_namespaced_scope() -> None:
    key = sealing.new_sealing_key(dt.datetime.now(dt.UTC))
    public = sealing.load_private_key(key.private_key_der).public_key()

    def value(scope: Scope, ns: str, name: str) -> pb.SealedValue:
        return pb.SealedValue(
            ciphertext=sealing.seal(public, b"x", scope, ns, name), namespace=ns, name=name
        )

    ok = [value(Scope.STRICT, "team-a", "db"), value(Scope.NAMESPACE_WIDE, "team-a", "")]
    for v in ok:
        assert decide("Secrets.Unseal", pb.UnsealRequest(value=v)) is None
    for v, why in [
        (value(Scope.STRICT, "team-b", "db"), "own namespace"),
        (value(Scope.CLUSTER_WIDE, "team-a", "db"), "cluster-wide"),
    ]:
        denial = decide("Secrets.Unseal", pb.UnsealRequest(value=v))
        assert denial is not None and denial.reason == "unseal-scope" and why in denial.message


def test_grants_widen_what_one_service_account_may_name() -> None:
    shared = pb.PutRequest(key=b"shared/x")
    assert decide("KV.Put", shared) is not None
    policy = Policy(grants={"system:serviceaccount:team-a:app": ("shared/",)})
    assert decide("KV.Put", shared, policy) is None
    other = WorkloadIdentity("team-a", "other")
    assert policy.decide(other, access_of("KV.Put", shared), OWNERS.get) is not None


def test_every_rpc_and_pipeline_kind_has_a_decision() -> None:
    """A new RPC is refused to workloads until it has a rule; each pipelined kind maps to
    the RPC whose rule applies."""
    methods = method_handlers((name, base()) for name, (_, base) in REGISTRARS.items())
    verbs = {verb_of(m) for m in methods}
    assert {"KV.Put", "Lock.Lock", "Maintenance.Unlock", "Cluster.Status"} <= verbs
    assert set(PIPELINE_VERBS.values()) <= verbs
    for verb in verbs:
        access = access_of(verb, None) if verb.split(".")[0] in ("Cluster", "Maintenance") else None
        if access is not None:
            assert access.admin, verb


RECORD = b"k8s/team-a/sealedsecrets/db"


@pytest.mark.parametrize(
    ("verb", "request_"),
    [
        ("KV.Range", pb.RangeRequest(key=RECORD)),
        ("KV.Range", pb.RangeRequest(key=b"k8s/team-a/", range_end=b"k8s/team-a0")),
        (
            "Watch.Watch",
            pb.WatchRequest(key=b"k8s/team-a/sealedsecrets/", range_end=b"k8s/team-a0"),
        ),
        (
            "KV.Txn",
            pb.TxnRequest(
                compares=[pb.Compare(key=RECORD)],
                success=[pb.TxnOp(range=pb.RangeRequest(key=RECORD))],
            ),
        ),
        # A txn may compare the record and write beside it.
        (
            "KV.Txn",
            pb.TxnRequest(
                compares=[pb.Compare(key=RECORD)],
                success=[pb.TxnOp(put=pb.PutRequest(key=b"k8s/team-a/seen"))],
            ),
        ),
        # Deleting around the records, not through them.
        ("KV.Delete", pb.DeleteRequest(key=b"k8s/team-a/a", range_end=b"k8s/team-a/sealedsecrets")),
        ("KV.Delete", pb.DeleteRequest(key=b"k8s/team-a/sealedsecrets0", range_end=b"k8s/team-a0")),
        ("KV.Put", pb.PutRequest(key=b"k8s/team-a/sealedsecretsx")),
        # Locks, elections and sequences named like a record are not records (other tables).
        ("Lock.Lock", pb.LockRequest(name="k8s/team-a/sealedsecrets/db")),
        ("Sequence.Next", pb.SequenceNextRequest(name="k8s/team-a/sealedsecrets/db")),
        # A read-only txn may read the operator's CR records too.
        (
            "KV.Txn",
            pb.TxnRequest(compares=[pb.Compare(key=b"concord.dev/v1alpha1/leases/team-a/job")]),
        ),
    ],
)
def test_the_operators_sealed_records_can_be_read(verb: str, request_: object) -> None:
    assert decide(verb, request_) is None


@pytest.mark.parametrize(
    ("verb", "request_", "named"),
    [
        ("KV.Put", pb.PutRequest(key=RECORD), "key 'k8s/team-a/sealedsecrets/db'"),
        ("KV.Delete", pb.DeleteRequest(key=RECORD), "key 'k8s/team-a/sealedsecrets/db'"),
        (
            "KV.Delete",
            pb.DeleteRequest(key=b"k8s/team-a/", range_end=b"k8s/team-a0"),
            "key range ['k8s/team-a/', 'k8s/team-a0')",
        ),
        (
            "KV.Delete",
            pb.DeleteRequest(key=b"k8s/team-a/s", range_end=b"k8s/team-a/sealedsecrets/e"),
            "range",
        ),
        (
            "KV.Txn",
            pb.TxnRequest(
                compares=[pb.Compare(key=RECORD)],
                success=[pb.TxnOp(put=pb.PutRequest(key=RECORD))],
            ),
            "key 'k8s/team-a/sealedsecrets/db'",
        ),
        (
            "KV.Txn",
            pb.TxnRequest(failure=[pb.TxnOp(delete=pb.DeleteRequest(key=RECORD))]),
            "key 'k8s/team-a/sealedsecrets/db'",
        ),
    ],
)
def test_the_operators_sealed_records_cannot_be_changed(
    verb: str, request_: object, named: str
) -> None:
    """A pod that could rewrite `k8s/NS/sealedsecrets/` could swap its namespace's
    namespace-wide values between names, or delete its neighbours' secrets."""
    denial = decide(verb, request_)
    assert denial is not None and denial.reason == "read-only", denial
    assert "system:serviceaccount:team-a:app (pod app-0)" in denial.message
    assert verb in denial.message and named in denial.message
    assert "'k8s/team-a/sealedsecrets/'" in denial.message


def test_a_grant_of_another_namespace_does_not_reach_its_records() -> None:
    policy = Policy(grants={"system:serviceaccount:team-a:app": ("k8s/",)})
    assert decide("KV.Put", pb.PutRequest(key=b"k8s/team-b/x"), policy) is None
    for request_ in [
        pb.PutRequest(key=b"k8s/team-b/sealedsecrets/db"),
        pb.DeleteRequest(key=b"k8s/", range_end=b"k8s0"),
        pb.DeleteRequest(key=b"k8s/team-a/z", range_end=b"k8s/team-b/"),
    ]:
        verb = "KV.Put" if isinstance(request_, pb.PutRequest) else "KV.Delete"
        denial = decide(verb, request_, policy)
        assert denial is not None and denial.reason == "read-only", request_


def test_the_protected_prefix_is_where_the_operator_writes() -> None:
    assert operator_record_prefixes("team-a") == (sealing.sealed_record_prefix("team-a"),)
