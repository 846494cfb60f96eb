"""Membership follows the StatefulSet: the operator's decisions, pure (state in -> one action out).

The chart's StatefulSet maps ordinal I to Raft member id I + 1 (its certificate is bound to
that id). `spec.replicas` is the membership wanted: ids 1..replicas. Each reconcile of a
`ConcordCluster` with `spec.statefulSetName` observes the StatefulSet (its replicas, which
ordinals have a pod that is not terminating) and the coordinator (`ClusterObserved`, as the
leader sees it) and asks `plan_membership` for **at most one** change, Raft's single-server
rule: the next change is planned only from an observation made after the last one finished.

In priority order:

1. **Scale-down**: a member whose id is above `replicas` is removed, the highest id first.
   If it leads, leadership is transferred first (to the reachable voter that stays with the
   highest match index); removing it waits until another member leads. A voter is removed
   only if the voters that remain keep a quorum of running members among themselves
   (reachable from the leader *and* with a pod not being deleted: a terminating member still
   answers for a moment): 5 -> 3 removes 5 (4 remain, 3 running, quorum 3) and then 4.
   When they would not (the StatefulSet's Parallel pod management deletes every scaled-away
   pod at once, so 3 -> 1 leaves 1 of 3 voters), nothing is done and the condition says
   what to do: scale back up (the members' claims are retained), then down one step at a
   time. Without a leader (that quorum already gone) the same advice is given.
2. **Promotion**: a learner with an id within `replicas` becomes a voter once the leader hears
   from it and its match index lags the commit index by at most `PROMOTE_LAG_MAX` entries
   (the leader's own check then passes: Raft refuses to promote a learner that lags).
3. **Scale-up**: the lowest missing id within `replicas` whose pod runs is added as a
   learner, with the URLs the pod advertises (the StatefulSet's naming, read off a listed
   member's URLs), but only when no learner is still catching up: one new member at a time.

Nothing here deletes data or pods; the operator only changes the Raft configuration through
the coordinator's Cluster API. Without a leader (quorum lost) nothing is planned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .reconcile import ClusterObserved, Cond, MemberView

MEMBERSHIP = "Membership"
"""The ConcordCluster condition that reports membership against the StatefulSet."""

IN_SYNC = "InSync"
SCALING = "Scaling"
BLOCKED = "Blocked"
"""Reasons of the Membership condition (True InSync; False Scaling or Blocked)."""

PROMOTE_LAG_MAX = 64
"""A learner is promoted once its match index is at most this many entries behind the commit
index: close enough that, as a voter, it does not hold up commits while it finishes."""


@dataclass(frozen=True, slots=True)
class StatefulSetObserved:
    name: str
    replicas: int
    """spec.replicas: the members wanted are ids 1..replicas."""
    pods: frozenset[int]
    """Ordinals whose pod is not being deleted and runs its containers (a pod that exits at
    once, e.g. with no certificate for its ordinal, is not added as a learner that would
    never catch up and would hold up the next one)."""


@dataclass(frozen=True, slots=True)
class AddLearner:
    member: int
    name: str
    peer_url: str
    client_url: str


@dataclass(frozen=True, slots=True)
class Promote:
    member: int


@dataclass(frozen=True, slots=True)
class RemoveMember:
    member: int


@dataclass(frozen=True, slots=True)
class TransferLeader:
    member: int
    """The voter that is to lead."""


MemberChange = AddLearner | Promote | RemoveMember | TransferLeader


@dataclass(frozen=True, slots=True)
class MembershipPlan:
    change: MemberChange | None
    condition: Cond
    pending: bool
    """More to do once this change (or a member's catching up) is done: look again soon."""
    warning: str = ""
    """A person must act (an Event is recorded): the operator refuses to go on alone."""


def statefulset_observed(
    body: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> StatefulSetObserved:
    """The StatefulSet's wanted replicas and which of its ordinals have a live pod (not
    being deleted, every container running), from the API objects."""
    name = str((body.get("metadata") or {}).get("name", ""))
    replicas = (body.get("spec") or {}).get("replicas")
    own = re.compile(rf"^{re.escape(name)}-(\d+)$")
    ordinals: set[int] = set()
    for pod in pods:
        meta = pod.get("metadata") or {}
        found = own.match(str(meta.get("name", "")))
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        running = bool(statuses) and all("running" in (c.get("state") or {}) for c in statuses)
        if found and running and not meta.get("deletionTimestamp"):
            ordinals.add(int(found.group(1)))
    return StatefulSetObserved(name, 1 if replicas is None else int(replicas), frozenset(ordinals))


def plan_membership(sts: StatefulSetObserved, observed: ClusterObserved) -> MembershipPlan:
    """The one membership change to make now, if any (see the module docstring)."""
    members = {m.id: m for m in observed.members}
    leader = next((m for m in observed.members if m.reachability == "Leader"), None)
    if leader is None:
        voters = sorted(m.id for m in observed.members if m.voter)
        gone = [i for i in voters if i > sts.replicas]
        if gone and sts.replicas >= 1:
            # Scaled down past the quorum in one go (Parallel pod management deletes every
            # scaled-away pod at once): nothing can be removed without a quorum.
            message = f"no quorum: {_scale_back(sts, len(voters), gone)}"
            # Not pending: nothing changes until a person scales back (the StatefulSet's
            # event, or the periodic refresh, brings the operator back).
            return _blocked(message, warning=message)
        return _waiting("no leader: membership changes wait for a quorum")
    if sts.replicas < 1:
        return _blocked(
            f"StatefulSet {sts.name} is scaled to 0: the members are kept (scale it up "
            "again; the data is on the retained claims)"
        )
    wanted = set(range(1, sts.replicas + 1))
    extra = sorted((i for i in members if i not in wanted), reverse=True)
    if extra:
        return _scale_down(sts, observed, members[extra[0]], leader, wanted)
    learners = sorted(m.id for m in observed.members if not m.voter)
    for member in learners:
        view = members[member]
        lag = max(0, observed.commit_index - view.match_index)
        if view.reachability != "Unreachable" and lag <= PROMOTE_LAG_MAX:
            return MembershipPlan(
                Promote(member),
                _scaling(f"promoting member {member} ({view.name}): caught up, lag {lag}"),
                True,
            )
    if learners:
        view = members[learners[0]]
        lag = max(0, observed.commit_index - view.match_index)
        return _waiting(
            f"learner {view.id} ({view.name}) is catching up (lag {lag} entries, "
            f"{view.reachability.lower()})"
        )
    missing = sorted(wanted - set(members))
    if not missing:
        return MembershipPlan(
            None,
            Cond(
                MEMBERSHIP,
                "True",
                IN_SYNC,
                f"{len(members)} voters, as StatefulSet {sts.name} has {sts.replicas} replicas",
            ),
            False,
        )
    member = missing[0]
    ordinal = member - 1
    if ordinal not in sts.pods:
        return _waiting(f"waiting for pod {sts.name}-{ordinal} to add member {member}")
    name = f"{sts.name}-{ordinal}"
    urls = member_urls(sts.name, ordinal, observed.members)
    if urls is None:
        return _blocked(
            f"cannot tell pod {name}'s URLs: no listed member is named after StatefulSet "
            f"{sts.name} (NAME-ORDINAL)",
            warning=f"member {member} not added: no member's URLs follow {sts.name}'s naming",
        )
    peer_url, client_url = urls
    return MembershipPlan(
        AddLearner(member, name, peer_url, client_url),
        _scaling(f"adding member {member} ({name}) as a learner"),
        True,
    )


def _scale_down(
    sts: StatefulSetObserved,
    observed: ClusterObserved,
    target: MemberView,
    leader: MemberView,
    wanted: set[int],
) -> MembershipPlan:
    member = target.id
    if not target.voter:
        return MembershipPlan(
            RemoveMember(member),
            _scaling(f"removing learner {member} ({target.name}): ordinal scaled away"),
            True,
        )
    voters = [m for m in observed.members if m.voter]
    remaining = [m for m in voters if m.id != member]
    # A member whose pod is being deleted (or gone) counts as lost even while it still
    # answers: Parallel pod management takes every scaled-away pod at once, and a quorum
    # counted on a terminating member would be gone a moment after the change.
    reachable = sum(_alive(m, sts) for m in remaining)
    quorum = len(remaining) // 2 + 1
    if reachable < quorum:
        gone = [m.id for m in voters if m.id > sts.replicas]
        message = (
            f"not removing member {member} ({target.name}): the {len(remaining)} voters left "
            f"would have {reachable} running, fewer than their quorum of {quorum}: "
            f"{_scale_back(sts, len(voters), gone)}"
        )
        return _blocked(message, warning=message)
    if leader.id == member:
        successors = [m for m in remaining if m.id in wanted and _alive(m, sts)]
        if not successors:
            return _waiting(f"member {member} leads and no voter that stays is reachable")
        best = max(successors, key=lambda m: (m.match_index, -m.id))
        return MembershipPlan(
            TransferLeader(best.id),
            _scaling(
                f"member {member} ({target.name}) leads and is scaled away: handing leadership "
                f"to member {best.id} first"
            ),
            True,
        )
    return MembershipPlan(
        RemoveMember(member),
        _scaling(
            f"removing member {member} ({target.name}): ordinal scaled away; {reachable} of "
            f"{len(remaining)} remaining voters running"
        ),
        True,
    )


def _alive(m: MemberView, sts: StatefulSetObserved) -> bool:
    """Reachable from the leader, and its pod is not going away."""
    return m.reachability != "Unreachable" and (m.id - 1) in sts.pods


def _scale_back(sts: StatefulSetObserved, voters: int, gone: list[int]) -> str:
    return (
        f"StatefulSet {sts.name} was scaled to {sts.replicas} while {voters} members vote, so "
        f"members {', '.join(map(str, gone))} went at once (its pods go in parallel). Scale it "
        f"back up to {voters} (their claims are retained), wait for every member to be Ready, "
        "then scale down one step at a time"
    )


def member_urls(
    statefulset: str, ordinal: int, members: tuple[MemberView, ...]
) -> tuple[str, str] | None:
    """(peer URL, client URL) of pod STATEFULSET-ORDINAL, read off a listed member of the same
    StatefulSet: its URLs with its pod name swapped for the new one (the chart advertises
    https://POD.PEERS.NAMESPACE.svc.DOMAIN:PORT). None if no listed member fits."""
    own = re.compile(rf"^{re.escape(statefulset)}-(\d+)$")
    for m in sorted(members, key=lambda m: m.id):
        if not own.match(m.name) or not m.peer_url or not m.address:
            continue
        host = f"://{m.name}."
        if host not in m.peer_url or host not in m.address:
            continue
        new = f"://{statefulset}-{ordinal}."
        return m.peer_url.replace(host, new, 1), m.address.replace(host, new, 1)
    return None


def _scaling(message: str) -> Cond:
    return Cond(MEMBERSHIP, "False", SCALING, message)


def _waiting(message: str) -> MembershipPlan:
    return MembershipPlan(None, _scaling(message), True)


def _blocked(message: str, *, warning: str = "") -> MembershipPlan:
    """No change, and none until something else changes (not pending); `warning` asks a
    person to act."""
    return MembershipPlan(None, Cond(MEMBERSHIP, "False", BLOCKED, message), False, warning)
