"""One Pipeline stream to one member: many calls in flight, sent and answered in batches.

The `Client` sends its small calls (puts, reads, CAS, sequence blocks, locks) here instead of
one unary RPC each (see concord.v1.Pipeline). Calls queue while the previous write is on its
way and go out together in the next `PipelineRequest`; answers come back in any order and
are matched by id. A call's error result, or the stream breaking under it, surfaces as
`CallFailed`, which carries what the client's retry logic needs (status, message, leader
hint, whether the member is locked) exactly as a unary `AioRpcError` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import grpc

from coordinator.api.v1 import concord_pb2 as pb

LOCKED_METADATA_KEY = "concord-locked"
LEADER_METADATA_KEY = "concord-leader"
QUEUED_METADATA_KEY = "concord-queued"
WATCH_RESUME_METADATA_KEY = "concord-watch-resume"
"""On a watch the member ended as a slow consumer: the revision to resume from."""


class CallFailed(Exception):
    """A pipelined call did not succeed: its error result, or the stream broke."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        leader: str = "",
        locked: bool = False,
        queued: bool = False,
        answering: bool = False,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.status = code
        self.details = details
        self.leader = leader
        self.locked = locked
        self.queued = queued
        self.answering = answering
        """The member was heard from after the call went out (it answered the call, or
        acknowledged it and answered others): alive, if slow, so not to be left as a
        stopped one."""


class Pipe:
    def __init__(self, stub: Any, endpoint: str) -> None:  # noqa: ANN401 (a generated stub)
        self.endpoint = endpoint
        self._stream = stub.Stream()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._queue: list[pb.PipelineCall] = []
        self._wake = asyncio.Event()
        self._heard_at = -1.0
        """When the member last sent anything on the stream (the loop's clock)."""
        self.broken: CallFailed | None = None
        """Set once the stream has ended: every later call fails with it (the client then
        opens a new pipe)."""
        self._tasks = [
            asyncio.ensure_future(self._write_loop()),
            asyncio.ensure_future(self._read_loop()),
        ]

    async def send(self, kind: str, request: Any, timeout_s: float) -> Any:  # noqa: ANN401
        """Run one call (`kind` = the PipelineCall field) and return its response message,
        within `timeout_s` (one attempt's budget: the member is told it as the call's
        deadline, and the caller waits no longer)."""
        if self.broken is not None:
            raise self.broken
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        done: asyncio.Future[Any] = loop.create_future()
        self._waiting[call_id] = done
        self._queue.append(
            pb.PipelineCall(id=call_id, timeout_ms=max(1, int(timeout_s * 1000)), **{kind: request})
        )
        self._wake.set()
        sent_at = loop.time()
        try:
            async with asyncio.timeout(timeout_s):
                return await done
        except TimeoutError:
            answering = self._heard_at > sent_at
            failed = CallFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{self.endpoint} did not answer within {format_s(timeout_s)}",
                answering=answering,
            )
            if not answering:
                # Nothing at all came back on the stream since this call went out, not even
                # the member's acknowledgement of the batch (a member stopped, a connection
                # black-holed): the whole stream is suspect, so break it, and the retry opens
                # a fresh one. A member that acknowledges or answers meanwhile is only slow
                # with this call: the stream and every other call on it stay.
                self._fail(failed)
            raise failed from None
        finally:
            self._waiting.pop(call_id, None)

    async def close(self) -> None:
        self._fail(CallFailed(grpc.StatusCode.CANCELLED, "the client closed"))
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    batch, self._queue = self._queue, []
                    await self._stream.write(pb.PipelineRequest(calls=batch))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._fail(await _stream_error(self._stream, err, self.endpoint))

    async def _read_loop(self) -> None:
        try:
            async for response in self._stream:
                self._heard_at = asyncio.get_running_loop().time()
                for r in response.results:
                    done = self._waiting.get(r.id)
                    if done is None or done.done():
                        continue  # the caller gave up on it
                    kind = r.WhichOneof("response")
                    if kind == "error":
                        e = r.error
                        failed = CallFailed(
                            _status(e.code),
                            e.message,
                            leader=e.leader,
                            queued=e.queued,
                            answering=True,
                        )
                        done.set_exception(failed)
                    else:
                        done.set_result(getattr(r, kind))
            self._fail(CallFailed(grpc.StatusCode.UNAVAILABLE, f"{self.endpoint} ended the stream"))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._fail(await _stream_error(self._stream, err, self.endpoint))

    def _fail(self, err: CallFailed) -> None:
        """End the pipe: every call on it fails with `err`, and its tasks stop."""
        if self.broken is None:
            self.broken = err
            self._stream.cancel()
            current = asyncio.current_task()
            for task in self._tasks:
                if task is not current:
                    task.cancel()
        for done in self._waiting.values():
            if not done.done():
                done.set_exception(err)
        self._waiting.clear()
        self._queue.clear()


def format_s(seconds: float) -> str:
    """A duration for a message: "2 ms", "150 ms", "1.5 s"."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:g} s"


def _status(name: str) -> grpc.StatusCode:
    try:
        return grpc.StatusCode[name]
    except KeyError:
        return grpc.StatusCode.UNKNOWN


async def _stream_error(stream: Any, err: Exception, endpoint: str) -> CallFailed:  # noqa: ANN401
    """What a broken stream means for the calls on it. Their outcome is unknown, so the
    status is a retryable one (the retry reuses each call's session)."""
    if isinstance(err, grpc.aio.AioRpcError):
        metadata = dict(err.trailing_metadata() or ())
        code = err.code()
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            # Refused before any call on it ran (a workload port without a good token, a
            # member without the API): definite, not retried.
            if code in (
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            ):
                return CallFailed(code, err.details() or "")
            code = grpc.StatusCode.UNAVAILABLE
        return CallFailed(
            code,
            err.details() or f"the stream to {endpoint} broke",
            leader=str(metadata.get(LEADER_METADATA_KEY, "")),
            locked=bool(metadata.get(LOCKED_METADATA_KEY)),
        )
    return CallFailed(
        grpc.StatusCode.UNAVAILABLE, f"the stream to {endpoint} broke: {type(err).__name__}"
    )
