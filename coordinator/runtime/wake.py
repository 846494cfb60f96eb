"""Wake: the Raft loop's one wake-up flag."""

from __future__ import annotations

import asyncio


class Wake:
    """asyncio.Event for the loop's one waiter, with a timeout but without the task that
    `asyncio.wait_for` creates per wait: the loop waits once per batch of input, on the
    latency path of every request."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self, timeout_s: float) -> None:
        """Until `set` (or already set) or `timeout_s` passes."""
        if self._flag:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
