"""The key-value store, the global revision and the watch history.

Revision. One counter orders every change the state machine makes: KV writes, lock grants and
releases, election changes, sequence blocks, member changes. Each change (or each atomic group
of changes: a `Txn`, the deletion of a lease's keys) takes the next revision, and the revision
never moves otherwise, so "the state at revision R" is well defined and watchers can resume
from a revision. Lock fencing tokens are revisions (see `locks.py`), which is what makes them
strictly increasing across all grants of a name for free.

Keys. Per key the store keeps what etcd keeps: `create_revision` (when the current incarnation
was created), `mod_revision` (last write), `version` (puts since creation; a delete ends the
incarnation) and the `lease` it is attached to. Keys are ordered bytes, so a range
[key, range_end) is a span of the keys in order, kept in `sorted_keys.py` (range_end b"\\0"
means "to the end", as in etcd).
There is no MVCC: reads see the newest state only, and history lives in the watch ring.

Txn. Compares are evaluated, one branch is chosen, and its ops run against the state as the
branch leaves it, all at one revision: a txn that writes anything bumps the revision once, and
a txn that only reads leaves it alone. Everything that could fail (sizes, duplicate writes,
unknown leases) is checked before the first write, so a txn is all or nothing.

Watch history. A bounded ring of `Event`s (bounded in count and in bytes). `events_since(r)`
returns every event with revision >= r, or fails with OUT_OF_RANGE once the ring no longer
holds all of them: `horizon` is the oldest revision that is still complete. The ring is part of
the replicated state and of snapshots, so every replica, restored or not, answers a watch the
same way. Its bounds must therefore be the same on every member.
"""

from __future__ import annotations

import enum
import operator
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._wire import I64_MAX, Reader, Writer, invariant
from .commands import Compare, CompareOp, CompareTarget, Delete, Put, Range, Txn, TxnOp
from .errors import FsmError, invalid, not_found, out_of_range
from .kv_image import leased, read_columns, read_rows, write_columns
from .results import (
    DeleteResult,
    KeyValue,
    OpResult,
    PutResult,
    RangeResult,
    TxnResult,
)
from .sorted_keys import SortedKeys

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1024 * 1024
MAX_TXN_OPS = 128
"""Per branch, and for the compares (etcd's default --max-txn-ops)."""
MAX_NAME_BYTES = 256
"""Lock, election and sequence names (UTF-8)."""

DEFAULT_HISTORY_EVENTS_MAX = 10_000
DEFAULT_HISTORY_BYTES_MAX = 16 * 1024 * 1024
_EVENT_OVERHEAD_BYTES = 64


class EventKind(enum.IntEnum):
    PUT = 1
    DELETE = 2
    LOCK_GRANTED = 3
    LOCK_RELEASED = 4
    """The holder released it, or its lease ended."""
    ELECTION_LEADER = 5
    """A new leader (after a campaign, resign or expiry) or a proclaimed new value."""
    ELECTION_VACANT = 6
    """The leader resigned or its lease ended (an ELECTION_LEADER follows if anyone waits)."""
    SEQUENCE = 7
    """A sequence was created or a block was taken."""
    MEMBER_UPSERTED = 8
    MEMBER_REMOVED = 9


@dataclass(frozen=True, slots=True)
class Event:
    """One change, as a watcher sees it. Field meaning depends on `kind`:

    - `key`: PUT/DELETE the key; LOCK_*, ELECTION_*, SEQUENCE the name (UTF-8); MEMBER_* the
      member's name (UTF-8).
    - `value`: PUT the new value; ELECTION_LEADER the leader's value.
    - `lease`: PUT the key's lease; LOCK_*, ELECTION_* the holder's lease.
    - `number`: PUT the key's version; LOCK_*, ELECTION_* the grant's fencing token;
      SEQUENCE the next value it will issue; MEMBER_* the member id.
    - `create_revision`: PUT only.
    """

    revision: int
    kind: EventKind
    key: bytes
    value: bytes = b""
    lease: int = 0
    number: int = 0
    create_revision: int = 0

    def size_bytes(self) -> int:
        return len(self.key) + len(self.value) + _EVENT_OVERHEAD_BYTES

    def write(self, w: Writer) -> None:
        w.u64(self.revision)
        w.u8(self.kind)
        w.blob(self.key)
        w.blob(self.value)
        w.u64(self.lease)
        w.i64(self.number)
        w.u64(self.create_revision)

    @classmethod
    def read(cls, r: Reader) -> Event:
        revision = r.u64()
        raw = r.u8()
        try:
            kind = EventKind(raw)
        except ValueError:
            raise r.fail(f"unknown event kind {raw}") from None
        return cls(revision, kind, r.blob(), r.blob(), r.u64(), r.i64(), r.u64())


class History:
    """The global revision and the bounded ring of recent events."""

    def __init__(
        self,
        events_max: int = DEFAULT_HISTORY_EVENTS_MAX,
        bytes_max: int = DEFAULT_HISTORY_BYTES_MAX,
    ) -> None:
        if events_max < 1 or bytes_max < 1:
            raise ValueError("the watch history must hold at least one event")
        self.events_max = events_max
        self.bytes_max = bytes_max
        self.revision = 0
        """The revision of the newest change; 0 before the first. Never decreases."""
        self.horizon = 1
        """Every event with revision >= horizon is in the ring. 1 <= horizon <= revision + 1."""
        self._events: deque[Event] = deque()
        """Oldest first; revisions non-decreasing; all > horizon - 1."""
        self._bytes = 0
        """Sum of size_bytes() over _events. The newest revision is never dropped, so the ring
        may exceed its bounds by that one revision (at most a txn's or a revoke's events)."""

    def commit(self, events: Iterable[Event]) -> int:
        """Record one revision's events (all stamped `revision + 1`); returns that revision."""
        batch = list(events)
        revision = self.revision + 1
        invariant(bool(batch), "a revision must record at least one event")
        invariant(all(e.revision == revision for e in batch), "events must carry the new revision")
        self.revision = revision
        for event in batch:
            self._events.append(event)
            self._bytes += event.size_bytes()
        while self._events[0].revision < revision and (
            len(self._events) > self.events_max or self._bytes > self.bytes_max
        ):
            dropped = self._events.popleft()
            self._bytes -= dropped.size_bytes()
            self.horizon = dropped.revision + 1
        return revision

    def record(
        self,
        kind: EventKind,
        key: bytes,
        *,
        value: bytes = b"",
        lease: int = 0,
        number: int = 0,
    ) -> int:
        """Commit a revision holding one event; returns the revision."""
        event = Event(self.revision + 1, kind, key, value, lease, number)
        return self.commit([event])

    def events_since(self, revision: int) -> list[Event]:
        """Every event with revision >= `revision` (0 means from the start), oldest first."""
        if revision < 0:
            raise invalid(f"watch revision must be >= 0, got {revision}")
        start = max(revision, 1)
        if start < self.horizon:
            raise out_of_range(
                f"compacted: revision {start} is no longer in the watch history (it starts at "
                f"revision {self.horizon}); read the current state and resume from revision "
                f"{self.revision + 1}"
            )
        out: list[Event] = []
        for event in reversed(self._events):
            if event.revision < start:
                break
            out.append(event)
        out.reverse()
        return out

    def __len__(self) -> int:
        return len(self._events)

    def write(self, w: Writer) -> None:
        w.u64(self.revision)
        w.u64(self.horizon)
        w.u32(len(self._events))
        for event in self._events:
            event.write(w)

    def read_into(self, r: Reader) -> None:
        """Replace this history's content with an image (bounds stay this member's)."""
        revision, horizon = r.u64(), r.u64()
        events = deque(Event.read(r) for _ in range(r.count()))
        if not 1 <= horizon <= revision + 1:
            raise r.fail(f"watch horizon {horizon} outside 1..{revision + 1}")
        self.revision, self.horizon, self._events = revision, horizon, events
        self._bytes = sum(e.size_bytes() for e in events)


# --- validation shared with the other modules ------------------------------------------------


def check_key(key: bytes, what: str = "key") -> None:
    if not key:
        raise invalid(f"{what} must not be empty")
    if len(key) > MAX_KEY_BYTES:
        raise invalid(f"{what} is {len(key)} bytes; the limit is {MAX_KEY_BYTES} (1 KiB)")


def check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise invalid(
            f"value is {len(value)} bytes; the limit is {MAX_VALUE_BYTES} (1 MiB): store large "
            "data elsewhere and put a reference here"
        )


def check_name(name: str, what: str) -> None:
    """Lock, election and sequence names: 1..256 bytes of UTF-8."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise invalid(f"{what} name must be valid Unicode text (no lone surrogates)") from None
    if size == 0:
        raise invalid(f"{what} name must not be empty")
    if size > MAX_NAME_BYTES:
        raise invalid(f"{what} name is {size} bytes; the limit is {MAX_NAME_BYTES}")


def check_id(value: int, what: str) -> None:
    """Lease and member ids: 1..2**63-1 (they travel as signed 64-bit integers elsewhere)."""
    if not 1 <= value <= I64_MAX:
        raise invalid(f"{what} must be between 1 and {I64_MAX}, got {value}")


def _check_range(key: bytes, range_end: bytes | None) -> None:
    check_key(key)
    if range_end is None or range_end == b"\0":
        return
    if len(range_end) > MAX_KEY_BYTES:
        raise invalid(f"range_end is {len(range_end)} bytes; the limit is {MAX_KEY_BYTES}")
    if range_end <= key:
        raise invalid(
            f"range_end {range_end!r} must sort after key {key!r} (the range is [key, range_end)"
            "); use range_end b'\\x00' for every key >= key, or no range_end for one key"
        )


def lease_missing(lease: int) -> FsmError:
    return not_found(f"lease {lease} not found: it expired or was revoked; grant a new lease")


# --- the store -------------------------------------------------------------------------------


class _Batch:
    """Writes being made at one tentative revision (history.revision + 1)."""

    __slots__ = ("events", "revision")

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.events: list[Event] = []


class KvStore:
    """Keys, their metadata and the lease -> keys index. Shares `history` with the other
    modules. `lease_exists` and `lock_tokens` answer for the lease and lock tables (the
    machine wires them), so a put can refuse an unknown lease and a txn can compare a lock's
    fencing token."""

    def __init__(
        self,
        history: History,
        lease_exists: Callable[[int], bool],
        lock_tokens: Callable[[str], tuple[int, ...]],
    ) -> None:
        self._history = history
        self._lease_exists = lease_exists
        self._lock_tokens = lock_tokens
        self._data: dict[bytes, KeyValue] = {}
        """Every live key. Invariant: kv.mod_revision <= history.revision."""
        self._keys = SortedKeys()
        """sorted(_data): the order ranges walk."""
        self._by_lease: dict[int, set[bytes]] = {}
        """lease -> keys attached to it; derived from _data, never empty sets."""

    # --- reads -------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._history.revision

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> KeyValue | None:
        return self._data.get(key)

    def range(self, key: bytes, range_end: bytes | None = None, limit: int = 0) -> RangeResult:
        _check_range(key, range_end)
        if limit < 0:
            raise invalid(f"limit must be >= 0 (0 = no limit), got {limit}")
        keys = self._span(key, range_end)
        shown = keys[:limit] if limit else keys
        return RangeResult(
            self.revision,
            tuple(self._data[k] for k in shown),
            len(keys),
            len(shown) < len(keys),
        )

    def keys_of_lease(self, lease: int) -> list[bytes]:
        return sorted(self._by_lease.get(lease, ()))

    def _span(self, key: bytes, range_end: bytes | None) -> list[bytes]:
        if range_end is None:
            return [key] if key in self._data else []
        return self._keys.span(key, None if range_end == b"\0" else range_end)

    # --- writes ------------------------------------------------------------------------------

    def put(self, cmd: Put) -> PutResult:
        self._check_put(cmd)
        self._check_lease(cmd.lease)
        batch = _Batch(self.revision + 1)
        prev = self._put_in(batch, cmd)
        revision = self._history.commit(batch.events)
        return PutResult(revision, prev if cmd.prev_kv else None)

    def delete(self, cmd: Delete) -> DeleteResult:
        _check_range(cmd.key, cmd.range_end)
        return self._delete_keys(self._span(cmd.key, cmd.range_end))

    def delete_keys(self, keys: Iterable[bytes]) -> DeleteResult:
        """Delete the given keys (those that exist) at one revision: a lease's keys."""
        return self._delete_keys(sorted(k for k in set(keys) if k in self._data))

    def _delete_keys(self, keys: list[bytes]) -> DeleteResult:
        if not keys:
            return DeleteResult(self.revision, 0)
        batch = _Batch(self.revision + 1)
        for key in keys:
            self._delete_in(batch, key)
        return DeleteResult(self._history.commit(batch.events), len(keys))

    def txn(self, cmd: Txn) -> TxnResult:
        compares = cmd.compares
        if len(compares) > MAX_TXN_OPS:
            raise invalid(f"txn has {len(compares)} compares; the limit is {MAX_TXN_OPS}")
        for compare in compares:
            self._check_compare(compare)
        self._check_branch("success", cmd.success)
        self._check_branch("failure", cmd.failure)
        succeeded = all(map(self._holds, compares))
        ops = cmd.success if succeeded else cmd.failure
        for op in ops:
            if isinstance(op, Put):
                self._check_lease(op.lease)
        # Nothing below can fail: the branch runs whole or (above) not at all.
        batch = _Batch(self.revision + 1)
        # What each op did, made into its result once the txn's revision is known: the
        # result's TAG, a put's previous key (if asked), a delete's or range's count and keys.
        done: list[tuple[int, KeyValue | None, int, tuple[KeyValue, ...]]] = []
        for op in ops:
            if isinstance(op, Put):
                prev = self._put_in(batch, op)
                done.append((PutResult.TAG, prev if op.prev_kv else None, 0, ()))
            elif isinstance(op, Delete):
                keys = self._span(op.key, op.range_end)
                for key in keys:
                    self._delete_in(batch, key)
                done.append((DeleteResult.TAG, None, len(keys), ()))
            else:
                keys = self._span(op.key, op.range_end)
                shown = keys[: op.limit] if op.limit else keys
                kvs = tuple([self._data[k] for k in shown])
                done.append((RangeResult.TAG, None, len(keys), kvs))
        revision = self._history.commit(batch.events) if batch.events else self.revision
        return TxnResult(revision, succeeded, tuple([_op_result(revision, *d) for d in done]))

    def _put_in(self, batch: _Batch, cmd: Put) -> KeyValue | None:
        prev = self._data.get(cmd.key)
        if prev is None:
            kv = KeyValue(cmd.key, cmd.value, batch.revision, batch.revision, 1, cmd.lease)
            self._keys.add(cmd.key)
        else:
            kv = KeyValue(
                cmd.key,
                cmd.value,
                prev.create_revision,
                batch.revision,
                prev.version + 1,
                cmd.lease,
            )
            self._detach(prev)
        self._data[cmd.key] = kv
        if kv.lease:
            self._by_lease.setdefault(kv.lease, set()).add(kv.key)
        batch.events.append(
            Event(
                batch.revision,
                EventKind.PUT,
                kv.key,
                kv.value,
                kv.lease,
                kv.version,
                kv.create_revision,
            )
        )
        return prev

    def _delete_in(self, batch: _Batch, key: bytes) -> None:
        prev = self._data.pop(key)
        self._keys.remove(key)
        self._detach(prev)
        batch.events.append(Event(batch.revision, EventKind.DELETE, key))

    def _detach(self, kv: KeyValue) -> None:
        if kv.lease:
            keys = self._by_lease[kv.lease]
            keys.discard(kv.key)
            if not keys:
                del self._by_lease[kv.lease]

    # --- validation --------------------------------------------------------------------------

    def _check_put(self, cmd: Put) -> None:
        check_key(cmd.key)
        check_value(cmd.value)

    def _check_lease(self, lease: int) -> None:
        if lease and not self._lease_exists(lease):
            raise lease_missing(lease)

    def _check_compare(self, c: Compare) -> None:
        if c.target is CompareTarget.LOCK_TOKEN:
            try:
                name = c.key.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid("a LOCK_TOKEN compare's key is a lock name: valid UTF-8") from None
            check_name(name, "lock")
        else:
            check_key(c.key, "compare key")
        if c.target is CompareTarget.VALUE:
            if not isinstance(c.value, bytes):
                raise invalid("a VALUE compare needs a bytes value")
        elif not isinstance(c.value, int) or c.value < 0:
            raise invalid(f"a {c.target.name} compare needs a non-negative integer value")

    def _check_branch(self, label: str, ops: tuple[TxnOp, ...]) -> None:
        if not ops:
            return
        if len(ops) > MAX_TXN_OPS:
            raise invalid(f"txn {label} branch has {len(ops)} ops; the limit is {MAX_TXN_OPS}")
        puts: set[bytes] = set()
        deletes: list[tuple[bytes, bytes | None]] = []
        for op in ops:
            if isinstance(op, Put):
                self._check_put(op)
                if op.key in puts:
                    raise invalid(
                        f"txn {label} branch puts key {op.key!r} twice; write each key at most "
                        "once per branch"
                    )
                puts.add(op.key)
            elif isinstance(op, Delete):
                _check_range(op.key, op.range_end)
                deletes.append((op.key, op.range_end))
            elif isinstance(op, Range):
                _check_range(op.key, op.range_end)
                if op.limit < 0:
                    raise invalid(f"limit must be >= 0 (0 = no limit), got {op.limit}")
            else:  # pragma: no cover - the type says this cannot happen; the codec agrees
                raise invalid(f"a txn op must be Put, Delete or Range, not {type(op).__name__}")
        for key in sorted(puts):
            for lo, hi in deletes:
                if _in_range(key, lo, hi):
                    raise invalid(
                        f"txn {label} branch both puts and deletes key {key!r}; write each key "
                        "at most once per branch"
                    )

    def _holds(self, c: Compare) -> bool:
        if c.target is CompareTarget.LOCK_TOKEN:
            tokens = self._lock_tokens(c.key.decode("utf-8"))
            if c.op is CompareOp.EQUAL:
                return c.value in tokens
            if c.op is CompareOp.NOT_EQUAL:
                return c.value not in tokens
            return _compare(max(tokens, default=0), c.op, c.value)
        kv = self._data.get(c.key)
        if c.target is CompareTarget.VALUE:
            return kv is not None and _compare(kv.value, c.op, c.value)
        current = 0
        if kv is not None:
            match c.target:
                case CompareTarget.VERSION:
                    current = kv.version
                case CompareTarget.CREATE_REVISION:
                    current = kv.create_revision
                case CompareTarget.MOD_REVISION:
                    current = kv.mod_revision
                case CompareTarget.LEASE:
                    current = kv.lease
        return _compare(current, c.op, c.value)

    # --- snapshots ---------------------------------------------------------------------------

    def capture(self) -> Callable[[Writer], None]:
        """The store's snapshot encoding (what `read_into` reads), deferred: the values in
        key order are gathered now (they are immutable,
        so that is a consistent image; one C-level lookup of every key, a pointer each), and
        encoded when the returned function runs, which may be on another thread while this
        store changes."""
        values: tuple[KeyValue, ...] = ()
        if len(self._keys) == 1:
            values = (self._data[next(iter(self._keys))],)
        elif self._keys:
            values = operator.itemgetter(*self._keys)(self._data)

        return lambda w: write_columns(w, values)

    def read_into(self, r: Reader, *, columns: bool = True) -> None:
        """Replace the store with an image's (`kv_image.py`: columns since version 6)."""
        if columns:
            read = read_columns(r)
            self._data = read.by_key()
            self._keys = SortedKeys(read.keys)
            with_lease: Iterable[KeyValue] = read.leased
        else:
            self._data = read_rows(r)
            self._keys = SortedKeys(sorted(self._data))
            with_lease = leased(self._data.values())
        self._by_lease = {}
        for kv in with_lease:
            self._by_lease.setdefault(kv.lease, set()).add(kv.key)


def _op_result(
    revision: int, tag: int, prev: KeyValue | None, count: int, kvs: tuple[KeyValue, ...]
) -> OpResult:
    """One txn op's result, from what `KvStore.txn` noted it did."""
    if tag == PutResult.TAG:
        return PutResult(revision, prev)
    if tag == DeleteResult.TAG:
        return DeleteResult(revision, count)
    return RangeResult(revision, kvs, count, len(kvs) < count)


def _in_range(key: bytes, lo: bytes, hi: bytes | None) -> bool:
    if hi is None:
        return key == lo
    return lo <= key and (hi == b"\0" or key < hi)


def _compare(current: bytes | int, op: CompareOp, target: bytes | int) -> bool:
    if isinstance(current, bytes) and isinstance(target, bytes):
        return _order(current < target, current == target, op)
    if isinstance(current, int) and isinstance(target, int):
        return _order(current < target, current == target, op)
    return False


def _order(less: bool, equal: bool, op: CompareOp) -> bool:
    match op:
        case CompareOp.EQUAL:
            return equal
        case CompareOp.NOT_EQUAL:
            return not equal
        case CompareOp.LESS:
            return less
        case CompareOp.GREATER:
            return not less and not equal
