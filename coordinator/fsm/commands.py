"""The commands the state machine applies, and their binary codec.

A client request becomes one log entry whose data is an `Envelope`:

    version u8 | client_id u64 | seq u64 | leader_time_ms u64 | tag u8 | body

- `version` is the layout of everything after it. A decoder that meets a version it does not
  know refuses the entry (`CommandDecodeError`) rather than guess; a new layout gets a new
  version and the decoders keep reading the old ones for as long as old entries can be in a
  log or a snapshot.
- `client_id`/`seq` are the session key: a retried proposal carries the same pair and is
  applied once (see `coordinator.raft.sessions`). `client_id` 0 means "no session": the
  leader's own `ExpireLeases` ticks use it, and so may any command whose repetition is
  harmless.
- `leader_time_ms` is the proposing leader's clock, read once when it proposed the entry. It is
  the state machine's only source of time (see `machine.py` for how it becomes the replicated
  clock); the state machine itself never reads a clock.
- `tag` selects the command class (one frozen, slotted dataclass each, `TAG` below); the body
  is that class's fields in declaration order. Tags are never reused.

Each field's annotation is its wire type (`U64`, `Blob`, `Text`, `OptBlob`, lists of those, see
`_codec`): fixed-width big-endian integers, u32-length-prefixed byte strings (UTF-8 for names)
and presence-prefixed optionals, through `_wire`. `@declared` derives a class's encoder and
decoder from those annotations at import, so the declaration is the only place a command's
layout is written. Never pickle, never a dict or JSON blob: the codec is the schema, a test
round-trips every command, and `tests/fsm/command_vectors.json` pins the bytes of every one.

Decoding checks *shape* only (lengths, tags, enum values, booleans, no trailing bytes). Whether
a well-formed command makes sense (an empty key, a TTL of a week, a lease that does not exist)
is the state machine's call, answered with an `FsmError` the client can act on.
"""

from __future__ import annotations

import enum
import itertools
import struct
from dataclasses import dataclass
from typing import Annotated, ClassVar

from ._codec import (
    I64,
    U32,
    U64,
    Blob,
    Bool,
    OptBlob,
    Text,
    Wire,
    checked,
    declared,
    enum_of,
    list_of,
    one_of,
)
from ._wire import DecodeError, Reader, Writer

ENVELOPE_VERSION = 1
"""The layout written by `Envelope.encode`; the only one `Envelope.decode` accepts today."""


class CommandDecodeError(DecodeError):
    """Entry data that is not a command this version understands: garbage, truncation, an
    unknown version or tag. The state machine answers such an entry with INVALID_ARGUMENT."""


class CompareTarget(enum.IntEnum):
    """What a `Compare` reads. Missing keys read as 0 (and VALUE compares as false)."""

    VALUE = 1
    VERSION = 2
    CREATE_REVISION = 3
    MOD_REVISION = 4
    LEASE = 5
    LOCK_TOKEN = 6
    """`key` names a lock (UTF-8); EQUAL holds iff `value` is a current holder's fencing token
    (Chubby's CheckSequencer; with a semaphore, any holder's), NOT_EQUAL is its negation, and
    LESS/GREATER compare with the newest holder's token (0 while nobody holds it)."""


class CompareOp(enum.IntEnum):
    EQUAL = 1
    NOT_EQUAL = 2
    LESS = 3
    """The key's current value is less than `Compare.value`."""
    GREATER = 4


@dataclass(frozen=True, slots=True)
class Compare:
    """One guard of a `Txn`: `<target of key> <op> value`.

    Invariant: `value` is bytes iff `target` is VALUE; an int otherwise.
    """

    key: bytes
    target: CompareTarget
    op: CompareOp
    value: bytes | int


_TARGET = enum_of(CompareTarget)
_OP = enum_of(CompareOp)


def _write_compare(w: Writer, c: Compare) -> None:
    w.blob(c.key)
    w.u8(c.target)
    w.u8(c.op)
    if c.target is CompareTarget.VALUE:
        if not isinstance(c.value, bytes):
            raise TypeError(f"a VALUE compare needs bytes, got {type(c.value).__name__}")
        w.blob(c.value)
    else:
        if not isinstance(c.value, int):
            raise TypeError(f"a {c.target.name} compare needs an int, got bytes")
        w.u64(c.value)


def _read_compare(r: Reader) -> Compare:
    key = r.blob()
    target = _TARGET.read(r)
    op = _OP.read(r)
    value: bytes | int = r.blob() if target is CompareTarget.VALUE else r.u64()
    return Compare(key, target, op, value)


_COMPARES = list_of(Wire(_write_compare, _read_compare))
"""`Compare` is written by hand: the layout of `value` depends on `target`."""


# --- KV --------------------------------------------------------------------------------------


@declared
@dataclass(frozen=True, slots=True)
class Put:
    """Set `key` to `value`; `lease` != 0 attaches it (deleted when the lease ends), 0 detaches.
    `prev_kv` asks for the previous key-value in the result."""

    TAG: ClassVar[int] = 1
    key: Blob
    value: Blob
    lease: U64 = 0
    prev_kv: Bool = False


@declared
@dataclass(frozen=True, slots=True)
class Delete:
    """Delete `key`, or every key in [key, range_end) (etcd's convention: range_end b"\\0"
    means every key >= key)."""

    TAG: ClassVar[int] = 2
    key: Blob
    range_end: OptBlob = None


@declared
@dataclass(frozen=True, slots=True)
class Range:
    """Read `key` or [key, range_end) inside a `Txn`; `limit` 0 means no limit. (Plain reads
    are queries on the state machine and never go through the log.)"""

    TAG: ClassVar[int] = 3
    key: Blob
    range_end: OptBlob = None
    limit: U32 = 0


TxnOp = Put | Delete | Range

_TXN_OPS: Wire[tuple[TxnOp, ...]] = list_of(
    one_of(
        (Put, Delete, Range), "unknown txn op tag {tag} (a txn holds Put, Delete and Range only)"
    )
)


@declared
@dataclass(frozen=True, slots=True)
class Txn:
    """If every compare holds, run `success`, else `failure`; atomically, at one revision."""

    TAG: ClassVar[int] = 4
    compares: Annotated[tuple[Compare, ...], _COMPARES] = ()
    success: Annotated[tuple[TxnOp, ...], _TXN_OPS] = ()
    failure: Annotated[tuple[TxnOp, ...], _TXN_OPS] = ()


# --- leases ----------------------------------------------------------------------------------


@declared
@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A new lease of `ttl_ms`; `id` 0 lets the state machine pick the id."""

    TAG: ClassVar[int] = 10
    ttl_ms: U64
    id: U64 = 0


@declared
@dataclass(frozen=True, slots=True)
class OwnedLeaseGrant:
    """`LeaseGrant` for a workload: the lease also records the Kubernetes namespace that owns
    it, so the service can refuse keep-alives, revokes and reads of it from other namespaces
    (`coordinator.server._policy`). A tag of its own rather than a new field on `LeaseGrant`,
    so entries written before it decode as they always did. `owner` is never empty."""

    TAG: ClassVar[int] = 14
    ttl_ms: U64
    id: U64
    owner: Text


@declared
@dataclass(frozen=True, slots=True)
class LeaseKeepAlive:
    """Reset the lease's deadline to now + its TTL."""

    TAG: ClassVar[int] = 11
    id: U64


@declared
@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    """End the lease now: its keys are deleted, its locks released, its elections resigned."""

    TAG: ClassVar[int] = 12
    id: U64


@declared
@dataclass(frozen=True, slots=True)
class ExpireLeases:
    """Proposed by the leader periodically: end every lease whose deadline has passed (by the
    envelope's time), and grant locks whose lock-delay is over."""

    TAG: ClassVar[int] = 13


def _ascending_and_distinct(ids: tuple[int, ...]) -> bool:
    return all(a < b for a, b in itertools.pairwise(ids))


_ASCENDING_IDS = checked(
    list_of(Wire(Writer.u64, Reader.u64)),
    _ascending_and_distinct,
    "expired lease ids must be ascending and distinct",
)


@declared
@dataclass(frozen=True, slots=True)
class ExpireLeaseIds:
    """Proposed by the leader's lessor (`coordinator.fsm.lessor`): end exactly these leases
    (those still there), whose deadline in the leader's memory passed, and grant locks whose
    lock-delay is over. The leader keeps renewals in memory, so the replicated deadlines no
    longer say which leases are due: the leader names them. `ExpireLeases` keeps applying as
    before, for logs written by older versions."""

    TAG: ClassVar[int] = 15
    ids: Annotated[tuple[int, ...], _ASCENDING_IDS]
    """Ascending, no duplicates: the order the clean-up runs in."""


# --- locks and elections ---------------------------------------------------------------------


@declared
@dataclass(frozen=True, slots=True)
class LockAcquire:
    """Hold lock `name` under `lease`, or queue for it (FIFO). `max_holders` > 1 makes it a
    semaphore. `lock_delay_ms`: if this holder's lease *expires* while holding, nobody is
    granted the lock for that long. `waiter_id` is the server's handle for the waiting request,
    echoed in the `LockGranted` effect when the grant comes later."""

    TAG: ClassVar[int] = 20
    name: Text
    lease: U64
    max_holders: U32 = 1
    lock_delay_ms: U64 = 0
    waiter_id: U64 = 0


@declared
@dataclass(frozen=True, slots=True)
class LockRelease:
    """Release lock `name` held by `lease`, or withdraw `lease` from its queue."""

    TAG: ClassVar[int] = 21
    name: Text
    lease: U64


@declared
@dataclass(frozen=True, slots=True)
class Campaign:
    """Become leader of `election` with `value` under `lease`, or queue (FIFO) until then."""

    TAG: ClassVar[int] = 30
    election: Text
    lease: U64
    value: Blob


@declared
@dataclass(frozen=True, slots=True)
class Proclaim:
    """The current leader (and only it) publishes a new value."""

    TAG: ClassVar[int] = 31
    election: Text
    lease: U64
    value: Blob


@declared
@dataclass(frozen=True, slots=True)
class Resign:
    """Step down as leader (the next candidate wins), or withdraw a pending campaign."""

    TAG: ClassVar[int] = 32
    election: Text
    lease: U64


# --- sequences -------------------------------------------------------------------------------


@declared
@dataclass(frozen=True, slots=True)
class SequenceCreate:
    """A sequence whose first value is `start`, stepping by `increment`."""

    TAG: ClassVar[int] = 40
    name: Text
    start: I64 = 1
    increment: I64 = 1


@declared
@dataclass(frozen=True, slots=True)
class SequenceNext:
    """Take the next `count` values as one contiguous block."""

    TAG: ClassVar[int] = 41
    name: Text
    count: U32 = 1


# --- members ---------------------------------------------------------------------------------


@declared
@dataclass(frozen=True, slots=True)
class MemberUpsert:
    """Record (or update) a member's metadata. Raft membership itself changes through CONF
    entries; this is the directory the CLI and operator read names and URLs from."""

    TAG: ClassVar[int] = 50
    id: U64
    name: Text
    peer_url: Text
    client_url: Text


@declared
@dataclass(frozen=True, slots=True)
class MemberRemove:
    TAG: ClassVar[int] = 51
    id: U64


@declared
@dataclass(frozen=True, slots=True)
class MemberReadmit:
    """Take a removed id off the never-again list, so that it may be listed and added again.
    Only for a member that comes back as itself: the same identity and, if it kept any, its
    own data (a StatefulSet ordinal scaled down and up again, whose earlier pod is gone by
    the StatefulSet's one-pod-per-ordinal rule). The server proposes it only when asked
    explicitly (MemberAddLearner with `readmit`); a no-op for an id never removed."""

    TAG: ClassVar[int] = 55
    id: U64


# --- join tokens -----------------------------------------------------------------------------


@declared
@dataclass(frozen=True, slots=True)
class JoinTokenAdd:
    """Accept a new join token: its public id and the SHA-256 of its secret (never the
    secret). `created_ms` is the proposing member's wall clock, for people to read."""

    TAG: ClassVar[int] = 52
    id: Text
    secret_sha256: Blob
    created_ms: U64


@declared
@dataclass(frozen=True, slots=True)
class JoinTokenRevoke:
    """Stop accepting join token `id` (it stays listed as revoked at `revoked_ms`)."""

    TAG: ClassVar[int] = 53
    id: Text
    revoked_ms: U64


# --- sealing keys ----------------------------------------------------------------------------


@declared
@dataclass(frozen=True, slots=True)
class SealingKeyAdd:
    """Add a sealing key pair made by the proposer, if the newest key is still `after` (b"":
    none yet); see `sealing_keys.py`. `created_ms` is the proposer's wall clock."""

    TAG: ClassVar[int] = 54
    id: Blob
    created_ms: U64
    private_key_der: Blob
    certificate_pem: Blob
    after: Blob = b""

    def __repr__(self) -> str:  # never print the private key
        return f"SealingKeyAdd(id={self.id.hex()}, after={self.after.hex()})"


@declared
@dataclass(frozen=True, slots=True)
class Noop:
    """Changes nothing; a client may propose it as a barrier (it commits after all before)."""

    TAG: ClassVar[int] = 63


Command = (
    Put
    | Delete
    | Txn
    | LeaseGrant
    | OwnedLeaseGrant
    | LeaseKeepAlive
    | LeaseRevoke
    | ExpireLeases
    | ExpireLeaseIds
    | LockAcquire
    | LockRelease
    | Campaign
    | Proclaim
    | Resign
    | SequenceCreate
    | SequenceNext
    | MemberUpsert
    | MemberRemove
    | MemberReadmit
    | JoinTokenAdd
    | JoinTokenRevoke
    | SealingKeyAdd
    | Noop
)

COMMAND_TYPES: tuple[type[Command], ...] = (
    Put,
    Delete,
    Txn,
    LeaseGrant,
    OwnedLeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    ExpireLeases,
    ExpireLeaseIds,
    LockAcquire,
    LockRelease,
    Campaign,
    Proclaim,
    Resign,
    SequenceCreate,
    SequenceNext,
    MemberUpsert,
    MemberRemove,
    MemberReadmit,
    JoinTokenAdd,
    JoinTokenRevoke,
    SealingKeyAdd,
    Noop,
)
"""Every top-level command class (`Range` is a txn op only)."""

_HEADER = struct.Struct(">BQQQ")
"""The envelope's version, client_id, seq and leader_time_ms, packed in one call on encode."""
_IDS = struct.Struct(">QQQ")
"""client_id, seq and leader_time_ms, unpacked in one call on decode when all are there (a
truncated header is read field by field, so that the error names the field it ends in)."""

_COMMAND: Wire[Command] = one_of(COMMAND_TYPES, "unknown command tag {tag}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One client command as it travels in a log entry (see the module docstring)."""

    client_id: int
    """The client's session id; 0 = no session (no exactly-once, e.g. the leader's ticks)."""
    seq: int
    """Strictly increasing per client session; a retry reuses it."""
    leader_time_ms: int
    """The proposing leader's clock when it proposed this; monotonic within one term."""
    command: Command

    def encode(self) -> bytes:
        w = Writer()
        try:
            w.u64s(_HEADER, ENVELOPE_VERSION, self.client_id, self.seq, self.leader_time_ms)
            _COMMAND.write(w, self.command)
        except struct.error as exc:
            raise ValueError(
                f"cannot encode {self!r}: an integer is out of range ({exc})"
            ) from None
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        r = Reader(data, "command envelope", CommandDecodeError)
        version = r.u8()
        if version != ENVELOPE_VERSION:
            raise r.fail(
                f"unknown envelope version {version} (this build reads version {ENVELOPE_VERSION}"
                "; upgrade every member before proposing commands of a newer version)"
            )
        ids = r.fixed(_IDS)
        client_id, seq, leader_time_ms = (r.u64(), r.u64(), r.u64()) if ids is None else ids
        command = _COMMAND.read(r)
        r.finish()
        return cls(client_id, seq, leader_time_ms, command)
