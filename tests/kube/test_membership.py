"""Membership following the StatefulSet, decided without a cluster: concord_operator.membership
is pure (StatefulSet + the leader's member list in, at most one change out), so every rule is
checked here: learners added one at a time and promoted once caught up, removals highest
first with the leader handed over first, and a refusal (never an action) when removing would
leave the remaining voters without a reachable quorum."""

from __future__ import annotations

import datetime as dt

from concord_operator.membership import (
    BLOCKED,
    IN_SYNC,
    MEMBERSHIP,
    PROMOTE_LAG_MAX,
    SCALING,
    AddLearner,
    Promote,
    RemoveMember,
    StatefulSetObserved,
    TransferLeader,
    member_urls,
    plan_membership,
    statefulset_observed,
)
from concord_operator.reconcile import ClusterObserved, MemberView, ObjectRef, reconcile_cluster

DOMAIN = "concord-peers.ns.svc.cluster.local"
COMMIT = 1000


def view(member: int, state: str = "Reachable", *, voter: bool = True, lag: int = 0) -> MemberView:
    name = f"concord-{member - 1}"
    return MemberView(
        member,
        name,
        f"https://{name}.{DOMAIN}:7070",
        voter,
        state,  # type: ignore[arg-type]
        COMMIT - lag,
        f"https://{name}.{DOMAIN}:7071",
    )


def cluster(*members: MemberView) -> ClusterObserved:
    return ClusterObserved(members, term=3, commit_index=COMMIT, endpoints=("a:1",))


def sts(replicas: int, pods: range | tuple[int, ...] | None = None) -> StatefulSetObserved:
    ordinals = range(replicas) if pods is None else pods
    return StatefulSetObserved("concord", replicas, frozenset(ordinals))


THREE = (view(1, "Leader"), view(2), view(3))


def test_in_sync_does_nothing() -> None:
    plan = plan_membership(sts(3), cluster(*THREE))
    assert plan.change is None and not plan.pending
    assert (plan.condition.type, plan.condition.status, plan.condition.reason) == (
        MEMBERSHIP,
        "True",
        IN_SYNC,
    )


def test_scale_up_adds_the_lowest_missing_ordinal_as_a_learner_with_its_urls() -> None:
    plan = plan_membership(sts(5), cluster(*THREE))
    assert plan.change == AddLearner(
        4, "concord-3", f"https://concord-3.{DOMAIN}:7071", f"https://concord-3.{DOMAIN}:7070"
    )
    assert plan.pending and plan.condition.reason == SCALING


def test_a_learner_is_promoted_once_caught_up_and_no_second_is_added_meanwhile() -> None:
    lagging = cluster(*THREE, view(4, voter=False, lag=PROMOTE_LAG_MAX + 1))
    plan = plan_membership(sts(5), lagging)
    assert plan.change is None and plan.pending  # waits: no member 5 while 4 catches up
    assert "catching up" in plan.condition.message
    caught_up = cluster(*THREE, view(4, voter=False, lag=PROMOTE_LAG_MAX))
    assert plan_membership(sts(5), caught_up).change == Promote(4)
    unreachable = cluster(*THREE, view(4, "Unreachable", voter=False))
    assert plan_membership(sts(5), unreachable).change is None
    # Then the next one.
    assert plan_membership(sts(5), cluster(*THREE, view(4))).change == AddLearner(
        5, "concord-4", f"https://concord-4.{DOMAIN}:7071", f"https://concord-4.{DOMAIN}:7070"
    )


def test_a_missing_ordinal_waits_for_its_pod() -> None:
    plan = plan_membership(sts(5, pods=(0, 1, 2)), cluster(*THREE))
    assert plan.change is None and plan.pending
    assert "waiting for pod concord-3" in plan.condition.message


def test_scale_down_removes_the_highest_first_while_the_rest_keep_a_quorum() -> None:
    # 5 -> 3: the StatefulSet deleted pods 3 and 4 at once; 3 of 5 voters answer.
    five = cluster(*THREE, view(4, "Unreachable"), view(5, "Unreachable"))
    assert plan_membership(sts(3), five).change == RemoveMember(5)
    four = cluster(*THREE, view(4, "Unreachable"))
    assert plan_membership(sts(3), four).change == RemoveMember(4)
    assert plan_membership(sts(3), cluster(*THREE)).change is None


def test_the_leader_is_handed_over_before_it_is_removed() -> None:
    five = cluster(view(1, lag=5), view(2), view(3, lag=1), view(4), view(5, "Leader"))
    plan = plan_membership(sts(3), five)
    assert plan.change == TransferLeader(2)  # the most caught-up voter that stays
    assert plan.pending


def test_a_removal_that_would_leave_no_reachable_quorum_is_refused() -> None:
    # 3 -> 1: pods 1 and 2 went at once; removing 3 would leave {1, 2} with 1 reachable.
    three = cluster(view(1, "Leader"), view(2, "Unreachable"), view(3, "Unreachable"))
    plan = plan_membership(sts(1), three)
    assert plan.change is None and not plan.pending
    assert plan.condition.reason == BLOCKED
    assert "Scale it back up to 3" in plan.condition.message
    assert plan.warning == plan.condition.message
    # The same while the two still answer, their pods terminating: they count as gone, or
    # the operator would remove 3 and 2 on a quorum that is about to vanish.
    terminating = cluster(view(1, "Leader"), view(2), view(3))
    assert plan_membership(sts(1), terminating).condition.reason == BLOCKED
    # But 5 -> 3 with 4 and 5 still answering goes ahead: 3 of the 4 left run.
    five = cluster(*THREE, view(4), view(5))
    assert plan_membership(sts(3), five).change == RemoveMember(5)
    # A learner scaled away never counts against the quorum.
    learner = cluster(*THREE, view(4, "Unreachable", voter=False))
    assert plan_membership(sts(3), learner).change == RemoveMember(4)


def test_nothing_without_a_leader_and_nothing_when_scaled_to_zero() -> None:
    lost = cluster(view(1, "Unreachable"), view(2, "Unreachable"), view(3, "Unreachable"))
    assert plan_membership(sts(5), lost).change is None
    assert plan_membership(sts(5), lost).condition.reason == SCALING
    # Scaled past the quorum in one go: the condition and an Event say how to get back.
    gone = plan_membership(sts(1), lost)
    assert gone.change is None and gone.condition.reason == BLOCKED
    assert "members 2, 3 went at once" in gone.warning
    assert "Scale it back up to 3" in gone.warning
    zero = plan_membership(sts(0), cluster(*THREE))
    assert zero.change is None and zero.condition.reason == BLOCKED


def test_urls_come_from_a_member_of_the_same_statefulset() -> None:
    assert member_urls("concord", 6, THREE) == (
        f"https://concord-6.{DOMAIN}:7071",
        f"https://concord-6.{DOMAIN}:7070",
    )
    others = (MemberView(1, "m1", "https://10.0.0.1:7070", True, "Leader", 1, "https://x:1"),)
    assert member_urls("concord", 3, others) is None


def test_statefulset_observed_skips_terminating_crashing_and_foreign_pods() -> None:
    body = {"metadata": {"name": "concord"}, "spec": {"replicas": 5}}
    up = {"containerStatuses": [{"state": {"running": {}}}]}
    crashing = {"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
    pods = [
        {"metadata": {"name": "concord-0"}, "status": up},
        {
            "metadata": {"name": "concord-1", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": up,
        },
        {"metadata": {"name": "concord-operator-5d8f"}, "status": up},
        {"metadata": {"name": "concord-2"}, "status": crashing},
        {"metadata": {"name": "concord-3"}},  # not started yet
        {"metadata": {"name": "concord-4"}, "status": up},
    ]
    assert statefulset_observed(body, pods) == StatefulSetObserved("concord", 5, frozenset({0, 4}))


def test_the_cluster_view_shows_the_membership_condition() -> None:
    ref = ObjectRef("concordclusters", "ns", "concord", "uid", 1)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    plan = plan_membership(sts(5), cluster(*THREE))
    status = reconcile_cluster(ref, {}, cluster(*THREE), {}, now, extra=(plan.condition,)).status
    types = {c["type"]: c for c in status["conditions"]}
    assert types["Ready"]["status"] == "True"
    assert types[MEMBERSHIP]["reason"] == SCALING
    assert status["phase"] == "Ready"
