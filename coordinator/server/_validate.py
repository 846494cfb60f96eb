"""Request validation: every bad input is refused with INVALID_ARGUMENT before it is proposed.

The state machine validates again when it applies (it must: a log entry can come from any
client version), with the same limits and the same wording, because the checks here reuse
its own (`coordinator.fsm.kv.check_*`, the limits in `coordinator.fsm.*`). Checking first
keeps junk out of the log and answers at once, even from a follower or without a quorum.

Protobuf conventions: an unset scalar reads as 0 / empty, so "0 means the default" is applied
here where the API says so (count, increment, max_holders); an enum value this build does not
know (proto3 enums are open) is refused by name.
"""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import Compare, CompareOp, CompareTarget, Delete, Put, Range, Txn, TxnOp
from coordinator.fsm.kv import (
    MAX_KEY_BYTES,
    MAX_TXN_OPS,
    check_key,
    check_name,
    check_value,
)
from coordinator.fsm.leases import MAX_TTL_MS, MIN_TTL_MS
from coordinator.fsm.locks import MAX_HOLDERS_MAX, MAX_LOCK_DELAY_MS
from coordinator.fsm.sequences import MAX_BLOCK_COUNT

from ._core import NO_SESSION, Session
from ._errors import invalid

I64_MAX = 2**63 - 1
U32_MAX = 2**32 - 1


def session(s: pb.Session) -> Session:
    if s.client_id == 0:
        if s.seq:
            raise invalid(
                f"session.seq is {s.seq} but session.client_id is 0: set client_id (one random "
                "64-bit id per client) to get exactly-once retries, or leave both 0"
            )
        return NO_SESSION
    if s.seq == 0:
        raise invalid(
            f"session.seq must be >= 1 when session.client_id ({s.client_id}) is set: number "
            "a client's requests 1, 2, 3, ... and reuse a number only to retry that request"
        )
    return Session(s.client_id, s.seq)


def key(k: bytes, what: str = "key") -> bytes:
    check_key(k, what)
    return k


def range_end(k: bytes, end: bytes) -> bytes | None:
    """[k, end): empty end means just `k`; b"\\0" means every key >= k."""
    check_key(k)
    if not end:
        return None
    if end == b"\0":
        return end
    if len(end) > MAX_KEY_BYTES:
        raise invalid(f"range_end is {len(end)} bytes; the limit is {MAX_KEY_BYTES}")
    if end <= k:
        raise invalid(
            f"range_end {end!r} must sort after key {k!r} (the range is [key, range_end)); use "
            "range_end b'\\x00' for every key >= key, or no range_end for one key"
        )
    return end


def value(v: bytes) -> bytes:
    check_value(v)
    return v


def name(n: str, what: str) -> str:
    check_name(n, what)
    return n


def lease_id(v: int, what: str = "lease", *, required: bool = True) -> int:
    if v == 0 and required:
        raise invalid(
            f"{what} is 0: this needs a lease; grant one (`concordctl lease grant TTL`) and "
            "pass its id"
        )
    if v > I64_MAX:
        raise invalid(f"{what} {v} is out of range: lease ids are 1..{I64_MAX}")
    return v


def lease_ids(values: Iterable[int], what: str) -> list[int]:
    """Every id checked as `lease_id` checks one, in C for the common case (all valid): a
    keep-alive message carries hundreds."""
    ids = list(values)
    if ids and (0 in ids or max(ids) > I64_MAX):
        for i in ids:
            lease_id(i, what)
    return ids


def member_id(v: int) -> int:
    if not 1 <= v <= I64_MAX:
        raise invalid(f"member id must be between 1 and {I64_MAX}, got {v}")
    return v


def ttl_ms(v: int) -> int:
    if v == 0:
        raise invalid(f"ttl_ms must be > 0: a lease lives {MIN_TTL_MS}..{MAX_TTL_MS} ms")
    if not MIN_TTL_MS <= v <= MAX_TTL_MS:
        raise invalid(
            f"lease TTL {v} ms is outside {MIN_TTL_MS}..{MAX_TTL_MS} ms (1 s to 1 day); keep "
            "a lease alive rather than granting a very long one"
        )
    return v


def max_holders(v: int) -> int:
    if v == 0:
        return 1
    if v > MAX_HOLDERS_MAX:
        raise invalid(f"max_holders must be between 1 and {MAX_HOLDERS_MAX}, got {v}")
    return v


def lock_delay_ms(v: int) -> int:
    if v > MAX_LOCK_DELAY_MS:
        raise invalid(f"lock_delay_ms must be between 0 and {MAX_LOCK_DELAY_MS}, got {v}")
    return v


def count(v: int) -> int:
    if v == 0:
        return 1
    if v > MAX_BLOCK_COUNT:
        raise invalid(f"count must be between 1 and {MAX_BLOCK_COUNT}, got {v}")
    return v


def increment(v: int) -> int:
    if v == 0:
        return 1
    if v < 0:
        raise invalid(f"increment must be positive (sequences only go up), got {v}; 0 means 1")
    return v


# --- KV ----------------------------------------------------------------------------------------


def put(r: pb.PutRequest) -> Put:
    return Put(key(r.key), value(r.value), lease_id(r.lease, required=False), r.prev_kv)


def delete(r: pb.DeleteRequest) -> Delete:
    return Delete(r.key, range_end(r.key, r.range_end))


def txn_range(r: pb.RangeRequest) -> Range:
    if r.limit > U32_MAX:
        raise invalid(f"limit {r.limit} is too large; inside a txn the limit is at most {U32_MAX}")
    return Range(r.key, range_end(r.key, r.range_end), r.limit)


_TARGETS: dict[int, CompareTarget] = {
    number: CompareTarget[name] for name, number in pb.Compare.Target.items()
}
"""The wire's compare targets as the state machine's, by number (the names are the same; a
name the state machine lacks fails here, at import)."""
_OPS: dict[int, CompareOp] = {number: CompareOp[name] for name, number in pb.Compare.Op.items()}


def compare(i: int, c: pb.Compare) -> Compare:
    target = _TARGETS.get(c.target)
    if target is None:
        known = ", ".join(pb.Compare.Target.keys())
        raise invalid(f"compare {i}: unknown target {int(c.target)}; use one of {known}")
    op = _OPS.get(c.op)
    if op is None:
        known = ", ".join(pb.Compare.Op.keys())
        raise invalid(f"compare {i}: unknown op {int(c.op)}; use one of {known}")
    key = c.key  # read once: each read of a bytes field makes a new object
    if target is CompareTarget.LOCK_TOKEN:
        try:
            lock = key.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid(
                f"compare {i}: a LOCK_TOKEN compare's key is a lock name: UTF-8"
            ) from None
        check_name(lock, "lock")
    else:
        check_key(key, f"compare {i} key")
    operand = c.WhichOneof("operand")
    if target is CompareTarget.VALUE:
        if operand != "value":
            raise invalid(
                f"compare {i} (VALUE of key {key!r}) needs the bytes operand `value`, not "
                f"{operand or 'no operand'}"
            )
        return Compare(key, target, op, value(c.value))
    if operand != "number":
        raise invalid(
            f"compare {i} ({target.name} of {key!r}) needs the integer operand `number`, not "
            f"{operand or 'no operand'}"
        )
    return Compare(key, target, op, c.number)


def txn_op(label: str, i: int, op: pb.TxnOp) -> TxnOp:
    match op.WhichOneof("op"):
        case "put":
            return put(op.put)
        case "delete":
            return delete(op.delete)
        case "range":
            return txn_range(op.range)
        case _:
            raise invalid(f"txn {label} op {i} is empty: set one of put, delete or range")


def txn(r: pb.TxnRequest) -> Txn:
    compares, success, failure = r.compares, r.success, r.failure
    if len(compares) > MAX_TXN_OPS:
        raise invalid(f"txn has {len(compares)} compares; the limit is {MAX_TXN_OPS}")
    for label, ops in (("success", success), ("failure", failure)):
        if len(ops) > MAX_TXN_OPS:
            raise invalid(f"txn {label} branch has {len(ops)} ops; the limit is {MAX_TXN_OPS}")
    return Txn(
        tuple([compare(i, c) for i, c in enumerate(compares)]),
        tuple([txn_op("success", i, op) for i, op in enumerate(success)]),
        tuple([txn_op("failure", i, op) for i, op in enumerate(failure)]) if failure else (),
    )
