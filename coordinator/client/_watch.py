"""The `Client`'s watch: a stream of changes that resumes where it was after a broken stream
(on this or another member), so a consumer sees every change once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import grpc

from coordinator.api.v1 import concord_pb2 as pb

from ._calls import Calls, every_locked, unusable_advice
from ._errors import Unavailable, error_for
from ._pipe import WATCH_RESUME_METADATA_KEY, format_s
from ._types import Event


class WatchCalls(Calls):
    """`watch`."""

    async def watch(
        self, key: bytes, range_end: bytes = b"", *, start_revision: int = 0
    ) -> AsyncGenerator[Event, None]:
        """Every change to `key` (or to [key, range_end); b"\\0" = every key >= key) from
        `start_revision` (0: from now on), in revision order, until the caller stops
        iterating. Whenever a stream ends without a final answer (a member stops or is
        unreachable, a transport reset, or the member ended it because this consumer fell
        behind: RESOURCE_EXHAUSTED "slow consumer") the watch resumes, on this or another
        member, from the revision after the last event seen, so every event is seen once, in
        order. `OutOfRange` (final) means the history no longer reaches back that far: the
        events in between were compacted while the watch was away; read the current state
        and watch again from the revision the message names."""
        next_revision = start_revision
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout_s
        delay_s = 0.02
        locked: set[str] = set()
        wrong: dict[str, str] = {}
        while True:
            endpoint = self.endpoints[self._current % len(self.endpoints)]
            req = pb.WatchRequest(key=key, range_end=range_end, start_revision=next_revision)
            stream = self._stubs_for(endpoint).watch.Watch(req)
            try:
                async for resp in stream:
                    deadline = loop.time() + self.timeout_s
                    delay_s = 0.02
                    wrong.clear()
                    if next_revision == 0:
                        next_revision = int(resp.header.revision) + 1
                    for event in resp.events:
                        next_revision = int(event.revision) + 1
                        yield Event._from_pb(event)
            except grpc.RpcError as exc:
                err = self._failure(exc, endpoint)
                if _slow_consumer(exc):
                    # The member ended this stream because it fell behind; everything before
                    # `next_revision` was seen, so resume from there (on the same member).
                    delay_s = 0.02
                    continue
                if not err.retryable:
                    raise error_for(err.code.name, err.details) from None
                if err.locked:
                    locked.add(endpoint)
                    if locked.issuperset(self.endpoints):
                        message = every_locked(self.endpoints, err.details)
                        raise Unavailable(message, locked=True) from None
                if err.wrong or err.unreachable:
                    wrong[endpoint] = err.wrong or err.unreachable
                    if set(wrong).issuperset(self.endpoints) and (
                        err.wrong or loop.time() - started >= self.connect_timeout_s
                    ):
                        raise Unavailable(unusable_advice(wrong)) from None
                if loop.time() >= deadline:
                    raise error_for(
                        err.code.name,
                        f"the watch stream broke and no member resumed it within "
                        f"{format_s(self.timeout_s)}: {err.details}",
                    ) from None
            finally:
                stream.cancel()
            if loop.time() >= deadline:
                raise Unavailable(
                    f"the watch stream keeps ending and no member resumed it within "
                    f"{format_s(self.timeout_s)}"
                )
            self._move_past(endpoint)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)


def _slow_consumer(exc: grpc.RpcError) -> bool:
    """A watch stream ended by the member because the consumer fell behind (it names the
    revision to resume from; `Client.watch` tracks its own)."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    return any(key == WATCH_RESUME_METADATA_KEY for key, _ in exc.trailing_metadata() or ())
