"""The operator's decisions without a cluster: concord_operator.reconcile is pure, so every
rule (declare once, refuse what cannot change, Ready=False without deleting anything, a phase
that never disagrees with the conditions) is checked here directly."""

import datetime as dt
import json

import pytest

from concord_operator.reconcile import (
    IMMUTABLE,
    INVALID_NAME,
    SPEC_CONFLICT,
    UNAVAILABLE,
    ClusterObserved,
    CreateSequence,
    DeleteRecord,
    Holder,
    LeaseObserved,
    LeaseSpec,
    MemberView,
    ObjectRef,
    PutRecord,
    RevokeLease,
    SequenceObserved,
    SequenceSpec,
    Unavailable,
    config_key,
    coordinator_name,
    finalize_lease,
    finalize_sequence,
    parse_coordinator_name,
    phase_of,
    reconcile_cluster,
    reconcile_lease,
    reconcile_sequence,
    status_changed,
    watch_range,
)

NOW = dt.datetime(2026, 12, 5, 14, 0, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)
LEASE = ObjectRef("leases", "team-a", "db-migrations", uid="u-1", generation=1)
SEQ = ObjectRef("sequences", "team-a", "invoices", uid="u-2", generation=1)


def cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


# --- names ---------------------------------------------------------------------------------------


def test_name_mapping_round_trips_and_stays_inside_the_watch_range() -> None:
    name = coordinator_name("team-a", "db-migrations")
    assert name == "k8s/team-a/db-migrations"
    assert parse_coordinator_name(name) == ("team-a", "db-migrations")
    key, end = watch_range()
    assert key <= name.encode() < end
    assert config_key("leases", "team-a", "x") == b"concord.dev/v1alpha1/leases/team-a/x"
    assert parse_coordinator_name("other/team-a/x") is None
    assert parse_coordinator_name("k8s/team-a") is None


def test_a_name_too_long_for_the_coordinator_is_refused_with_a_reason() -> None:
    ref = ObjectRef("leases", "n" * 63, "x" * 253, uid="u", generation=1)
    plan = reconcile_lease(ref, LeaseSpec(), LeaseObserved(None), {}, NOW)
    assert plan.actions == ()
    ready = cond(plan.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", INVALID_NAME)
    assert "256" in ready["message"]
    assert plan.status["phase"] == "NotReady"


# --- Lease ---------------------------------------------------------------------------------------


def test_a_new_lease_is_declared_with_its_configuration_record() -> None:
    spec = LeaseSpec.of({"ttlSeconds": 30, "maxHolders": 2})
    plan = reconcile_lease(LEASE, spec, LeaseObserved(None), {}, NOW)
    assert plan.actions == (PutRecord(LEASE.config_key, spec.record("u-1")),)
    record = json.loads(spec.record("u-1"))
    assert record == {
        "kind": "lock",
        "maxHolders": 2,
        "ttlSeconds": 30,
        "lockDelaySeconds": 0,
        "uid": "u-1",
    }
    ready = cond(plan.status, "Ready")
    assert ready["status"] == "True"
    assert ready["observedGeneration"] == 1
    assert plan.status["phase"] == "Ready"
    assert plan.status["holders"] == []
    assert plan.status["waiters"] == 0


def test_declaring_again_writes_nothing_to_the_coordinator() -> None:
    """A restart mid-reconcile: the record is there already, so the plan has no actions."""
    spec = LeaseSpec()
    first = reconcile_lease(LEASE, spec, LeaseObserved(None), {}, NOW)
    record = json.loads(spec.record("u-1"))
    again = reconcile_lease(LEASE, spec, LeaseObserved(record), first.status, LATER)
    assert again.actions == ()
    assert not status_changed(first.status, again.status)
    # The transition time is the first one: nothing moved.
    assert cond(again.status, "Ready")["lastTransitionTime"] == "2026-12-05T14:00:00Z"


def test_holders_are_mirrored_in_token_order_with_the_latest_token() -> None:
    observed = LeaseObserved(
        json.loads(LeaseSpec(max_holders=2).record("u-1")),
        (
            Holder(7, "7", 120, acquired_ms=1_764_943_200_000, expires_in_ms=9_000),
            Holder(5, "5", 99, acquired_ms=1_764_943_100_000),
        ),
        waiters=3,
        grants_seen=2,
    )
    plan = reconcile_lease(LEASE, LeaseSpec(max_holders=2), observed, {"transitions": 4}, NOW)
    assert [h["fencingToken"] for h in plan.status["holders"]] == [99, 120]
    assert plan.status["holderCount"] == 2
    assert plan.status["fencingToken"] == 120
    assert plan.status["waiters"] == 3
    assert plan.status["transitions"] == 6
    assert plan.status["holders"][1]["expiresAt"] == "2026-12-05T14:00:09Z"
    assert plan.status["holders"][1]["identity"] == "7"


def test_a_released_lock_keeps_its_last_fencing_token() -> None:
    record = json.loads(LeaseSpec().record("u-1"))
    plan = reconcile_lease(
        LEASE, LeaseSpec(), LeaseObserved(record), {"fencingToken": 120, "transitions": 1}, NOW
    )
    assert plan.status["holders"] == []
    assert plan.status["fencingToken"] == 120
    # A grant released before the flush read the lock: its token came through the watch.
    observed = LeaseObserved(record, grants_seen=1, latest_token=130)
    plan = reconcile_lease(LEASE, LeaseSpec(), observed, plan.status, NOW)
    assert plan.status["fencingToken"] == 130
    assert plan.status["transitions"] == 2


def test_max_holders_change_is_applied_to_the_record() -> None:
    old = json.loads(LeaseSpec(max_holders=1).record("u-1"))
    new = LeaseSpec(max_holders=3)
    plan = reconcile_lease(LEASE, new, LeaseObserved(old), {}, NOW)
    assert plan.actions == (PutRecord(LEASE.config_key, new.record("u-1")),)
    applied = cond(plan.status, "SpecApplied")
    assert applied["status"] == "True"
    assert "maxHolders is now 3" in applied["message"]


def test_kind_change_is_refused_with_a_condition_and_the_old_kind_kept() -> None:
    old = json.loads(LeaseSpec(kind="lock").record("u-1"))
    plan = reconcile_lease(LEASE, LeaseSpec(kind="election"), LeaseObserved(old), {}, NOW)
    assert plan.actions == ()  # the record still says lock: nothing to write
    applied = cond(plan.status, "SpecApplied")
    assert (applied["status"], applied["reason"]) == ("False", IMMUTABLE)
    assert cond(plan.status, "Ready")["status"] == "True"
    assert plan.status["phase"] == "Ready"  # still usable as declared


def test_unavailable_coordinator_sets_ready_false_and_keeps_everything_else() -> None:
    record = json.loads(LeaseSpec().record("u-1"))
    ready = reconcile_lease(
        LEASE, LeaseSpec(), LeaseObserved(record, (Holder(7, "7", 120),)), {}, NOW
    )
    down = reconcile_lease(
        LEASE, LeaseSpec(), Unavailable("no quorum: 1 of 3 members reachable"), ready.status, LATER
    )
    assert down.actions == ()
    assert down.retry
    assert set(down.status) == {"conditions", "phase"}  # holders etc. are left as they were
    r = cond(down.status, "Ready")
    assert (r["status"], r["reason"]) == ("False", UNAVAILABLE)
    assert "1 of 3" in r["message"]
    assert r["lastTransitionTime"] == "2026-12-05T14:05:00Z"
    assert cond(down.status, "SpecApplied")["status"] == "True"
    assert down.status["phase"] == "NotReady"
    # And back: Ready=True again from the same observation as before.
    merged = {**ready.status, **down.status}
    back = reconcile_lease(
        LEASE, LeaseSpec(), LeaseObserved(record, (Holder(7, "7", 120),)), merged, LATER
    )
    assert cond(back.status, "Ready")["status"] == "True"
    assert not back.retry


def test_finalizing_a_lease_revokes_every_holder_and_drops_the_record() -> None:
    observed = LeaseObserved(None, (Holder(7, "7", 120), Holder(9, "worker-2", 121)))
    assert finalize_lease(LEASE, observed) == (
        RevokeLease(7),
        RevokeLease(9),
        DeleteRecord(LEASE.config_key),
    )
    assert finalize_lease(LEASE, Unavailable("down")) == Unavailable("down")


# --- Sequence ------------------------------------------------------------------------------------


def test_a_new_sequence_is_created_then_recorded() -> None:
    spec = SequenceSpec(start=1000, increment=10)
    plan = reconcile_sequence(SEQ, spec, SequenceObserved(None, exists=False), {}, NOW)
    assert plan.actions == (
        CreateSequence("k8s/team-a/invoices", 1000, 10),
        PutRecord(SEQ.config_key, spec.record("u-2")),
    )
    assert "value" not in plan.status  # nothing issued yet
    assert plan.status["phase"] == "Ready"


def test_a_crash_between_create_and_record_is_adopted_without_a_second_create() -> None:
    spec = SequenceSpec(start=1000, increment=10)
    observed = SequenceObserved(None, exists=True, next_value=1000, increment=10)
    plan = reconcile_sequence(SEQ, spec, observed, {}, NOW)
    assert plan.actions == (PutRecord(SEQ.config_key, spec.record("u-2")),)
    assert cond(plan.status, "Ready")["reason"] == "Adopted"


def test_an_existing_sequence_with_another_increment_is_a_conflict() -> None:
    observed = SequenceObserved(None, exists=True, next_value=57, increment=3)
    plan = reconcile_sequence(SEQ, SequenceSpec(1, 1), observed, {}, NOW)
    assert plan.actions == ()
    r = cond(plan.status, "Ready")
    assert (r["status"], r["reason"]) == ("False", SPEC_CONFLICT)
    assert "increment 3" in r["message"]
    assert plan.status["phase"] == "NotReady"


def test_changing_start_of_a_declared_sequence_is_refused() -> None:
    record = json.loads(SequenceSpec(1, 1).record("u-2"))
    observed = SequenceObserved(record, exists=True, next_value=42, increment=1)
    plan = reconcile_sequence(SEQ, SequenceSpec(start=500, increment=1), observed, {}, NOW)
    assert plan.actions == ()
    applied = cond(plan.status, "SpecApplied")
    assert (applied["status"], applied["reason"]) == ("False", IMMUTABLE)
    assert "start 1" in applied["message"]
    assert plan.status["value"] == 41  # the last number issued; 42 is next
    assert plan.status["phase"] == "Ready"  # still usable as declared


def test_a_declared_sequence_mirrors_its_next_value_and_writes_nothing() -> None:
    record = json.loads(SequenceSpec(1, 1).record("u-2"))
    observed = SequenceObserved(record, exists=True, next_value=42, increment=1)
    plan = reconcile_sequence(SEQ, SequenceSpec(1, 1), observed, {}, NOW)
    assert plan.actions == ()
    assert plan.status["value"] == 41


def test_finalizing_a_sequence_drops_only_its_record() -> None:
    """The coordinator has no delete for a sequence (values are never reissued)."""
    observed = SequenceObserved(None, exists=True, next_value=5, increment=1)
    assert finalize_sequence(SEQ, observed) == (DeleteRecord(SEQ.config_key),)


# --- phase ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conds", "phase"),
    [
        ([], "Pending"),
        ([{"type": "Ready", "status": "Unknown"}], "Pending"),
        ([{"type": "Ready", "status": "True"}], "Ready"),
        (
            [{"type": "Ready", "status": "True"}, {"type": "SpecApplied", "status": "False"}],
            "Ready",
        ),
        ([{"type": "Ready", "status": "False", "reason": UNAVAILABLE}], "NotReady"),
        ([{"type": "Ready", "status": "False", "reason": SPEC_CONFLICT}], "NotReady"),
    ],
)
def test_phase_follows_the_ready_condition(conds: list[dict], phase: str) -> None:
    assert phase_of(conds) == phase


# --- ConcordCluster ------------------------------------------------------------------------------

CLUSTER = ObjectRef("concordclusters", "concord", "concord", uid="u-3", generation=1)


def members(*states: str) -> tuple[MemberView, ...]:
    return tuple(
        MemberView(i, f"concord-{i - 1}", f"10.0.0.{i}:7100", True, s, 100 - i)  # type: ignore[arg-type]
        for i, s in enumerate(states, start=1)
    )


@pytest.mark.parametrize(
    ("states", "quorum", "reachable", "tolerance", "ready"),
    [
        (("Leader", "Reachable", "Reachable"), "Healthy", 3, 1, "True"),
        (("Leader", "Reachable", "Unreachable"), "Degraded", 2, 0, "True"),
        (("Unreachable", "Unreachable", "Unreachable"), "Lost", 0, 0, "False"),
        (
            ("Leader", "Reachable", "Reachable", "Unreachable", "Unreachable"),
            "Degraded",
            3,
            0,
            "True",
        ),
    ],
)
def test_the_cluster_view_counts_as_docker_node_ls(
    states: tuple[str, ...], quorum: str, reachable: int, tolerance: int, ready: str
) -> None:
    observed = ClusterObserved(members(*states), term=7, commit_index=100, endpoints=("a:1",))
    plan = reconcile_cluster(CLUSTER, {}, observed, {}, NOW)
    st = plan.status
    assert (st["quorum"], st["reachable"], st["voters"]) == (quorum, reachable, len(states))
    assert st["faultTolerance"] == tolerance
    assert cond(st, "Ready")["status"] == ready
    assert st["phase"] == ("Ready" if ready == "True" else "NotReady")
    assert st["memberSummary"].startswith(f"concord-0:{states[0]}")
    assert st["members"][1]["lag"] == 2  # commit 100, match 98
    assert st["leader"] == ("concord-0" if states[0] == "Leader" else "")


def test_the_cluster_view_refuses_another_clusters_endpoints() -> None:
    observed = ClusterObserved(members("Leader"), term=1, commit_index=1, endpoints=("a:1",))
    plan = reconcile_cluster(CLUSTER, {"endpoints": ["b:2"]}, observed, {}, NOW)
    assert cond(plan.status, "Ready")["reason"] == "OtherCluster"
    plan = reconcile_cluster(CLUSTER, {"endpoints": ["a:1", "c:3"]}, observed, {}, NOW)
    assert cond(plan.status, "Ready")["status"] == "True"
