"""What the client's calls return: frozen dataclasses, never protobuf messages.

Why. A program using the library should not need the generated `concord_pb2` module (its
types are untyped for mypy, its enums are ints, and an absent message field reads as an empty
default). These types are typed, immutable and hashable, print readably, and name their
units; each has a `_from_pb` constructor that is the only place a wire message is read.
Field names follow the wire's where they mean the same (`mod_revision`, `match_index`), so
reading code from either side is easy; enums become short lowercase strings (`"voter"`,
`"leader"`) or `EventType`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from coordinator.api.v1 import concord_pb2 as pb

from ._errors import InvalidArgument

_PbMessage = Any  # the generated messages are untyped


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key's value and its history numbers (revisions are the cluster's KV revisions)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    """How many times the key was written since it was created (1 after the first put)."""
    lease: int
    """The lease the key lives on (0: none)."""

    @classmethod
    def _from_pb(cls, kv: _PbMessage) -> KeyValue:
        return cls(
            bytes(kv.key),
            bytes(kv.value),
            int(kv.create_revision),
            int(kv.mod_revision),
            int(kv.version),
            int(kv.lease),
        )


class EventType(enum.Enum):
    """What a watch event reports."""

    PUT = "put"
    DELETE = "delete"
    LOCK = "lock"
    UNLOCK = "unlock"
    ELECTION = "election"
    SEQUENCE = "sequence"
    MEMBER = "member"


_EVENT_TYPES: dict[int, EventType] = {
    pb.Event.PUT: EventType.PUT,
    pb.Event.DELETE: EventType.DELETE,
    pb.Event.LOCK: EventType.LOCK,
    pb.Event.UNLOCK: EventType.UNLOCK,
    pb.Event.ELECTION: EventType.ELECTION,
    pb.Event.SEQUENCE: EventType.SEQUENCE,
    pb.Event.MEMBER: EventType.MEMBER,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch. For a key: its new value (or, for a delete, the key).
    For a lock, election, sequence or member: `name`, and in `kv` what the event carries
    (a lock's lease and fencing token as `lease` and `version`, a sequence's value...)."""

    type: EventType
    kv: KeyValue
    name: str
    revision: int

    @classmethod
    def _from_pb(cls, e: _PbMessage) -> Event:
        return cls(
            _EVENT_TYPES.get(int(e.type), EventType.PUT),
            KeyValue._from_pb(e.kv),
            str(e.name),
            int(e.revision),
        )


@dataclass(frozen=True, slots=True)
class TxnOpResult:
    """What one operation of a transaction did: `kind` is "put", "delete" or "range"."""

    kind: str
    revision: int = 0
    """The revision a put or delete made (0 for a range)."""
    deleted: int = 0
    kvs: tuple[KeyValue, ...] = ()
    """What a range read found."""

    @classmethod
    def _from_pb(cls, r: _PbMessage) -> TxnOpResult:
        kind = str(r.WhichOneof("result") or "")
        if kind == "put":
            return cls("put", revision=int(r.put.header.revision))
        if kind == "delete":
            return cls(
                "delete", revision=int(r.delete.header.revision), deleted=int(r.delete.deleted)
            )
        return cls("range", kvs=tuple(KeyValue._from_pb(kv) for kv in r.range.kvs))


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's outcome: whether its compares held (so `success` ran, else
    `failure`), and one result per operation that ran, in order."""

    succeeded: bool
    revision: int
    results: tuple[TxnOpResult, ...]

    @classmethod
    def _from_pb(cls, resp: _PbMessage) -> TxnResult:
        return cls(
            bool(resp.succeeded),
            int(resp.header.revision),
            tuple(TxnOpResult._from_pb(r) for r in resp.results),
        )


_ROLES: dict[int, str] = {pb.Member.VOTER: "voter", pb.Member.LEARNER: "learner"}
_REACH: dict[int, str] = {
    pb.Member.UNKNOWN: "unknown",
    pb.Member.LEADER: "leader",
    pb.Member.REACHABLE: "reachable",
    pb.Member.UNREACHABLE: "unreachable",
}


@dataclass(frozen=True, slots=True)
class Member:
    """A member of the cluster as the answering member knows it."""

    id: int
    name: str
    peer_url: str
    client_url: str
    """"" if the member directory has no client address for it."""
    role: str
    """"voter" or "learner"."""
    status: str
    """As the leader sees it: "leader", "reachable", "unreachable" or "unknown"."""
    match_index: int

    @classmethod
    def _from_pb(cls, m: _PbMessage) -> Member:
        return cls(
            int(m.id),
            str(m.name),
            str(m.peer_url),
            str(m.client_url),
            _ROLES.get(int(m.role), "voter"),
            _REACH.get(int(m.status), "unknown"),
            int(m.match_index),
        )


@dataclass(frozen=True, slots=True)
class MemberList:
    members: tuple[Member, ...]
    leader: int
    """The leader's member id (0: none known)."""
    member_id: int
    """The member that answered."""
    term: int = 0
    """The answering member's Raft term."""

    @classmethod
    def _from_pb(cls, resp: _PbMessage) -> MemberList:
        return cls(
            tuple(Member._from_pb(m) for m in resp.members),
            int(resp.leader),
            int(resp.header.member_id),
            int(resp.header.raft_term),
        )


@dataclass(frozen=True, slots=True)
class Lock:
    name: str
    lease: int
    fencing_token: int


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    id: int
    ttl_ms: int
    """The TTL granted (fixed at grant)."""
    remaining_ms: int
    """How long until it expires unless kept alive (0: expiring now)."""


@dataclass(frozen=True, slots=True)
class Leadership:
    """An election's leader: the key Campaign returned (for Proclaim and Resign), and the
    value it published."""

    election: str
    lease: int
    fencing_token: int
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class LockHolder:
    """One holder of a lock (or semaphore): its lease, the grant's fencing token, and the
    leader's clock when it was granted (ms since the epoch)."""

    lease: int
    fencing_token: int
    acquired_ms: int


@dataclass(frozen=True, slots=True)
class LockInfo:
    """Who holds a lock and how many wait (holders in grant order; none: free)."""

    name: str
    holders: tuple[LockHolder, ...]
    waiters: int

    @classmethod
    def _from_pb(cls, name: str, resp: _PbMessage) -> LockInfo:
        holders = tuple(
            LockHolder(int(h.lease), int(h.fencing_token), int(h.acquired_ms)) for h in resp.holders
        )
        return cls(name, holders, int(resp.waiters))


@dataclass(frozen=True, slots=True)
class SequenceInfo:
    """A sequence's next value (what `next` would return first) and its increment."""

    name: str
    next: int
    increment: int


@dataclass(frozen=True, slots=True)
class Status:
    """The answering member's Raft view (for `concordctl status`, readiness checks)."""

    member_id: int
    leader: int
    """0: no leader known."""
    role: str
    term: int
    revision: int
    commit_index: int
    applied_index: int
    """applied_index <= commit_index."""
    last_index: int
    last_term: int
    snapshot_index: int
    locked: bool
    """Autolock: the member waits for its unlock key."""
    voters: tuple[int, ...]
    learners: tuple[int, ...]

    @classmethod
    def _from_pb(cls, s: _PbMessage) -> Status:
        return cls(
            int(s.header.member_id),
            int(s.leader),
            str(s.role),
            int(s.header.raft_term),
            int(s.header.revision),
            int(s.commit_index),
            int(s.applied_index),
            int(s.last_index),
            int(s.last_term),
            int(s.snapshot_index),
            bool(s.locked),
            tuple(int(v) for v in s.voters),
            tuple(int(v) for v in s.learners),
        )


@dataclass(frozen=True, slots=True)
class JoinTokenInfo:
    """A join token's public part: its id and times (wall clock of the member, ms)."""

    id: str
    created_ms: int
    revoked_ms: int
    """0: still valid."""

    @classmethod
    def _from_pb(cls, info: _PbMessage) -> JoinTokenInfo:
        return cls(str(info.id), int(info.created_ms), int(info.revoked_ms))


@dataclass(frozen=True, slots=True)
class NewJoinToken:
    token: str
    """The secret token: shown this once, stored nowhere (the cluster keeps its hash)."""
    info: JoinTokenInfo

    def __repr__(self) -> str:
        return f"NewJoinToken(token=<secret>, info={self.info!r})"


@dataclass(frozen=True, slots=True)
class AutolockStatus:
    member_id: int
    member_name: str
    phase: str
    """starting | locked | running | stopping"""
    locked: bool
    autolock: bool


@dataclass(frozen=True, slots=True)
class AutolockChange:
    member_id: int
    autolock: bool
    """The state now."""
    changed: bool
    """False: it already was as asked."""
    unlock_key: str
    """Set iff autolock was just turned on: returned once, stored nowhere."""

    def __repr__(self) -> str:
        key = "<secret>" if self.unlock_key else "''"
        return (
            f"AutolockChange(member_id={self.member_id}, autolock={self.autolock}, "
            f"changed={self.changed}, unlock_key={key})"
        )


@dataclass(frozen=True, slots=True)
class UnlockKeyRotation:
    member_id: int
    unlock_key: str
    """The new key; the previous one stops working at once."""

    def __repr__(self) -> str:
        return f"UnlockKeyRotation(member_id={self.member_id}, unlock_key=<secret>)"


@dataclass(frozen=True, slots=True)
class DataKeyRotation:
    member_id: int
    key_id: int
    """The new data key."""
    snapshot_index: int
    """The snapshot sealed under it; the log starts after it."""
    retired_key_ids: tuple[int, ...]


# --- transaction inputs ----------------------------------------------------------------------

_TARGETS = {
    "value": pb.Compare.VALUE,
    "version": pb.Compare.VERSION,
    "create_revision": pb.Compare.CREATE_REVISION,
    "mod_revision": pb.Compare.MOD_REVISION,
    "lease": pb.Compare.LEASE,
    "lock_token": pb.Compare.LOCK_TOKEN,
}
_OPS = {
    "=": pb.Compare.EQUAL,
    "!=": pb.Compare.NOT_EQUAL,
    "<": pb.Compare.LESS,
    ">": pb.Compare.GREATER,
}


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: `target` of `key` `op` `operand`.

    target: "value" (operand: bytes), or a number (operand: int): "version" (0: the key does
    not exist), "create_revision", "mod_revision", "lease", or "lock_token" (`key` names a
    lock; its current fencing token: a write guarded by it succeeds only for the holder).
    op: "=", "!=", "<" or ">". A malformed compare raises InvalidArgument when made."""

    key: bytes
    target: str
    op: str
    operand: bytes | int

    def __post_init__(self) -> None:
        if self.target not in _TARGETS:
            raise InvalidArgument(
                f"compare target {self.target!r}: use one of {', '.join(_TARGETS)}"
            )
        if self.op not in _OPS:
            raise InvalidArgument(f"compare op {self.op!r}: use one of {', '.join(_OPS)}")
        wants_bytes = self.target == "value"
        if wants_bytes != isinstance(self.operand, bytes):
            kind = "bytes" if wants_bytes else "an int"
            raise InvalidArgument(f"compare of {self.target}: the operand must be {kind}")

    def _to_pb(self) -> _PbMessage:
        target, op = _TARGETS[self.target], _OPS[self.op]
        if isinstance(self.operand, bytes):
            return pb.Compare(key=self.key, target=target, op=op, value=self.operand)
        return pb.Compare(key=self.key, target=target, op=op, number=self.operand)


@dataclass(frozen=True, slots=True)
class Put:
    """A transaction operation: set `key` (on `lease`, 0: none)."""

    key: bytes
    value: bytes
    lease: int = 0

    def _to_pb(self) -> _PbMessage:
        return pb.TxnOp(put=pb.PutRequest(key=self.key, value=self.value, lease=self.lease))


@dataclass(frozen=True, slots=True)
class Delete:
    """A transaction operation: delete `key` (or [key, range_end))."""

    key: bytes
    range_end: bytes = b""

    def _to_pb(self) -> _PbMessage:
        return pb.TxnOp(delete=pb.DeleteRequest(key=self.key, range_end=self.range_end))


@dataclass(frozen=True, slots=True)
class Get:
    """A transaction operation: read `key` (or [key, range_end)) at the transaction's
    revision."""

    key: bytes
    range_end: bytes = b""

    def _to_pb(self) -> _PbMessage:
        return pb.TxnOp(range=pb.RangeRequest(key=self.key, range_end=self.range_end))


TxnOp = Put | Delete | Get
"""What a transaction can do."""
