"""What commands return, and the codec that saves a result in the session table.

A result must survive as bytes: the session table keeps each client's last response so a
retried proposal is answered without running it again, and that table travels in snapshots.
So every result is a frozen, slotted dataclass with a tag, encoded like the commands (see
`commands.py`), and a rejection (`FsmError`) has a tag of its own; `encode_outcome` /
`decode_outcome` turn either into bytes and back, exactly.

All revisions are the KV store's global revision after the command; `revision` on a result
that changed nothing is simply the current one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Self

from ._wire import DecodeError, Reader, Writer
from .errors import ErrorCode, FsmError

OUTCOME_VERSION = 1
_ERROR_TAG = 255


class KeyValue(NamedTuple):
    """One key as stored. Invariants: create_revision <= mod_revision; version >= 1 (number of
    puts since the key was created; a delete resets it); lease 0 = none.

    A named tuple, not a frozen dataclass like the results: every put makes one and a
    snapshot decode makes one per key, and a frozen dataclass's `__init__` sets each field
    through `object.__setattr__` (1.2 us against 0.4 us here; a third of decoding a
    million keys). Just as immutable, 8 bytes larger."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    def _write(self, w: Writer) -> None:
        w.blob(self.key)
        w.blob(self.value)
        w.u64s(KV_NUMBERS, self.create_revision, self.mod_revision, self.version, self.lease)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.blob(), r.blob(), r.u64(), r.u64(), r.u64(), r.u64())


KV_NUMBERS = struct.Struct(">QQQQ")
"""A KeyValue's create_revision, mod_revision, version and lease, as its encoding has them."""


def _write_opt_kv(w: Writer, kv: KeyValue | None) -> None:
    w.boolean(kv is not None)
    if kv is not None:
        kv._write(w)


def _read_opt_kv(r: Reader) -> KeyValue | None:
    return KeyValue._read(r) if r.boolean() else None


@dataclass(frozen=True, slots=True)
class PutResult:
    TAG: ClassVar[int] = 1
    revision: int
    prev_kv: KeyValue | None = None
    """The key before the put, if the Put asked for it and the key existed."""

    def _write(self, w: Writer) -> None:
        w.u64(self.revision)
        _write_opt_kv(w, self.prev_kv)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.u64(), _read_opt_kv(r))


@dataclass(frozen=True, slots=True)
class DeleteResult:
    TAG: ClassVar[int] = 2
    revision: int
    deleted: int
    """How many keys were deleted (0 leaves the revision unchanged)."""

    def _write(self, w: Writer) -> None:
        w.u64(self.revision)
        w.u64(self.deleted)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.u64(), r.u64())


@dataclass(frozen=True, slots=True)
class RangeResult:
    TAG: ClassVar[int] = 3
    revision: int
    kvs: tuple[KeyValue, ...] = ()
    """In key order, at most `limit` of them."""
    count: int = 0
    """How many keys matched in all (>= len(kvs))."""
    more: bool = False
    """True iff `limit` cut the answer short."""

    def _write(self, w: Writer) -> None:
        w.u64(self.revision)
        w.u32(len(self.kvs))
        for kv in self.kvs:
            kv._write(w)
        w.u64(self.count)
        w.boolean(self.more)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        revision = r.u64()
        kvs = tuple(KeyValue._read(r) for _ in range(r.count()))
        return cls(revision, kvs, r.u64(), r.boolean())


OpResult = PutResult | DeleteResult | RangeResult
_OP_RESULT_READERS: dict[int, Callable[[Reader], OpResult]] = {
    PutResult.TAG: PutResult._read,
    DeleteResult.TAG: DeleteResult._read,
    RangeResult.TAG: RangeResult._read,
}


@dataclass(frozen=True, slots=True)
class TxnResult:
    TAG: ClassVar[int] = 4
    revision: int
    succeeded: bool
    """True iff every compare held and the `success` branch ran."""
    responses: tuple[OpResult, ...] = ()
    """One per op of the branch that ran, in order."""

    def _write(self, w: Writer) -> None:
        w.u64(self.revision)
        w.boolean(self.succeeded)
        w.u32(len(self.responses))
        for res in self.responses:
            w.u8(res.TAG)
            res._write(w)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        revision, succeeded = r.u64(), r.boolean()
        responses: list[OpResult] = []
        for _ in range(r.count()):
            tag = r.u8()
            reader = _OP_RESULT_READERS.get(tag)
            if reader is None:
                raise r.fail(f"unknown txn response tag {tag}")
            responses.append(reader(r))
        return cls(revision, succeeded, tuple(responses))


@dataclass(frozen=True, slots=True)
class LeaseResult:
    """A lease granted or kept alive: it lives `ttl_ms` from this command unless kept alive."""

    TAG: ClassVar[int] = 10
    id: int
    ttl_ms: int

    def _write(self, w: Writer) -> None:
        w.u64(self.id)
        w.u64(self.ttl_ms)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.u64(), r.u64())


@dataclass(frozen=True, slots=True)
class ExpireResult:
    TAG: ClassVar[int] = 11
    revision: int
    expired: tuple[int, ...] = ()
    """Ids of the leases this tick ended, in the order they were ended (deadline, then id)."""

    def _write(self, w: Writer) -> None:
        w.u64(self.revision)
        w.u32(len(self.expired))
        for lease in self.expired:
            w.u64(lease)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        revision = r.u64()
        return cls(revision, tuple(r.u64() for _ in range(r.count())))


@dataclass(frozen=True, slots=True)
class AcquireResult:
    """A `LockAcquire` or `Campaign`: granted now (with its fencing token), or queued."""

    TAG: ClassVar[int] = 20
    revision: int
    granted: bool
    token: int = 0
    """The fencing token (the revision of the grant) if granted, else 0."""
    waiting_ahead: int = 0
    """If queued: how many waiters are ahead of this one."""

    def _write(self, w: Writer) -> None:
        w.u64(self.revision)
        w.boolean(self.granted)
        w.u64(self.token)
        w.u64(self.waiting_ahead)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.u64(), r.boolean(), r.u64(), r.u64())


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """A `LockRelease` or `Resign`: `held` is True if the lease held the lock (or led the
    election) and gave it up, False if it was only waiting and left the queue."""

    TAG: ClassVar[int] = 21
    revision: int
    held: bool

    def _write(self, w: Writer) -> None:
        w.u64(self.revision)
        w.boolean(self.held)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.u64(), r.boolean())


@dataclass(frozen=True, slots=True)
class SequenceInfo:
    """A sequence's state: `next_value` is the first value the next `SequenceNext` returns."""

    TAG: ClassVar[int] = 30
    name: str
    next_value: int
    increment: int
    revision: int
    """The revision of the sequence's last change (creation or last block taken)."""

    def _write(self, w: Writer) -> None:
        w.text(self.name)
        w.i64(self.next_value)
        w.i64(self.increment)
        w.u64(self.revision)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.text(), r.i64(), r.i64(), r.u64())


@dataclass(frozen=True, slots=True)
class SequenceBlock:
    """Values first, first + increment, ..., first + (count - 1) * increment: all the caller's,
    never handed out again."""

    TAG: ClassVar[int] = 31
    first: int
    count: int
    increment: int
    revision: int

    @property
    def values(self) -> range:
        return range(self.first, self.first + self.count * self.increment, self.increment)

    def _write(self, w: Writer) -> None:
        w.i64(self.first)
        w.u64(self.count)
        w.i64(self.increment)
        w.u64(self.revision)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.i64(), r.u64(), r.i64(), r.u64())


@dataclass(frozen=True, slots=True)
class RevisionResult:
    """A command with nothing to report but the revision after it."""

    TAG: ClassVar[int] = 40
    revision: int

    def _write(self, w: Writer) -> None:
        w.u64(self.revision)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.u64())


@dataclass(frozen=True, slots=True)
class SealingKeyResult:
    """What `SealingKeyAdd` did: `added`, and the key that is newest now (the one added, or
    the one that won a race)."""

    TAG: ClassVar[int] = 50
    added: bool
    key_id: bytes
    created_ms: int

    def _write(self, w: Writer) -> None:
        w.boolean(self.added)
        w.blob(self.key_id)
        w.u64(self.created_ms)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.boolean(), r.blob(), r.u64())


Result = (
    PutResult
    | DeleteResult
    | RangeResult
    | TxnResult
    | LeaseResult
    | ExpireResult
    | AcquireResult
    | ReleaseResult
    | SequenceInfo
    | SequenceBlock
    | RevisionResult
    | SealingKeyResult
)

RESULT_TYPES: tuple[type[Result], ...] = (
    PutResult,
    DeleteResult,
    RangeResult,
    TxnResult,
    LeaseResult,
    ExpireResult,
    AcquireResult,
    ReleaseResult,
    SequenceInfo,
    SequenceBlock,
    RevisionResult,
    SealingKeyResult,
)

_READERS: dict[int, Callable[[Reader], Result]] = {cls.TAG: cls._read for cls in RESULT_TYPES}


def encode_outcome(outcome: Result | FsmError) -> bytes:
    """version u8 | tag u8 | body; an FsmError is tag 255 | code u8 | message."""
    w = Writer()
    w.u8(OUTCOME_VERSION)
    if isinstance(outcome, FsmError):
        w.u8(_ERROR_TAG)
        w.u8(outcome.code)
        w.text(outcome.message)
    else:
        w.u8(outcome.TAG)
        outcome._write(w)
    return w.getvalue()


def decode_outcome(data: bytes) -> Result | FsmError:
    r = Reader(data, "saved result", DecodeError)
    version = r.u8()
    if version != OUTCOME_VERSION:
        raise r.fail(f"unknown result version {version}")
    tag = r.u8()
    outcome: Result | FsmError
    if tag == _ERROR_TAG:
        raw = r.u8()
        try:
            code = ErrorCode(raw)
        except ValueError:
            raise r.fail(f"unknown error code {raw}") from None
        outcome = FsmError(code, r.text())
    else:
        reader = _READERS.get(tag)
        if reader is None:
            raise r.fail(f"unknown result tag {tag}")
        outcome = reader(r)
    r.finish()
    return outcome
