"""The key-value calls of the `Client`: reads, writes, deletes and transactions (`KVCalls`),
and `prefix_end`, the range of the keys under a prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from coordinator.api.v1 import concord_pb2 as pb

from ._calls import Calls
from ._errors import InvalidArgument
from ._types import Compare, KeyValue, TxnOp, TxnResult


class KVCalls(Calls):
    """Keys and values: `put`, `get`, `get_range`, `get_prefix`, `get_many`, `delete`, `cas`,
    `txn`."""

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        with self.session() as session:
            req = pb.PutRequest(session=session, key=key, value=value, lease=lease)
            resp = await self._small("put", req, lambda s: s.kv.Put)
            return int(resp.header.revision)

    async def get(self, key: bytes, *, serializable: bool = False) -> KeyValue | None:
        """`key`'s value, or None if absent. Linearizable, unless `serializable` (the
        answering member's own state: may be stale, works without a quorum)."""
        kvs = await self.get_range(key, serializable=serializable)
        return kvs[0] if kvs else None

    async def get_range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        limit: int = 0,
        serializable: bool = False,
    ) -> list[KeyValue]:
        """The keys in [key, range_end) in key order (range_end b"": just `key`; b"\\0":
        every key >= key), at most `limit` of them (0: all), read at one revision."""
        req = pb.RangeRequest(key=key, range_end=range_end, limit=limit, serializable=serializable)
        resp = await self._small("range", req, lambda s: s.kv.Range)
        return [KeyValue._from_pb(kv) for kv in resp.kvs]

    async def get_prefix(
        self, prefix: bytes, *, limit: int = 0, serializable: bool = False
    ) -> list[KeyValue]:
        """Every key that starts with `prefix` (b"": every key), in key order."""
        return await self.get_range(
            prefix or b"\0", prefix_end(prefix), limit=limit, serializable=serializable
        )

    async def get_many(
        self, keys: Sequence[bytes], *, serializable: bool = False
    ) -> list[KeyValue | None]:
        """Each key's value (None if absent), in the order given. The reads go out together
        (one batch on the Pipeline stream), each linearizable, but not all at one revision:
        for a consistent view of related keys, keep them under a prefix and `get_prefix`."""
        return list(await asyncio.gather(*(self.get(k, serializable=serializable) for k in keys)))

    async def delete(self, key: bytes, range_end: bytes = b"") -> int:
        with self.session() as session:
            req = pb.DeleteRequest(session=session, key=key, range_end=range_end)
            resp = await self._small("delete", req, lambda s: s.kv.Delete)
            return int(resp.deleted)

    async def cas(self, key: bytes, expected: bytes | None, new: bytes) -> bool:
        """Set `key` to `new` iff its value is `expected` (None: iff it does not exist)."""
        with self.session() as session:
            req = cas_request(session, key, expected, new)
            resp = await self._small("txn", req, lambda s: s.kv.Txn)
            return bool(resp.succeeded)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """If every compare holds, run `success`, else `failure`, atomically (exactly once);
        both see one revision."""
        with self.session() as session:
            req = pb.TxnRequest(
                session=session,
                compares=[c._to_pb() for c in compares],
                success=[op._to_pb() for op in success],
                failure=[op._to_pb() for op in failure],
            )
            resp = await self._small("txn", req, lambda s: s.kv.Txn)
            return TxnResult._from_pb(resp)


def cas_request(
    session: pb.Session, key: bytes, expected: bytes | None, new: bytes
) -> pb.TxnRequest:
    """The request `cas` sends: what `txn([Compare(key, "value", "=", expected)],
    [Put(key, new)])` sends (or a "version" = 0 compare), made directly. A CAS is a hot path,
    and the typed inputs and result cost the caller more CPU than the rest of the call; the
    fields are filled in place (`add()`), as messages built apart are copied when passed in."""
    if expected is not None and not isinstance(expected, bytes):
        raise InvalidArgument("compare of value: the operand must be bytes")  # as Compare does
    req = pb.TxnRequest(session=session)
    if expected is None:
        req.compares.add(key=key, target=pb.Compare.VERSION, op=pb.Compare.EQUAL, number=0)
    else:
        req.compares.add(key=key, target=pb.Compare.VALUE, op=pb.Compare.EQUAL, value=expected)
    put = req.success.add().put
    put.key = key
    put.value = new
    return req


def prefix_end(prefix: bytes) -> bytes:
    """The end of the range of keys starting with `prefix` (b"\\0": every key)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"
