"""One PySyncObj benchmark node: a `SyncObj` with PySyncObj's own batteries, behind a small
grpc.aio front, so the benchmark's load generator drives PySyncObj as it drives the others.

    python -m bench.systems.pysyncobj_node --self 127.0.0.1:P --partner 127.0.0.1:Q \\
        --partner 127.0.0.1:R --front 127.0.0.1:G --data-dir DIR

Design choices (also in docs/benchmarks.md):

- State: `ReplDict` (keys), `ReplCounter` (the sequence), and the replicated state behind
  `ReplLockManager` (`_ReplLockManagerImpl`: acquire/release/prolongate are its @replicated
  methods). The lock state is used directly rather than through `ReplLockManager` because
  the manager fixes one lock owner per process: every client of one node would be the same
  owner and never contend. Passing each client's own id as the owner keeps PySyncObj's
  semantics (a try-lock owned by a client id, auto-released after `autoUnlockTime`) and its
  code; it adds no queueing. `autoUnlockTime` is 120 s, longer than any cell, and nothing
  prolongs it (cells are shorter).
- Durability: `journalFile` (the Raft log, memory-mapped) and `fullDumpFile` (the snapshot
  written at log compaction) are in `--data-dir`. PySyncObj has no fsync setting: the journal
  is an mmap written without msync/fsync, and the term/vote metadata is written with
  `flush()` but no fsync. So it is the one system here whose acknowledged writes can be lost
  on a power failure; that is how it ships, and the benchmark reports it as such.
- Everything else is PySyncObj's default `SyncObjConf` (election timeout 0.4-1.4 s, batched
  append entries, automatic ticking in its own thread, log compaction every 5,000 entries).
  Batching makes a command wait for the next tick (about 100 ms at one request in flight);
  `--no-batch` (`python -m bench run --pysyncobj-no-batch`) sends each command at once, the
  setting PySyncObj documents for single-request latency.
- The front: one asyncio loop in the main thread serves gRPC; a call enqueues the replicated
  command with a callback (PySyncObj's asynchronous API) and awaits a future that the
  callback, run on SyncObj's own thread, settles through `call_soon_threadsafe`. A follower
  forwards commands to its leader itself (PySyncObj does). Both share the process' GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import grpc
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf  # type: ignore[import-untyped]
from pysyncobj.batteries import (  # type: ignore[import-untyped]
    ReplCounter,
    ReplDict,
    _ReplLockManagerImpl,
)

from ..protos import pysyncobj_front_pb2 as pb
from ..protos import pysyncobj_front_pb2_grpc as front_grpc

COMMAND_TIMEOUT_S = 30.0
LOCK_AUTO_UNLOCK_S = 120.0
_front: Any = front_grpc

_REASONS = {getattr(FAIL_REASON, n): n for n in dir(FAIL_REASON) if not n.startswith("_")}


class Front:
    def __init__(self, obj: SyncObj, kv: ReplDict, counter: ReplCounter, locks: Any) -> None:  # noqa: ANN401
        self.obj = obj
        self.kv = kv
        self.counter = counter
        self.locks = locks

    async def _replicate(self, method: Any, *args: Any, context: Any) -> Any:  # noqa: ANN401
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: int) -> None:  # noqa: ANN401
            if not fut.done():
                if error == FAIL_REASON.SUCCESS:
                    fut.set_result(result)
                else:
                    fut.set_exception(RuntimeError(_REASONS.get(error, str(error))))

        def callback(result: Any, error: int) -> None:  # noqa: ANN401 (SyncObj's thread)
            loop.call_soon_threadsafe(settle, result, error)

        method(*args, callback=callback)
        try:
            return await asyncio.wait_for(fut, COMMAND_TIMEOUT_S)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer from the log")
        except RuntimeError as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"pysyncobj: {err}")

    async def Put(self, req: Any, context: Any) -> Any:  # noqa: ANN401
        await self._replicate(self.kv.set, bytes(req.key), bytes(req.value), context=context)
        return pb.Empty()

    async def PutMany(self, req: Any, context: Any) -> Any:  # noqa: ANN401
        items = dict(zip((bytes(k) for k in req.keys), (bytes(v) for v in req.values), strict=True))
        await self._replicate(self.kv.update, items, context=context)
        return pb.Empty()

    async def Get(self, req: Any, context: Any) -> Any:  # noqa: ANN401
        value = self.kv.get(bytes(req.key))
        return pb.GetResponse(found=value is not None, value=value or b"")

    async def Next(self, req: Any, context: Any) -> Any:  # noqa: ANN401
        return pb.NextResponse(value=await self._replicate(self.counter.inc, context=context))

    async def TryLock(self, req: Any, context: Any) -> Any:  # noqa: ANN401
        acquired = await self._replicate(
            self.locks.acquire, req.name, req.owner, time.time(), context=context
        )
        return pb.LockResponse(acquired=bool(acquired))

    async def Unlock(self, req: Any, context: Any) -> Any:  # noqa: ANN401
        await self._replicate(self.locks.release, req.name, req.owner, context=context)
        return pb.Empty()

    async def Status(self, req: Any, context: Any) -> Any:  # noqa: ANN401
        obj = self.obj
        leader = obj._getLeader()
        return pb.StatusResponse(
            self=obj.selfNode.address,
            leader="" if leader is None else str(leader.address),
            ready=bool(obj.isReady()),
            commit_index=int(obj.raftCommitIndex),
            applied_index=int(obj.raftLastApplied),
            term=int(obj.raftCurrentTerm),
            partners=len(obj.otherNodes),
            partners_connected=sum(bool(obj.isNodeConnected(n)) for n in obj.otherNodes),
        )


async def serve(args: argparse.Namespace) -> None:
    args.data_dir.mkdir(parents=True, exist_ok=True)
    conf = SyncObjConf(
        journalFile=str(args.data_dir / "journal.bin"),
        fullDumpFile=str(args.data_dir / "dump.bin"),
        appendEntriesUseBatch=not args.no_batch,
    )
    kv, counter = ReplDict(), ReplCounter()
    locks = _ReplLockManagerImpl(LOCK_AUTO_UNLOCK_S)
    obj = SyncObj(args.self, args.partner, conf=conf, consumers=[kv, counter, locks])
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ]
    )
    handlers = Front(obj, kv, counter, locks)
    _front.add_NodeServicer_to_server(handlers, server)
    server.add_insecure_port(args.front)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"pysyncobj node {args.self}: front on {args.front}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    obj.destroy()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.systems.pysyncobj_node")
    p.add_argument("--self", required=True, help="this node's Raft HOST:PORT")
    p.add_argument("--partner", action="append", default=[], help="another node's HOST:PORT")
    p.add_argument("--front", required=True, help="gRPC front HOST:PORT")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument(
        "--no-batch",
        action="store_true",
        help="appendEntriesUseBatch=False: send each command at once (not PySyncObj's default)",
    )
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
