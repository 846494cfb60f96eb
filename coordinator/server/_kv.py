"""concord.v1.KV: Range, Put, Delete and Txn (compare-and-swap, LOCK_TOKEN fencing)."""

from __future__ import annotations

from collections.abc import Callable

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import (
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
    TxnResult,
)

from . import _validate as v
from ._core import Core
from ._rpc import Call, Servicer, unary


def kv_pb(kv: KeyValue) -> pb.KeyValue:
    return pb.KeyValue(
        key=kv.key,
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def _opt(kv: KeyValue | None) -> pb.KeyValue | None:
    return None if kv is None else kv_pb(kv)


class KVService(Servicer):
    def __init__(self, core: Core) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core

    @unary
    async def Range(self, request: pb.RangeRequest, call: Call) -> pb.RangeResponse:
        end = v.range_end(request.key, request.range_end)
        await self.core.read(request.serializable)
        return range_response(
            self.core.header(), self.core.fsm.range(request.key, end, request.limit)
        )

    @unary
    async def Put(self, request: pb.PutRequest, call: Call) -> pb.PutResponse:
        cmd = v.put(request)
        applied = await self.core.propose(cmd, v.session(request.session))
        return put_response(self.core.header, self.core.expect(applied, PutResult), applied.index)

    @unary
    async def Delete(self, request: pb.DeleteRequest, call: Call) -> pb.DeleteResponse:
        cmd = v.delete(request)
        applied = await self.core.propose(cmd, v.session(request.session))
        res = self.core.expect(applied, DeleteResult)
        return pb.DeleteResponse(
            header=self.core.header(res.revision, applied.index), deleted=res.deleted
        )

    @unary
    async def Txn(self, request: pb.TxnRequest, call: Call) -> pb.TxnResponse:
        cmd = v.txn(request)
        applied = await self.core.propose(cmd, v.session(request.session))
        return txn_response(self.core.header, self.core.expect(applied, TxnResult), applied.index)


Header = Callable[[int | None, int], pb.ResponseHeader]
"""`Core.header`: the response header for a revision and the entry's index."""


def put_response(header: Header, res: PutResult, index: int) -> pb.PutResponse:
    return pb.PutResponse(header=header(res.revision, index), prev_kv=_opt(res.prev_kv))


def txn_response(header: Header, res: TxnResult, index: int) -> pb.TxnResponse:
    # Every op's result has the txn's revision, so a put's or a delete's header is the txn's
    # own: made once (a range's names no index, as a plain Range's does not). The results
    # are filled in place (`add()`): a result message built apart and then passed in is
    # copied again, level by level, which made a CAS's response cost three times a put's.
    head = header(res.revision, index)
    resp = pb.TxnResponse(header=head, succeeded=res.succeeded)
    results = resp.results
    for r in res.responses:
        mine = head if r.revision == res.revision else header(r.revision, index)
        op = results.add()
        match r:
            case PutResult():
                op.put.SetInParent()
                op.put.header.CopyFrom(mine)
                if r.prev_kv is not None:
                    op.put.prev_kv.CopyFrom(kv_pb(r.prev_kv))
            case DeleteResult():
                op.delete.SetInParent()
                op.delete.header.CopyFrom(mine)
                op.delete.deleted = r.deleted
            case RangeResult():
                op.range.CopyFrom(range_response(header(r.revision, 0), r))
    return resp


def range_response(header: pb.ResponseHeader, res: RangeResult) -> pb.RangeResponse:
    return pb.RangeResponse(
        header=header, kvs=[kv_pb(kv) for kv in res.kvs], more=res.more, count=res.count
    )
