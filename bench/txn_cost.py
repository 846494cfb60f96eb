"""The CPU a compare-and-swap costs against a plain put, piece by piece, in one process.

A CAS is a `Txn`: one `Compare` of the key's value, one `Put` on success, nothing on
failure (what `Client.cas` sends and `make bench`'s cas figure issues). Each piece of a
request's path is timed alone with `time.process_time` over many iterations, for the put
and for the CAS, with the code the client and the member run:

- client build: the request message as `Client.put` and `Client.cas` make it;
- request wire: the `PipelineCall` serialised by the client and parsed by the member;
- validate: the member's check of the request and its conversion to the fsm command;
- encode / decode: the command's log entry (`Envelope`), decoded again on apply by every member;
- apply: `StateMachine.apply` of the entry (its decode again, the session check, the KV
  change, the saved result), on a key that exists (as the cas figure's keys do);
- outcome encode / decode: the result saved in the session table (decoded for a duplicate);
- response build: the member's response message; response wire: serialised by the member,
  parsed by the client; client result: what the library returns to the caller.

`python -m bench.txn_cost [--iterations N] [--rounds R]` prints a table (µs per op, the
median over the rounds) and the JSON of every round. Benchmarks print numbers; nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client._kv import cas_request
from coordinator.client._types import Compare, Put
from coordinator.fsm import Envelope, StateMachine
from coordinator.fsm.results import decode_outcome, encode_outcome
from coordinator.raft import Entry
from coordinator.server import _validate as v
from coordinator.server._kv import put_response, txn_response

KEY = b"bench/cas/cell/0"
OLD = b"41"
NEW = b"42"
SESSION = pb.Session(client_id=7, seq=1)

Piece = Callable[[], object]


def _header(revision: int | None = None, index: int = 0) -> pb.ResponseHeader:
    return pb.ResponseHeader(member_id=1, revision=revision or 0, raft_term=3, raft_index=index)


def _put_request() -> pb.PutRequest:
    return pb.PutRequest(session=SESSION, key=KEY, value=NEW, lease=0)


def _cas_request() -> pb.TxnRequest:
    return cas_request(SESSION, KEY, OLD, NEW)


class _Machine:
    """A state machine whose key exists, fed entries of one command at increasing indexes
    and session seqs (a client's loop); each CAS expects what the one before wrote, so every
    one succeeds, as in the cas figure."""

    def __init__(self, kind: str, iterations: int) -> None:
        self.sm = StateMachine()
        seed = Envelope(0, 0, 1, v.put(pb.PutRequest(key=KEY, value=b"0")))
        self.sm.apply(Entry(1, 1, data=seed.encode()))
        self.entries: list[Entry] = []
        for i in range(iterations):
            old, new = b"%d" % i, b"%d" % (i + 1)
            command: Any
            if kind == "put":
                command = v.put(pb.PutRequest(key=KEY, value=new))
            else:
                cmp = Compare(KEY, "value", "=", old)._to_pb()
                command = v.txn(pb.TxnRequest(compares=[cmp], success=[Put(KEY, new)._to_pb()]))
            env = Envelope(9, i + 1, 1000 + i, command)
            self.entries.append(Entry(i + 2, 1, data=env.encode()))
        self.next = 0

    def apply_next(self) -> object:
        entry = self.entries[self.next]
        self.next += 1
        return self.sm.apply(entry)


def pieces(kind: str, iterations: int) -> dict[str, Piece]:
    """The timed pieces of one request `kind` ("put" or "cas")."""
    request: Any = _put_request() if kind == "put" else _cas_request()
    field = "put" if kind == "put" else "txn"
    # the request's field in a PipelineCall, the response's in a PipelineResult
    validate: Callable[[Any], Any] = v.put if kind == "put" else v.txn
    command = validate(request)
    data = Envelope(SESSION.client_id, SESSION.seq, 123_456, command).encode()

    machine = StateMachine()
    seed = Envelope(0, 0, 1, v.put(pb.PutRequest(key=KEY, value=OLD)))
    machine.apply(Entry(1, 1, data=seed.encode()))
    applied = machine.apply(Entry(2, 1, data=data))
    result: Any = applied.result
    outcome = encode_outcome(result)
    make_response: Callable[[Any, Any, int], Any] = put_response if kind == "put" else txn_response
    response = make_response(_header, result, applied.index)
    result_bytes = pb.PipelineResult(id=1, **{field: response}).SerializeToString()
    parsed_result = getattr(pb.PipelineResult.FromString(result_bytes), field)

    def client_build() -> object:
        if kind == "put":
            return pb.PutRequest(session=SESSION, key=KEY, value=NEW, lease=0)
        return _cas_request()

    def request_wire() -> object:
        call = pb.PipelineCall(id=1, timeout_ms=1000, **{field: request})
        return getattr(pb.PipelineCall.FromString(call.SerializeToString()), field)

    def validate_piece() -> object:
        return validate(request), v.session(request.session)

    def command_encode() -> object:
        return Envelope(SESSION.client_id, SESSION.seq, 123_456, command).encode()

    def response_build() -> object:
        return make_response(_header, result, applied.index)

    def response_wire() -> object:
        out = pb.PipelineResult(id=1, **{field: response}).SerializeToString()
        return getattr(pb.PipelineResult.FromString(out), field)

    def client_result() -> object:
        if kind == "put":
            return int(parsed_result.header.revision)
        return bool(parsed_result.succeeded)  # as `Client.cas`

    return {
        "client build": client_build,
        "request wire": request_wire,
        "validate": validate_piece,
        "command encode": command_encode,
        "command decode": lambda: Envelope.decode(data),
        "apply": _Machine(kind, iterations).apply_next,
        "outcome encode": lambda: encode_outcome(result),
        "outcome decode": lambda: decode_outcome(outcome),
        "response build": response_build,
        "response wire": response_wire,
        "client result": client_result,
    }


def time_piece(piece: Piece, iterations: int) -> float:
    """µs of process CPU per call of `piece`, over `iterations` calls (GC off while timing,
    as a steady state between collections)."""
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        for _ in range(iterations):
            piece()
        return (time.process_time() - started) / iterations * 1e6
    finally:
        gc.enable()


def one_round(iterations: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in ("put", "cas"):
        for name, piece in pieces(kind, iterations).items():
            out.setdefault(name, {})[kind] = round(time_piece(piece, iterations), 2)
    return out


def table(rounds: list[dict[str, dict[str, float]]]) -> str:
    names = list(rounds[0])
    lines = [f"{'piece':<16} {'put µs':>8} {'cas µs':>8} {'cas-put':>8}"]
    totals = {"put": 0.0, "cas": 0.0}
    for name in names:
        med = {k: statistics.median(r[name][k] for r in rounds) for k in ("put", "cas")}
        totals["put"] += med["put"]
        totals["cas"] += med["cas"]
        lines.append(
            f"{name:<16} {med['put']:>8.2f} {med['cas']:>8.2f} {med['cas'] - med['put']:>8.2f}"
        )
    lines.append(
        f"{'total':<16} {totals['put']:>8.2f} {totals['cas']:>8.2f} "
        f"{totals['cas'] - totals['put']:>8.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.txn_cost")
    p.add_argument("--iterations", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    rounds = []
    for _ in range(a.rounds):
        result = one_round(a.iterations)
        rounds.append(result)
        print(json.dumps({"figure": "txn_cost", "unit": "µs/op", "iterations": a.iterations,
                          "pieces": result}))  # fmt: skip
    print(f"median of {a.rounds} rounds, {a.iterations} iterations each (process CPU):")
    print(table(rounds))


if __name__ == "__main__":
    main()
