"""The operator's decisions, pure and level-based: (spec, observed) -> Plan.

Every trigger (a create, an update, the operator's own resume, a coordinator watch event, the
coordinator coming back) ends in the same call: read the object's spec, observe what the
coordinator holds for it, and ask `reconcile_lease` / `reconcile_sequence` what to do. The
answer, a `Plan`, is the coordinator writes still needed (`actions`, each idempotent) and the
whole status the object should show once they are done. Nothing here reads a clock, a socket
or the Kubernetes API, so every rule is unit-tested without a cluster
(tests/kube/test_reconcile.py); the same inputs always give the same plan, which is what makes
a restart mid-reconcile harmless: the next run observes what the last one managed to do and
plans only the rest.

Name mapping (the contract with the sidecar and with pods using the client library). The
custom resource `<namespace>/<name>` is the coordinator object named

    k8s/<namespace>/<name>

in the coordinator's lock table (a `Lease` of kind `lock`), election table (kind `election`)
or sequence table (a `Sequence`). Those tables are separate in the coordinator, so a `Lease`
and a `Sequence` with the same name do not collide. What the operator declared is recorded in
the coordinator's KV store under

    concord.dev/v1alpha1/leases/<namespace>/<name>
        {"kind", "maxHolders", "ttlSeconds", "lockDelaySeconds", "uid"}
    concord.dev/v1alpha1/sequences/<namespace>/<name>
        {"start", "increment", "uid"}

(JSON), the configuration a sidecar reads before it acquires, and the operator's memory of
what it already did: declaring again finds the record equal and writes nothing.

Conditions (metav1.Condition shape) are the truth; `phase` is derived from them by `phase_of`
and never set on its own:

`phase` is Ready, NotReady or Pending (no Ready condition yet), following Ready as the CRDs'
CEL rule demands; the reasons:

- `Ready`: True once the object is declared in the coordinator and its status mirrored;
  False with reason `CoordinatorUnavailable` (no quorum, or unreachable: the coordinator's
  own message), `SpecConflict` (the coordinator already holds something incompatible under
  that name) or `InvalidName` (the mapped name is too long for the coordinator).
- `SpecApplied`: False with reason `Immutable` when the spec asks for a change the
  coordinator cannot make (a sequence's start or increment, a lease's kind); the object stays
  usable as declared.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

NAME_PREFIX = "k8s"
CONFIG_PREFIX = "concord.dev/v1alpha1"
MAX_NAME_BYTES = 256
"""The coordinator's limit on lock, election and sequence names (coordinator.fsm.kv)."""

LEASES: Final = "leases"
SEQUENCES: Final = "sequences"
CLUSTERS: Final = "concordclusters"
SEALED_SECRETS: Final = "sealedsecrets"
Plural = Literal["leases", "sequences", "concordclusters", "sealedsecrets"]

READY = "Ready"
SPEC_APPLIED = "SpecApplied"

# Ready=False reasons.
UNAVAILABLE = "CoordinatorUnavailable"
SPEC_CONFLICT = "SpecConflict"
INVALID_NAME = "InvalidName"
OTHER_CLUSTER = "OtherCluster"
QUORUM_LOST = "QuorumLost"
# SpecApplied=False reason.
IMMUTABLE = "Immutable"

Status = dict[str, Any]
"""A status subresource body, JSON-shaped."""


# --- names -------------------------------------------------------------------------------------


def coordinator_name(namespace: str, name: str) -> str:
    """The lock, election or sequence name of the custom resource `namespace/name`."""
    return f"{NAME_PREFIX}/{namespace}/{name}"


def parse_coordinator_name(name: str) -> tuple[str, str] | None:
    """(namespace, name) of a mapped coordinator name, or None for a name not ours."""
    parts = name.split("/", 2)
    if len(parts) != 3 or parts[0] != NAME_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def config_key(plural: str, namespace: str, name: str) -> bytes:
    """The KV key recording what the operator declared for `namespace/name`."""
    return f"{CONFIG_PREFIX}/{plural}/{namespace}/{name}".encode()


def watch_range() -> tuple[bytes, bytes]:
    """[key, range_end) of every mapped coordinator name, for one watch stream."""
    prefix = f"{NAME_PREFIX}/".encode()
    return prefix, prefix[:-1] + bytes([prefix[-1] + 1])


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectRef:
    plural: Plural
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0

    @property
    def key(self) -> tuple[Plural, str, str]:
        return (self.plural, self.namespace, self.name)

    @property
    def coordinator_name(self) -> str:
        return coordinator_name(self.namespace, self.name)

    @property
    def config_key(self) -> bytes:
        return config_key(self.plural, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class LeaseSpec:
    kind: Literal["lock", "election"] = "lock"
    ttl_s: int = 15
    max_holders: int = 1
    lock_delay_s: int = 0

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> LeaseSpec:
        """From a Lease's spec (the CRD's defaults fill the gaps the API server left)."""
        kind: Literal["lock", "election"] = "election" if spec.get("kind") == "election" else "lock"
        return cls(
            kind=kind,
            ttl_s=int(spec.get("ttlSeconds", 15)),
            max_holders=int(spec.get("maxHolders", 1)),
            lock_delay_s=int(spec.get("lockDelaySeconds", 0)),
        )

    def record(self, uid: str) -> bytes:
        return _json(
            {
                "kind": self.kind,
                "maxHolders": self.max_holders,
                "ttlSeconds": self.ttl_s,
                "lockDelaySeconds": self.lock_delay_s,
                "uid": uid,
            }
        )


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    start: int = 1
    increment: int = 1

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> SequenceSpec:
        return cls(start=int(spec.get("start", 1)), increment=int(spec.get("increment", 1)))

    def record(self, uid: str) -> bytes:
        return _json({"start": self.start, "increment": self.increment, "uid": uid})


@dataclass(frozen=True, slots=True)
class Holder:
    lease: int
    """The holder's coordinator lease."""
    identity: str
    """Who holds it: an election leader's published value, else the lease id (decimal)."""
    fencing_token: int
    acquired_ms: int = 0
    """Replicated wall clock of the grant (ms since the epoch); 0: unknown (elections)."""
    expires_in_ms: int | None = None
    """Until the holder's lease expires unless renewed; None: unknown."""


@dataclass(frozen=True, slots=True)
class LeaseObserved:
    record: Mapping[str, Any] | None
    """The declared configuration in the coordinator's KV store, or None."""
    holders: tuple[Holder, ...] = ()
    waiters: int = 0
    grants_seen: int = 0
    """Grants the watch stream reported since the status was last written."""
    latest_token: int = 0
    """The highest fencing token the watch stream reported (the latest grant, even if it was
    released before it could be observed)."""


@dataclass(frozen=True, slots=True)
class SequenceObserved:
    record: Mapping[str, Any] | None
    exists: bool
    next_value: int = 0
    increment: int = 0


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The coordinator could not be asked: no quorum, or not reachable."""

    message: str


# --- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutRecord:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class DeleteRecord:
    key: bytes


@dataclass(frozen=True, slots=True)
class CreateSequence:
    name: str
    start: int
    increment: int


@dataclass(frozen=True, slots=True)
class RevokeLease:
    """End a holder's coordinator lease: it lets go of the lock (or leadership) at once."""

    lease: int


Action = PutRecord | DeleteRecord | CreateSequence | RevokeLease


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...] = ()
    status: Status = field(default_factory=dict)
    retry: bool = False
    """Reconcile again when the coordinator is back (the status says why it could not)."""


# --- conditions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cond:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


def conditions(
    wanted: Sequence[Cond], previous: Sequence[Mapping[str, Any]], generation: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """metav1.Condition dicts; lastTransitionTime moves only when a condition's status does."""
    before = {c.get("type"): c for c in previous}
    out: list[dict[str, Any]] = []
    for c in wanted:
        old = before.get(c.type)
        changed = old is None or old.get("status") != c.status
        out.append(
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation,
                "lastTransitionTime": _rfc3339(now)
                if changed or old is None
                else old.get("lastTransitionTime", _rfc3339(now)),
            }
        )
    return out


def phase_of(conds: Sequence[Mapping[str, Any]]) -> str:
    """The one-word phase the printer columns show, a function of the Ready condition only
    (the CRDs' CEL rule refuses a status where the two disagree): Ready, NotReady, or Pending
    before the first reconcile. The reason is in the condition."""
    ready = next((c for c in conds if c.get("type") == READY), None)
    if ready is None:
        return "Pending"
    return {"True": "Ready", "False": "NotReady"}.get(str(ready.get("status")), "Pending")


# --- Lease -------------------------------------------------------------------------------------


def reconcile_lease(
    ref: ObjectRef,
    spec: LeaseSpec,
    observed: LeaseObserved | Unavailable,
    previous: Mapping[str, Any],
    now: dt.datetime,
) -> Plan:
    """Declare the Lease (its configuration record) and mirror holders into its status."""
    prev_conds = list(previous.get("conditions") or [])
    name_problem = _name_problem(ref)
    if name_problem:
        return _failed(ref, previous, INVALID_NAME, name_problem, now)
    if isinstance(observed, Unavailable):
        return _unavailable(ref, previous, observed, now)

    actions: list[Action] = []
    applied = Cond(SPEC_APPLIED, "True", "Applied", "the spec is in effect in the coordinator")
    record = observed.record
    if record is not None and record.get("kind", spec.kind) != spec.kind:
        # A lock table entry and an election table entry are different objects: switching
        # would strand the current holders on the old one. Keep what was declared.
        applied = Cond(
            SPEC_APPLIED,
            "False",
            IMMUTABLE,
            f"kind cannot change from {record.get('kind')!r} to {spec.kind!r} once declared; "
            "delete the Lease and create it again",
        )
        effective = LeaseSpec(
            kind="election" if record.get("kind") == "election" else "lock",
            ttl_s=spec.ttl_s,
            max_holders=spec.max_holders,
            lock_delay_s=spec.lock_delay_s,
        )
    else:
        effective = spec
    wanted_record = effective.record(ref.uid)
    if record is None or _json(record) != wanted_record:
        actions.append(PutRecord(ref.config_key, wanted_record))
        if record is not None and record.get("maxHolders") != effective.max_holders:
            applied = Cond(
                SPEC_APPLIED,
                "True",
                "Applied",
                f"maxHolders is now {effective.max_holders}; holders acquiring with the old "
                "value keep their grants, and the new value applies once the lock is free",
            )

    holders = sorted(observed.holders, key=lambda h: h.fencing_token)
    conds = conditions(
        [
            Cond(
                READY,
                "True",
                "Declared",
                f"declared in the coordinator as {effective.kind} {ref.coordinator_name!r}",
            ),
            applied,
        ],
        prev_conds,
        ref.generation,
        now,
    )
    status: Status = {
        "holders": [_holder_status(h, now) for h in holders],
        "holderCount": len(holders),  # for the printer column (the CRD checks it)
        "fencingToken": max(
            holders[-1].fencing_token if holders else 0,
            observed.latest_token,
            int(previous.get("fencingToken") or 0),
        ),
        "transitions": int(previous.get("transitions") or 0) + observed.grants_seen,
        "waiters": observed.waiters,
        "observedGeneration": ref.generation,
        "conditions": conds,
        "phase": phase_of(conds),
    }
    return Plan(tuple(actions), status)


def finalize_lease(
    ref: ObjectRef, observed: LeaseObserved | Unavailable
) -> tuple[Action, ...] | Unavailable:
    """What deleting a Lease does: end every holder's lease (so nobody goes on believing it
    holds a lock that no longer exists) and drop the configuration record."""
    if isinstance(observed, Unavailable):
        return observed
    revoke = [RevokeLease(h.lease) for h in observed.holders]
    return (*revoke, DeleteRecord(ref.config_key))


# --- Sequence ----------------------------------------------------------------------------------


def reconcile_sequence(
    ref: ObjectRef,
    spec: SequenceSpec,
    observed: SequenceObserved | Unavailable,
    previous: Mapping[str, Any],
    now: dt.datetime,
) -> Plan:
    """Create the sequence once (the coordinator never deletes or rewinds one) and mirror its
    next value."""
    prev_conds = list(previous.get("conditions") or [])
    name_problem = _name_problem(ref)
    if name_problem:
        return _failed(ref, previous, INVALID_NAME, name_problem, now)
    if isinstance(observed, Unavailable):
        return _unavailable(ref, previous, observed, now)

    actions: list[Action] = []
    applied = Cond(SPEC_APPLIED, "True", "Applied", "the spec is in effect in the coordinator")
    record = observed.record
    if not observed.exists:
        actions += [
            CreateSequence(ref.coordinator_name, spec.start, spec.increment),
            PutRecord(ref.config_key, spec.record(ref.uid)),
        ]
        ready = Cond(
            READY,
            "True",
            "Declared",
            f"sequence {ref.coordinator_name!r} created: start {spec.start}, increment "
            f"{spec.increment}",
        )
        value = None  # nothing issued yet
    elif record is None:
        # The sequence exists but nothing says we declared it: an earlier Sequence of this name
        # (sequences are never deleted, so values are never reissued), or a crash between
        # create and record. Adopt it if it counts the same way.
        if observed.increment != spec.increment:
            return _failed(
                ref,
                previous,
                SPEC_CONFLICT,
                f"the coordinator already has sequence {ref.coordinator_name!r} with increment "
                f"{observed.increment} (next value {observed.next_value}), and sequences are "
                f"never deleted; use increment {observed.increment} or another name",
                now,
            )
        actions.append(PutRecord(ref.config_key, spec.record(ref.uid)))
        ready = Cond(
            READY,
            "True",
            "Adopted",
            f"sequence {ref.coordinator_name!r} already existed and continues at "
            f"{observed.next_value} (values are never reissued)",
        )
        value = _last_issued(observed, spec.start)
    else:
        declared = SequenceSpec(int(record.get("start", 1)), int(record.get("increment", 1)))
        if (declared.start, declared.increment) != (spec.start, spec.increment):
            applied = Cond(
                SPEC_APPLIED,
                "False",
                IMMUTABLE,
                f"start and increment are fixed when a sequence is created (start "
                f"{declared.start}, increment {declared.increment}); a running sequence is "
                "never rewound. Create a new Sequence for other values",
            )
        if record.get("uid") != ref.uid:
            actions.append(PutRecord(ref.config_key, declared.record(ref.uid)))
        ready = Cond(
            READY,
            "True",
            "Declared",
            f"sequence {ref.coordinator_name!r}: start {declared.start}, increment "
            f"{declared.increment}",
        )
        value = _last_issued(observed, declared.start)
    conds = conditions([ready, applied], prev_conds, ref.generation, now)
    status: Status = {
        "observedGeneration": ref.generation,
        "conditions": conds,
        "phase": phase_of(conds),
    }
    if value is not None:
        status["value"] = value
    return Plan(tuple(actions), status)


def _last_issued(observed: SequenceObserved, start: int) -> int | None:
    """The last number issued (status.value), or None before the first: the coordinator
    reports the next value, and the sequence only moves in whole increments from its start."""
    if observed.next_value == start or observed.increment < 1:
        return None
    return observed.next_value - observed.increment


def finalize_sequence(
    ref: ObjectRef, observed: SequenceObserved | Unavailable
) -> tuple[Action, ...] | Unavailable:
    """Deleting a Sequence drops its record only: the coordinator has no delete for a
    sequence, on purpose (a re-created one would hand out its old values again), so the
    sequence stays, unused, and a Sequence created again under this name adopts it."""
    if isinstance(observed, Unavailable):
        return observed
    return (DeleteRecord(ref.config_key),)


# --- ConcordCluster ----------------------------------------------------------------------------


Reachability = Literal["Leader", "Reachable", "Unreachable"]


@dataclass(frozen=True, slots=True)
class MemberView:
    id: int
    name: str
    address: str
    voter: bool
    reachability: Reachability
    """As the leader sees it (an unknown reachability counts as Unreachable)."""
    match_index: int
    peer_url: str = ""


@dataclass(frozen=True, slots=True)
class ClusterObserved:
    members: tuple[MemberView, ...]
    term: int
    commit_index: int
    endpoints: tuple[str, ...]
    """The coordinator endpoints this operator is configured with."""


def reconcile_cluster(
    ref: ObjectRef,
    spec: Mapping[str, Any],
    observed: ClusterObserved | Unavailable,
    previous: Mapping[str, Any],
    now: dt.datetime,
    *,
    extra: Sequence[Cond] = (),
) -> Plan:
    """Swarm's `docker node ls` for the coordinator this operator serves: members with
    Leader / Reachable / Unreachable, term, commit index, lag, quorum health. `extra`: more
    conditions to show (Membership, from `membership.plan_membership`)."""
    if isinstance(observed, Unavailable):
        # The counts stay as last seen (the CRD keeps quorum consistent with them); Ready
        # says the coordinator cannot be asked now.
        return _unavailable(ref, previous, observed, now)
    wanted = set(spec.get("endpoints") or ())
    if wanted and not wanted & set(observed.endpoints):
        return _failed(
            ref,
            previous,
            OTHER_CLUSTER,
            f"this operator serves the coordinator at {', '.join(observed.endpoints)}; "
            f"spec.endpoints names another one ({', '.join(sorted(wanted))})",
            now,
        )
    members = sorted(observed.members, key=lambda m: m.id)
    voters = [m for m in members if m.voter]
    reachable = sum(m.reachability != "Unreachable" for m in voters)
    majority = len(voters) // 2 + 1
    if reachable * 2 <= len(voters):
        quorum = "Lost"
    elif reachable < len(voters):
        quorum = "Degraded"
    else:
        quorum = "Healthy"
    leader = next((m.name for m in members if m.reachability == "Leader"), "")
    ready = (
        Cond(READY, "False", QUORUM_LOST, f"{reachable} of {len(voters)} voters reachable")
        if quorum == "Lost"
        else Cond(
            READY,
            "True",
            f"Quorum{quorum}",
            f"{reachable} of {len(voters)} voters reachable; leader {leader or 'unknown'}",
        )
    )
    conds = conditions([ready, *extra], list(previous.get("conditions") or []), ref.generation, now)
    status: Status = {
        "leader": leader,
        "term": observed.term,
        "commitIndex": observed.commit_index,
        "voters": len(voters),
        "reachable": reachable,
        "quorum": quorum,
        "faultTolerance": max(0, reachable - majority),
        "memberSummary": ",".join(f"{m.name}:{m.reachability}" for m in members),
        "members": [
            {
                "id": m.id,
                "name": m.name,
                "address": m.address,
                "role": "Voter" if m.voter else "Learner",
                "managerStatus": m.reachability,
                "matchIndex": m.match_index,
                "lag": max(0, observed.commit_index - m.match_index),
            }
            for m in members
        ],
        "observedGeneration": ref.generation,
        "conditions": conds,
        "phase": phase_of(conds),
    }
    return Plan((), status)


# --- helpers -----------------------------------------------------------------------------------


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing `new` over `old` would change anything (a write that changes nothing
    is skipped: the API server would bump resourceVersion for it anyway)."""
    return any(old.get(k) != v for k, v in new.items())


def _name_problem(ref: ObjectRef) -> str:
    size = len(ref.coordinator_name.encode())
    if size > MAX_NAME_BYTES:
        return (
            f"the coordinator name {ref.coordinator_name[:40]!r}... is {size} bytes and the "
            f"coordinator's limit is {MAX_NAME_BYTES}: use a shorter name"
        )
    return ""


def _unavailable(
    ref: ObjectRef, previous: Mapping[str, Any], observed: Unavailable, now: dt.datetime
) -> Plan:
    """Ready=False, everything else as it was: nothing is deleted or rewritten while the
    coordinator cannot be asked, and the plan asks to be run again once it is back."""
    prev_conds = list(previous.get("conditions") or [])
    kept = [
        Cond(c["type"], c["status"], c.get("reason", ""), c.get("message", ""))
        for c in prev_conds
        if c.get("type") not in (READY, None)
    ]
    conds = conditions(
        [Cond(READY, "False", UNAVAILABLE, observed.message), *kept],
        prev_conds,
        ref.generation,
        now,
    )
    return Plan((), {"conditions": conds, "phase": phase_of(conds)}, retry=True)


def _failed(
    ref: ObjectRef, previous: Mapping[str, Any], reason: str, message: str, now: dt.datetime
) -> Plan:
    prev_conds = list(previous.get("conditions") or [])
    conds = conditions(
        [
            Cond(READY, "False", reason, message),
            Cond(SPEC_APPLIED, "False", reason, message),
        ],
        prev_conds,
        ref.generation,
        now,
    )
    return Plan(
        (),
        {"observedGeneration": ref.generation, "conditions": conds, "phase": phase_of(conds)},
    )


def _holder_status(h: Holder, now: dt.datetime) -> dict[str, Any]:
    out: dict[str, Any] = {"identity": h.identity, "fencingToken": h.fencing_token}
    if h.acquired_ms:
        out["acquiredAt"] = _rfc3339(dt.datetime.fromtimestamp(h.acquired_ms / 1000, dt.UTC))
    if h.expires_in_ms is not None:
        out["expiresAt"] = _rfc3339(now + dt.timedelta(milliseconds=h.expires_in_ms))
    return out


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def parse_record(raw: bytes | None) -> Mapping[str, Any] | None:
    """A configuration record read back from the KV store (None if absent or unreadable: an
    unreadable record is rewritten, as if absent)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
