"""The CRDs of crds/ against a real API server: they apply (client- and server-side), are
structural, default what they say, and the API server itself refuses invalid objects with a
message a person understands (asserted on the text kubectl prints). Status rules too: a phase
that disagrees with the Ready condition is refused, kopf's status bookkeeping is kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.testing.controlplane import CRD_DIR, ControlPlane

pytestmark = pytest.mark.kube

GROUP_VERSION = "concord.dev/v1alpha1"
CRDS = {
    "Lease": ("leases.concord.dev", "clease"),
    "Sequence": ("sequences.concord.dev", "cseq"),
    "SealedSecret": ("sealedsecrets.concord.dev", "csealed"),
    "ConcordCluster": ("concordclusters.concord.dev", "ccluster"),
}
SEALED = {"password": "AgBy3i4OJSWK+PiTySYZZA=="}


def obj(kind: str, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": GROUP_VERSION, "kind": kind, "metadata": {"name": name}}
    if spec is not None:
        body["spec"] = spec
    return body


def create(plane: ControlPlane, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create `body` and return the object the API server stored (defaults applied)."""
    out = plane.kubectl("create", "-n", namespace, "-f", "-", "-o", "json", input=json.dumps(body))
    stored: dict[str, Any] = json.loads(out.stdout)
    return stored


def refused(plane: ControlPlane, namespace: str, *args: str, body: Any = None) -> str:
    """Run kubectl, which must fail; return what it told the user (stderr, one line)."""
    done = plane.kubectl(
        *args, "-n", namespace, input=None if body is None else json.dumps(body), check=False
    )
    assert done.returncode != 0, f"accepted: {args} {body}\n{done.stdout}"
    return " ".join(done.stderr.split())


def patch_status(
    plane: ControlPlane, namespace: str, resource: str, status: dict[str, Any], check: bool = True
) -> str:
    done = plane.kubectl(
        "patch",
        "-n",
        namespace,
        resource,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        check=check,
    )
    return " ".join(done.stderr.split())


def ready(status: str, reason: str = "Held", generation: int = 1) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "reason": reason,
        "message": "as the coordinator says",
    }


# --- the definitions ----------------------------------------------------------------------------


def test_crds_apply_client_side_server_side_and_dry_run(control_plane: ControlPlane) -> None:
    client = control_plane.kubectl("apply", "-f", str(CRD_DIR))
    server = control_plane.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
    dry = control_plane.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(CRD_DIR))
    for name, _ in CRDS.values():
        crd = f"customresourcedefinition.apiextensions.k8s.io/{name}"
        assert crd in client.stdout
        assert f"{crd} serverside-applied" in server.stdout
        assert f"{crd} serverside-applied (server dry run)" in dry.stdout
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(
        f"concord.dev_{n.split('.')[0]}.yaml" for n, _ in CRDS.values()
    )


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_is_structural_established_and_named(control_plane: ControlPlane, kind: str) -> None:
    name, short = CRDS[kind]
    crd = control_plane.kubectl_json("get", "crd", name)
    status = crd["status"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert "NonStructuralSchema" not in conditions
    spec = crd["spec"]
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert short in spec["names"]["shortNames"]
    assert spec["names"]["categories"] == ["concord"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_short_names_do_not_clash_with_kubernetes_lease(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("api-resources", "-o", "name").stdout.split()
    assert "leases.coordination.k8s.io" in out
    assert "leases.concord.dev" in out
    # `lease` still means Kubernetes' own; `clease` means ours.
    assert control_plane.kubectl("explain", "lease").stdout.startswith("GROUP:      coord")
    assert "GROUP:      concord.dev" in control_plane.kubectl("explain", "clease").stdout


# --- valid objects and defaults -----------------------------------------------------------------


def test_lease_defaults(control_plane: ControlPlane, kube_namespace: str) -> None:
    stored = create(control_plane, kube_namespace, obj("Lease", "db-writer", {}))
    assert stored["spec"] == {"kind": "lock", "ttlSeconds": 15, "maxHolders": 1}


def test_semaphore_and_election_are_accepted(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    semaphore = create(
        control_plane,
        kube_namespace,
        obj("Lease", "workers", {"maxHolders": 5, "ttlSeconds": 30, "lockDelaySeconds": 5}),
    )
    assert semaphore["spec"] == {
        "kind": "lock",
        "ttlSeconds": 30,
        "maxHolders": 5,
        "lockDelaySeconds": 5,
    }
    election = create(control_plane, kube_namespace, obj("Lease", "leader", {"kind": "election"}))
    assert election["spec"]["maxHolders"] == 1


def test_sequence_defaults(control_plane: ControlPlane, kube_namespace: str) -> None:
    stored = create(control_plane, kube_namespace, obj("Sequence", "order-ids", {}))
    assert stored["spec"] == {"start": 1, "increment": 1}
    big = create(
        control_plane,
        kube_namespace,
        obj("Sequence", "big", {"start": -(2**63), "increment": 2**63 - 1}),
    )
    assert big["spec"] == {"start": -(2**63), "increment": 2**63 - 1}


def test_sealed_secret_defaults(control_plane: ControlPlane, kube_namespace: str) -> None:
    stored = create(
        control_plane,
        kube_namespace,
        obj(
            "SealedSecret",
            "db-password",
            {
                "encryptedData": SEALED,
                "template": {"metadata": {"labels": {"app": "db"}}},
            },
        ),
    )
    assert stored["spec"]["scope"] == "strict"
    assert stored["spec"]["template"] == {"type": "Opaque", "metadata": {"labels": {"app": "db"}}}


def test_concord_cluster_without_spec_is_accepted(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    stored = create(control_plane, kube_namespace, obj("ConcordCluster", "concord"))
    assert stored["spec"] == {}
    endpoints = ["concord-0.concord:7100", "[::1]:7100", "127.0.0.1:7101"]
    stored = create(
        control_plane,
        kube_namespace,
        obj("ConcordCluster", "local", {"endpoints": endpoints}),
    )
    assert stored["spec"]["endpoints"] == endpoints


# --- invalid objects, refused by the API server ---------------------------------------------------

INVALID = [
    pytest.param(
        obj("Lease", "x", {"ttlSeconds": -5}),
        ["spec.ttlSeconds: Invalid value: -5", "should be greater than or equal to 1"],
        None,
        id="lease-negative-ttl",
    ),
    pytest.param(
        obj("Lease", "x", {"ttlSeconds": 86401}),
        ["spec.ttlSeconds: Invalid value: 86401", "should be less than or equal to 86400"],
        None,
        id="lease-ttl-over-a-day",
    ),
    pytest.param(
        obj("Lease", "x", {"maxHolders": 0}),
        ["spec.maxHolders: Invalid value: 0", "should be greater than or equal to 1"],
        None,
        id="lease-max-holders-0",
    ),
    pytest.param(
        obj("Lease", "x", {"kind": "election", "maxHolders": 2}),
        [
            "spec.maxHolders: Invalid value",
            "an election has exactly one leader: spec.maxHolders must be 1 when spec.kind is "
            "election",
        ],
        None,
        id="lease-election-with-2-holders",
    ),
    pytest.param(
        obj("Lease", "x", {"kind": "mutex"}),
        ['spec.kind: Unsupported value: "mutex": supported values: "lock", "election"'],
        None,
        id="lease-unknown-kind",
    ),
    pytest.param(
        obj("Lease", "x", {"lockDelaySeconds": 61}),
        ["spec.lockDelaySeconds: Invalid value: 61", "should be less than or equal to 60"],
        None,
        id="lease-lock-delay-over-60",
    ),
    pytest.param(
        obj("Lease", "x", {"ttl": 10}),
        ['unknown field "spec.ttl"'],
        [".spec.ttl: field not declared in schema"],
        id="lease-unknown-field",
    ),
    pytest.param(
        obj("Lease", "x", {"ttlSeconds": "10s"}),
        ['spec.ttlSeconds: Invalid value: "string": spec.ttlSeconds in body must be of type'],
        [".spec.ttlSeconds: expected numeric (int or float), got string"],
        id="lease-ttl-as-string",
    ),
    pytest.param(
        obj("Sequence", "x", {"increment": 0}),
        ["spec.increment: Invalid value", "spec.increment must be at least 1"],
        None,
        id="sequence-increment-0",
    ),
    pytest.param(
        obj("Sequence", "x", {"increment": -1}),
        ["a sequence only counts up"],
        None,
        id="sequence-negative-increment",
    ),
    pytest.param(
        obj("SealedSecret", "x", {"encryptedData": SEALED, "scope": "public"}),
        [
            'spec.scope: Unsupported value: "public": supported values: "strict", '
            '"namespace-wide", "cluster-wide"'
        ],
        None,
        id="sealedsecret-bad-scope",
    ),
    pytest.param(
        obj("SealedSecret", "x", {"scope": "strict"}),
        ["spec.encryptedData: Required value"],
        None,
        id="sealedsecret-without-data",
    ),
    pytest.param(
        obj("SealedSecret", "x", {"encryptedData": {"db password": "AgBy"}}),
        ["spec.encryptedData keys must be valid Secret keys"],
        None,
        id="sealedsecret-bad-key",
    ),
    pytest.param(
        obj("SealedSecret", "x", {"encryptedData": SEALED, "template": {"data": {"a": "b"}}}),
        ['unknown field "spec.template.data"'],
        [".spec.template.data: field not declared in schema"],
        id="sealedsecret-plaintext-in-template",
    ),
    pytest.param(
        obj("ConcordCluster", "x", {"statefulSetName": "concord", "endpoints": ["a:1"]}),
        ["give either spec.statefulSetName", "or spec.endpoints", "not both"],
        None,
        id="cluster-both-sources",
    ),
    pytest.param(
        obj("ConcordCluster", "x", {"endpoints": ["http://concord:7100"]}),
        ["an endpoint is host:port"],
        None,
        id="cluster-endpoint-url",
    ),
]


@pytest.mark.parametrize(("body", "messages", "apply_messages"), INVALID)
def test_invalid_object_is_refused_with_a_clear_message(
    control_plane: ControlPlane,
    kube_namespace: str,
    body: dict[str, Any],
    messages: list[str],
    apply_messages: list[str] | None,
) -> None:
    said = refused(control_plane, kube_namespace, "create", "-f", "-", body=body)
    for message in messages:
        assert message in said
    # Server-side apply decodes into a typed patch first, so what the schema's types say
    # (unknown fields, wrong types) it words its own way; the rest it says the same.
    said = refused(control_plane, kube_namespace, "apply", "--server-side", "-f", "-", body=body)
    for message in apply_messages or messages:
        assert message in said


IMMUTABLE = [
    pytest.param(
        obj("Lease", "x", {}),
        {"spec": {"kind": "election"}},
        "spec.kind cannot change after creation: delete the Lease and create it again",
        id="lease-kind",
    ),
    pytest.param(
        obj("Sequence", "x", {"start": 100}),
        {"spec": {"start": 1}},
        "spec.start cannot change after creation: numbers already issued are never issued again",
        id="sequence-start",
    ),
    pytest.param(
        obj("Sequence", "x", {}),
        {"spec": {"increment": 2}},
        "spec.increment cannot change after creation",
        id="sequence-increment",
    ),
    pytest.param(
        obj("SealedSecret", "x", {"encryptedData": SEALED}),
        {"spec": {"scope": "cluster-wide"}},
        "spec.scope is bound into the ciphertext and cannot change",
        id="sealedsecret-scope",
    ),
]


@pytest.mark.parametrize(("body", "change", "message"), IMMUTABLE)
def test_fixed_fields_cannot_change(
    control_plane: ControlPlane,
    kube_namespace: str,
    body: dict[str, Any],
    change: dict[str, Any],
    message: str,
) -> None:
    create(control_plane, kube_namespace, body)
    resource = f"{body['kind'].lower()}.concord.dev/x"
    said = refused(
        control_plane, kube_namespace, "patch", resource, "--type=merge", "-p", json.dumps(change)
    )
    assert message in said


def test_lease_ttl_and_holders_may_change(control_plane: ControlPlane, kube_namespace: str) -> None:
    create(control_plane, kube_namespace, obj("Lease", "x", {}))
    control_plane.kubectl(
        "patch",
        "-n",
        kube_namespace,
        "clease/x",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"ttlSeconds": 60, "maxHolders": 3}}),
    )
    got = control_plane.kubectl_json("get", "-n", kube_namespace, "clease/x")
    assert got["spec"] == {"kind": "lock", "ttlSeconds": 60, "maxHolders": 3}
    assert got["metadata"]["generation"] == 2


# --- status -------------------------------------------------------------------------------------


def test_status_is_a_subresource(control_plane: ControlPlane, kube_namespace: str) -> None:
    """A status sent with the object is dropped; only the status subresource writes it."""
    body = obj("Lease", "x", {})
    body["status"] = {"fencingToken": 7}
    assert "status" not in create(control_plane, kube_namespace, body)


def test_phase_must_follow_the_ready_condition(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    create(control_plane, kube_namespace, obj("Lease", "x", {}))
    said = patch_status(control_plane, kube_namespace, "clease/x", {"phase": "Ready"}, check=False)
    assert "status.phase must follow the Ready condition" in said
    said = patch_status(
        control_plane,
        kube_namespace,
        "clease/x",
        {"phase": "Ready", "conditions": [ready("False", "CoordinatorUnavailable")]},
        check=False,
    )
    assert "status.phase must follow the Ready condition" in said
    for status, phase in [("False", "NotReady"), ("Unknown", "Pending"), ("True", "Ready")]:
        patch_status(
            control_plane,
            kube_namespace,
            "clease/x",
            {"phase": phase, "conditions": [ready(status)]},
        )


def test_condition_must_have_the_metav1_shape(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    create(control_plane, kube_namespace, obj("Sequence", "x", {}))
    bad = ready("True")
    bad["status"] = "true"
    said = patch_status(control_plane, kube_namespace, "cseq/x", {"conditions": [bad]}, False)
    assert 'status.conditions[0].status: Unsupported value: "true"' in said
    bad = ready("True", reason="coordinator unreachable")
    said = patch_status(control_plane, kube_namespace, "cseq/x", {"conditions": [bad]}, False)
    assert 'status.conditions[0].reason: Invalid value: "coordinator unreachable"' in said


def test_kopf_bookkeeping_in_status_is_kept(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    create(control_plane, kube_namespace, obj("Lease", "x", {}))
    progress = {"progress": {"reconcile": {"started": "2026-01-01T00:00:00Z", "retries": 1}}}
    patch_status(control_plane, kube_namespace, "clease/x", {"kopf": progress})
    got = control_plane.kubectl_json("get", "-n", kube_namespace, "clease/x")
    assert got["status"] == {"kopf": progress}


def test_cluster_quorum_must_follow_the_counts(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    create(control_plane, kube_namespace, obj("ConcordCluster", "concord"))
    said = patch_status(
        control_plane,
        kube_namespace,
        "ccluster/concord",
        {"voters": 3, "reachable": 1, "quorum": "Degraded"},
        check=False,
    )
    assert "status.quorum must follow the counts" in said
    for reachable, quorum in [(1, "Lost"), (2, "Degraded"), (3, "Healthy")]:
        patch_status(
            control_plane,
            kube_namespace,
            "ccluster/concord",
            {"voters": 3, "reachable": reachable, "quorum": quorum},
        )


# --- kubectl get ----------------------------------------------------------------------------------


def _table(plane: ControlPlane, namespace: str, *args: str) -> list[list[str]]:
    out = plane.kubectl("get", "-n", namespace, *args).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def test_get_concord_lists_every_kind(control_plane: ControlPlane, kube_namespace: str) -> None:
    create(control_plane, kube_namespace, obj("Lease", "db-writer", {}))
    create(control_plane, kube_namespace, obj("Sequence", "order-ids", {}))
    create(control_plane, kube_namespace, obj("SealedSecret", "db", {"encryptedData": SEALED}))
    create(control_plane, kube_namespace, obj("ConcordCluster", "concord"))
    out = control_plane.kubectl("get", "concord", "-n", kube_namespace).stdout
    for ref in (
        "lease.concord.dev/db-writer",
        "sequence.concord.dev/order-ids",
        "sealedsecret.concord.dev/db",
        "concordcluster.concord.dev/concord",
    ):
        assert ref in out


def test_printer_columns(control_plane: ControlPlane, kube_namespace: str) -> None:
    ns = kube_namespace
    create(control_plane, ns, obj("Lease", "workers", {"maxHolders": 2}))
    holders = [
        {"identity": "pod-a", "fencingToken": 41, "acquiredAt": "2026-01-01T00:00:00Z"},
        {"identity": "pod-b", "fencingToken": 42, "acquiredAt": "2026-01-01T00:00:01Z"},
    ]
    patch_status(
        control_plane,
        ns,
        "clease/workers",
        {
            "holders": holders,
            "holderCount": 2,
            "fencingToken": 42,
            "waiters": 3,
            "transitions": 5,
            "phase": "Ready",
            "conditions": [ready("True")],
        },
    )
    header, row = _table(control_plane, ns, "clease")
    assert header == ["NAME", "KIND", "HOLDER", "HOLDERS", "TOKEN", "WAITERS", "PHASE", "AGE"]
    assert row[:7] == ["workers", "lock", "pod-a", "2", "42", "3", "Ready"]
    header, row = _table(control_plane, ns, "clease", "-o", "wide")
    assert header[-4:] == ["TTL", "MAX", "TRANSITIONS", "AGE"]
    assert row[-4:-1] == ["15", "2", "5"]

    create(control_plane, ns, obj("Sequence", "ids", {"start": 1000, "increment": 10}))
    patch_status(
        control_plane,
        ns,
        "cseq/ids",
        {"value": 1230, "phase": "Ready", "conditions": [ready("True", "Mirrored")]},
    )
    header, row = _table(control_plane, ns, "cseq", "-o", "wide")
    assert header == ["NAME", "VALUE", "START", "INCREMENT", "PHASE", "AGE"]
    assert row[:5] == ["ids", "1230", "1000", "10", "Ready"]

    create(control_plane, ns, obj("SealedSecret", "db", {"encryptedData": SEALED}))
    patch_status(
        control_plane,
        ns,
        "csealed/db",
        {"phase": "NotReady", "conditions": [ready("False", "NoSealingKey")]},
    )
    header, row = _table(control_plane, ns, "csealed")
    assert header == ["NAME", "SCOPE", "READY", "REASON", "AGE"]
    assert row[:4] == ["db", "strict", "False", "NoSealingKey"]

    create(control_plane, ns, obj("ConcordCluster", "concord"))
    patch_status(
        control_plane,
        ns,
        "ccluster/concord",
        {
            "leader": "concord-0",
            "term": 7,
            "commitIndex": 1234,
            "voters": 3,
            "reachable": 2,
            "quorum": "Degraded",
            "faultTolerance": 0,
            "memberSummary": "concord-0:Leader,concord-1:Reachable,concord-2:Unreachable",
            "members": [
                {"id": 1, "name": "concord-0", "role": "Voter", "managerStatus": "Leader"},
                {"id": 2, "name": "concord-1", "managerStatus": "Reachable", "lag": 0},
                {"id": 3, "name": "concord-2", "managerStatus": "Unreachable", "lag": 90},
            ],
            "phase": "Ready",
            "conditions": [ready("True", "QuorumDegraded")],
        },
    )
    header, row = _table(control_plane, ns, "ccluster")
    assert header == [
        "NAME",
        "LEADER",
        "TERM",
        "COMMIT",
        "REACHABLE",
        "VOTERS",
        "QUORUM",
        "MEMBERS",
        "AGE",
    ]
    assert row[:8] == [
        "concord",
        "concord-0",
        "7",
        "1234",
        "2",
        "3",
        "Degraded",
        "concord-0:Leader,concord-1:Reachable,concord-2:Unreachable",
    ]


def test_crd_files_are_plain_yaml_with_one_document() -> None:
    """`kubectl apply -f crds/` is the install path without helm: one CRD per file, nothing
    else in the folder."""
    files = sorted(CRD_DIR.iterdir())
    assert all(p.suffix == ".yaml" for p in files), files
    for path in files:
        text = Path(path).read_text()
        assert text.count("\nkind: CustomResourceDefinition\n") == 1
        assert "\n---" not in text


def test_holder_count_must_match_the_holders(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    create(control_plane, kube_namespace, obj("Lease", "x", {"maxHolders": 2}))
    holder = {"identity": "pod-a", "fencingToken": 1}
    said = patch_status(
        control_plane, kube_namespace, "clease/x", {"holders": [holder], "holderCount": 2}, False
    )
    assert "status.holderCount must be the number of status.holders" in said
    patch_status(control_plane, kube_namespace, "clease/x", {"holders": [holder], "holderCount": 1})
