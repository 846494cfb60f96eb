"""What a workload identity may touch: namespace scoping, decided per RPC, without I/O.

A workload (a pod, by its ServiceAccount token: `coordinator.runtime.tokenreview`) lives in
one Kubernetes namespace NS, and everything it names must live under `k8s/NS/`: the prefix
the operator gives the Lease and Sequence CRs of NS (`concord_operator.reconcile`, CR NS/NAME
is the coordinator object `k8s/NS/NAME`), so the sidecar's lock `foo` in NS and the Lease CR
NS/foo are one and the same coordinator lock.

Two steps, both pure:

- `access_of(method, request)`: what one call would touch (`Access`): the names and key
  ranges it reads or writes, the leases it uses, whether it is cluster administration, the
  sealed value it opens. One small function per RPC, looked up by the full method name, so a
  new RPC is denied to workloads until someone writes its entry (`UNLISTED`).
- `Policy.decide(identity, access, lease_owner)`: None if allowed, else a `Denial` (a reason
  label for the metric and a message naming the identity, the verb and the object).

Rules. Names (locks, elections, sequences, keys) must start with one of the identity's
prefixes; a key range [key, end) must lie inside one ("every key >= key", end = "\\0", and
the whole keyspace never do). Reads may also reach the operator's records of the
namespace's CRs (`concord.dev/v1alpha1/{leases,sequences}/NS/`). Writes (a KV put or delete,
a transaction's put or delete ops) may not change the operator's own records under the
namespace's prefix, `k8s/NS/sealedsecrets/` (one per SealedSecret, `coordinator.sealing`):
a pod may read and watch its namespace's ciphertext records (the sidecar delivers them as
files), but one that rewrote them could swap a namespace-wide value of one name for another's
or delete a secret out from under its neighbours. Locks, elections and sequences of `k8s/NS/`
stay a pod's to take and draw: they are the very objects the Lease and Sequence CRs declare,
and the operator's bookkeeping of those CRs lives outside `k8s/`
(`concord.dev/v1alpha1/...`, readable only). Leases: a lease a
workload uses (keep-alive, revoke, TTL, or hangs a key, lock or campaign on) must be one its
namespace granted (the state machine keeps
the owner: `coordinator.fsm.leases`); a lease this member does not know yet is let through,
and the state machine answers NOT_FOUND (a lease id is only learnt from its Grant's answer,
which comes after the member applied it). Cluster administration (Cluster, Maintenance,
sealing key renewal) is never a workload's. Unseal: only values of its own namespace, sealed
strict or namespace-wide (the scope in the envelope's clear header; the unseal itself then
checks the binding cryptographically); cluster-wide values are the operator's.

Room for more. `Policy.grants` maps a ServiceAccount (`system:serviceaccount:NS:SA`) to
extra prefixes it may use, for cluster-wide grants later; nothing sets it yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator import sealing
from coordinator.api.v1 import concord_pb2 as pb
from coordinator.runtime.tokenreview import WorkloadIdentity

K8S_PREFIX = "k8s/"
OPERATOR_CONFIG_PREFIXES = ("concord.dev/v1alpha1/leases/", "concord.dev/v1alpha1/sequences/")
"""Where the operator records what the Lease and Sequence CRs of a namespace declared
(`concord_operator.reconcile.config_key`): a workload may read its own namespace's."""
OPERATOR_SEGMENTS = (b"sealedsecrets",)
"""KV segments under `k8s/NS/` that only the operator writes: `k8s/NS/sealedsecrets/NAME`
(`coordinator.sealing.sealed_record_key`). Workloads read them, never change them."""


def namespace_prefix(namespace: str) -> str:
    """The prefix of everything a workload of `namespace` may name (the operator's too)."""
    return f"{K8S_PREFIX}{namespace}/"


def operator_record_prefixes(namespace: str) -> tuple[bytes, ...]:
    """The operator's read-only KV prefixes inside `namespace`'s own prefix."""
    own = namespace_prefix(namespace).encode()
    return tuple(own + segment + b"/" for segment in OPERATOR_SEGMENTS)


@dataclass(frozen=True, slots=True)
class Touch:
    """One object a call names: a key, lock, election or sequence, or a key range."""

    kind: str
    name: bytes
    end: bytes | None = None
    """For a range: its end (exclusive; b"\\0": no end). None: just `name`."""
    write: bool = False
    """The call changes it (a put, a delete, a lock taken, a number drawn); False: it only
    reads it (a range, a watch, a compare, lock info), which may also reach the operator's
    records."""

    def __str__(self) -> str:
        text = self.name.decode("utf-8", "replace")
        if self.end is None:
            return f"{self.kind} {text!r}"
        end = "(no end)" if self.end == b"\0" else repr(self.end.decode("utf-8", "replace"))
        return f"{self.kind} range [{text!r}, {end})"


@dataclass(frozen=True, slots=True)
class Access:
    """What one call touches (`access_of`)."""

    verb: str
    """Service.Method, e.g. "Lock.Lock": the metric's label and the messages' verb."""
    touches: tuple[Touch, ...] = ()
    leases: tuple[int, ...] = ()
    admin: bool = False
    """Cluster administration: never a workload's."""
    unseal: pb.SealedValue | None = None
    """A sealed value the call would open (Unseal, ReEncrypt, ValidateSealed)."""
    scoped: bool = True
    """False: the call names no object a namespace could own (a watch of every key)."""


@dataclass(frozen=True, slots=True)
class Denial:
    reason: str
    """A label: namespace, admin, lease, unseal-scope, unscoped, unlisted."""
    message: str


def _key(kind: str, raw: bytes, end: bytes = b"", *, write: bool = False) -> Touch:
    return Touch(kind, raw, end or None, write)


def _put(key: bytes) -> Touch:
    return _key("key", key, write=True)


def _name(kind: str, text: str, *, write: bool = True) -> Touch:
    return Touch(kind, text.encode("utf-8"), None, write)


def _read(kind: str, text: str) -> Touch:
    return _name(kind, text, write=False)


def _range(r: pb.RangeRequest) -> Touch:
    return _key("key", r.key, r.range_end)


def _delete(r: pb.DeleteRequest) -> Touch:
    return _key("key", r.key, r.range_end, write=True)


def _txn(r: pb.TxnRequest) -> tuple[tuple[Touch, ...], tuple[int, ...]]:
    touches: list[Touch] = []
    leases: list[int] = []
    for c in r.compares:
        kind = "lock" if c.target == pb.Compare.LOCK_TOKEN else "key"
        touches.append(_key(kind, c.key))
    for op in (*r.success, *r.failure):
        which = op.WhichOneof("op")
        if which == "put":
            touches.append(_put(op.put.key))
            leases.append(op.put.lease)
        elif which == "delete":
            touches.append(_delete(op.delete))
        elif which == "range":
            touches.append(_range(op.range))
    return tuple(touches), tuple(leases)


def _txn_access(verb: str, r: pb.TxnRequest) -> Access:
    touches, leases = _txn(r)
    return Access(verb, touches, leases)


Rule = Callable[[str, Any], Access]

_RULES: dict[str, Rule] = {
    "KV.Range": lambda v, r: Access(v, (_range(r),)),
    "KV.Put": lambda v, r: Access(v, (_put(r.key),), (r.lease,)),
    "KV.Delete": lambda v, r: Access(v, (_delete(r),)),
    "KV.Txn": _txn_access,
    "Lease.Grant": lambda v, r: Access(v),
    "Lease.KeepAlive": lambda v, r: Access(v, leases=(r.id,)),
    "Lease.Revoke": lambda v, r: Access(v, leases=(r.id,)),
    "Lease.TimeToLive": lambda v, r: Access(v, leases=(r.id,)),
    "Lock.Lock": lambda v, r: Access(v, (_name("lock", r.name),), (r.lease,)),
    "Lock.Unlock": lambda v, r: Access(v, (_name("lock", r.name),), (r.lease,)),
    "Lock.CheckFence": lambda v, r: Access(v, (_read("lock", r.name),)),
    "Lock.Info": lambda v, r: Access(v, (_read("lock", r.name),)),
    "Election.Campaign": lambda v, r: Access(v, (_name("election", r.election),), (r.lease,)),
    "Election.Proclaim": lambda v, r: Access(
        v, (_name("election", r.leader.election),), (r.leader.lease,)
    ),
    "Election.Resign": lambda v, r: Access(
        v, (_name("election", r.leader.election),), (r.leader.lease,)
    ),
    "Election.Leader": lambda v, r: Access(v, (_read("election", r.election),)),
    "Election.Observe": lambda v, r: Access(v, (_read("election", r.election),)),
    "Sequence.Create": lambda v, r: Access(v, (_name("sequence", r.name),)),
    "Sequence.Next": lambda v, r: Access(v, (_name("sequence", r.name),)),
    "Sequence.Get": lambda v, r: Access(v, (_read("sequence", r.name),)),
    "Watch.Watch": lambda v, r: Access(
        v, (_key("key", r.key, r.range_end),), scoped=bool(r.key or r.range_end)
    ),
    # The calls inside are checked one by one (`PipelineService`).
    "Pipeline.Stream": lambda v, r: Access(v),
    "Secrets.GetSealingCertificate": lambda v, r: Access(v),
    "Secrets.RenewSealingKey": lambda v, r: Access(v, admin=True),
    "Secrets.Unseal": lambda v, r: Access(v, unseal=r.value),
    "Secrets.ReEncrypt": lambda v, r: Access(v, unseal=r.value),
}

PIPELINE_VERBS = {
    "range": "KV.Range",
    "put": "KV.Put",
    "delete": "KV.Delete",
    "txn": "KV.Txn",
    "sequence_next": "Sequence.Next",
    "lease_grant": "Lease.Grant",
    "lease_revoke": "Lease.Revoke",
    "lock": "Lock.Lock",
    "unlock": "Lock.Unlock",
    "check_fence": "Lock.CheckFence",
}
"""A Pipeline call's kind -> the RPC whose rule applies (`_pipeline.py` routes them so)."""

ADMIN_SERVICES = ("Cluster", "Maintenance")


def verb_of(method: str) -> str:
    """ "/concord.v1.Lock/Lock" -> "Lock.Lock"."""
    service, _, name = method.rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}.{name}"


def access_of(verb: str, request: Any) -> Access:  # noqa: ANN401 (a generated message)
    """What the call `verb` with `request` touches; unlisted RPCs are administration."""
    rule = _RULES.get(verb)
    if rule is None:
        return Access(verb, admin=True)
    return rule(verb, request)


def request_free(verb: str) -> bool:
    """Whether `verb` is decided without a request: the Pipeline stream (its calls are
    checked one by one) and unlisted RPCs (administration). Lease.KeepAlive is not: each of
    its messages is checked."""
    return verb == "Pipeline.Stream" or verb not in _RULES


def _within(touch: Touch, prefix: bytes) -> bool:
    if not touch.name.startswith(prefix):
        return False
    if touch.end is None:
        return True
    # [name, end) inside the prefix: end must not pass the first key after every prefixed key.
    if touch.end == b"\0":
        return False
    return touch.end <= _prefix_end(prefix)


def _overlaps(touch: Touch, prefix: bytes) -> bool:
    """Whether `touch` names any key that starts with `prefix`."""
    if touch.end is None:
        return touch.name.startswith(prefix)
    ends_after = touch.end == b"\0" or touch.end > prefix
    return ends_after and touch.name < _prefix_end(prefix)


def _operator_records_written(touch: Touch) -> bytes | None:
    """The operator's read-only prefix a write `touch` would change, or None. By shape, for
    every namespace (so a grant of another namespace's prefix does not reach its records
    either): a key `k8s/X/sealedsecrets/...`; a range within `k8s/X/` overlapping
    `k8s/X/sealedsecrets/`; a range crossing namespaces under `k8s/` (any of them may hold
    records)."""
    if not touch.write or touch.kind != "key":
        return None
    parts = touch.name.split(b"/", 2)
    namespace = parts[1].decode("utf-8", "replace") if len(parts) == 3 else None
    if namespace and parts[0] + b"/" == K8S_PREFIX.encode():
        own = namespace_prefix(namespace).encode()
        if touch.end is None or (touch.end != b"\0" and touch.end <= _prefix_end(own)):
            for prefix in operator_record_prefixes(namespace):
                if _overlaps(touch, prefix):
                    return prefix
            return None
    everything = K8S_PREFIX.encode()
    if touch.end is not None and _overlaps(touch, everything):
        return everything + b"*/" + OPERATOR_SEGMENTS[0] + b"/"
    return None


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with `prefix` ("k8s/a/" ->
    "k8s/a0"; the prefixes here never end in 0xff)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass(frozen=True)
class Policy:
    """Namespace scoping for workload identities (see the module doc)."""

    grants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Extra prefixes by ServiceAccount username (system:serviceaccount:NS:SA)."""

    def prefixes(self, who: WorkloadIdentity) -> tuple[str, ...]:
        return (namespace_prefix(who.namespace), *self.grants.get(who.username, ()))

    def read_prefixes(self, who: WorkloadIdentity) -> tuple[str, ...]:
        """What `who` may read: its prefixes and the operator's records of its CRs."""
        own = tuple(f"{p}{who.namespace}/" for p in OPERATOR_CONFIG_PREFIXES)
        return (*self.prefixes(who), *own)

    def decide(
        self,
        who: WorkloadIdentity,
        access: Access,
        lease_owner: Callable[[int], str | None],
    ) -> Denial | None:
        verb = access.verb
        if access.admin or verb.split(".", 1)[0] in ADMIN_SERVICES:
            return Denial(
                "admin",
                f"{who} may not call {verb}: cluster administration needs a client certificate "
                "of the cluster, not a workload token",
            )
        if not access.scoped:
            shown = " or ".join(repr(p) for p in self.read_prefixes(who))
            return Denial(
                "unscoped",
                f"{who} may not call {verb} on every key: name a key or range under {shown}",
            )
        for touch in access.touches:
            prefixes = self.prefixes(who) if touch.write else self.read_prefixes(who)
            if not any(_within(touch, p.encode("utf-8")) for p in prefixes):
                shown = " or ".join(repr(p) for p in prefixes)
                return Denial(
                    "namespace",
                    f"{who} may not {verb} {touch}: a workload of namespace "
                    f"{who.namespace!r} may only name objects under {shown}",
                )
            record = _operator_records_written(touch)
            if record is not None:
                shown = record.decode("utf-8", "replace")
                return Denial(
                    "read-only",
                    f"{who} may not {verb} {touch}: keys under {shown!r} are the operator's "
                    "records of the namespace's SealedSecrets; a workload may read and watch "
                    "them, not change them (change the SealedSecret instead)",
                )
        for lease in access.leases:
            if lease == 0:
                continue
            owner = lease_owner(lease)
            if owner is not None and owner != who.namespace:
                whose = f"namespace {owner!r}" if owner else "a cluster client"
                return Denial(
                    "lease",
                    f"{who} may not {verb} lease {lease}: it belongs to {whose}, not to "
                    f"namespace {who.namespace!r}",
                )
        if access.unseal is not None:
            return _unseal_denial(who, verb, access.unseal)
        return None


def _unseal_denial(who: WorkloadIdentity, verb: str, value: pb.SealedValue) -> Denial | None:
    target = f"sealed value {value.namespace}/{value.name}"
    if value.namespace != who.namespace:
        return Denial(
            "unseal-scope",
            f"{who} may not {verb} {target}: a workload opens only values of its own "
            f"namespace {who.namespace!r}",
        )
    try:
        scope = sealing.parse(value.ciphertext).scope
    except sealing.SealError:
        return None  # the service answers why it does not unseal (INVALID_ARGUMENT)
    if scope is sealing.Scope.CLUSTER_WIDE:
        return Denial(
            "unseal-scope",
            f"{who} may not {verb} {target}: it is sealed cluster-wide, which only the "
            "operator may open; seal it strict or namespace-wide for a workload",
        )
    return None
