"""An asyncio event loop on virtual time, for tests of code that waits on `loop.time()`,
`asyncio.sleep`, timeouts and `call_later` (the Raft loop's ticks, the watch fan-out's
pauses, the client's schedules) but needs no real socket.

`VirtualTimeLoop.time()` starts at 0 and moves only when the loop would otherwise sleep:
with nothing ready to run, it jumps straight to the next timer. A test's `asyncio.sleep(5)`
then takes no wall time, and what the code under test does in those 5 seconds (ticks,
elections, expiries) still happens, in the same order as on a real loop with an infinitely
fast machine.

Work on threads is real time: while a job on a `CountedThreads` executor is unfinished,
virtual time stands still and the loop waits for it for real, as if the job took no time at
all. Otherwise a jump could fire election timers while a leader's fsync is under way, which
no real machine does at that speed. The loop's default executor is one (`asyncio.to_thread`,
`run_in_executor(None, ...)`), and code under test that makes its own threads is handed
counted ones (`counted_thread`, for the Raft loop's `threads`). Any other executor in the
process (gRPC's, a test's plain `ThreadPoolExecutor`) is left alone and not counted: virtual
time runs on while its jobs do.

Not for real sockets or gRPC: their I/O is real time, invisible to the jump rule (the loop
cannot tell "idle" from "waiting for a reply"). Tests that need those stay on real time,
marked `process`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

_T = TypeVar("_T")
_P = ParamSpec("_P")

_WALL_START_MS = 1_700_000_000_000


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        self._threads_busy = 0
        self._threads_lock = threading.Lock()
        real: selectors.BaseSelector = self._selector  # type: ignore[has-type]
        self._selector = _JumpingSelector(real, self)
        self.set_default_executor(CountedThreads(self, thread_name_prefix="asyncio"))

    def time(self) -> float:
        return self._virtual_now

    def _jump(self, seconds: float) -> None:
        self._virtual_now += seconds

    def thread_job_started(self) -> None:
        with self._threads_lock:
            self._threads_busy += 1

    def thread_job_finished(self) -> None:
        with self._threads_lock:
            self._threads_busy -= 1

    @property
    def threads_busy(self) -> bool:
        with self._threads_lock:
            return self._threads_busy > 0

    async def shutdown_default_executor(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (asyncio.Runner passes one, from 3.12)
    ) -> None:
        """Wait for the default executor's threads to finish, for real: the wait is thread
        work like any other (virtual time stands still meanwhile, so `timeout`, virtual time
        like every timer here, could never pass: it is ignored)."""
        self.thread_job_started()
        try:
            await super().shutdown_default_executor()
        finally:
            self.thread_job_finished()


class _JumpingSelector(selectors.BaseSelector):
    """The loop's selector, except that a wait with nothing to wait for becomes a jump."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._real = real
        self._loop = loop

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: object = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: object = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if self._loop.threads_busy or timeout is None:
            # A thread's result (or a call from another thread) is what comes next; it
            # wakes the real selector through the loop's self-pipe. Virtual time waits.
            return self._real.select(None if timeout is None else _THREAD_POLL_S)
        self._loop._jump(timeout)
        return []


_THREAD_POLL_S = 0.05
"""A bound on one real wait for a thread, after which the loop checks again (the thread's
own completion wakes it sooner)."""


class CountedThreads(concurrent.futures.ThreadPoolExecutor):
    """A ThreadPoolExecutor whose unfinished jobs `loop` counts: its virtual time stands still
    until each is done (jobs may be submitted from any thread)."""

    def __init__(
        self, loop: VirtualTimeLoop, max_workers: int | None = None, thread_name_prefix: str = ""
    ) -> None:
        super().__init__(max_workers, thread_name_prefix)
        self._loop = loop

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> concurrent.futures.Future[_T]:
        inner = super().submit(fn, *args, **kwargs)
        loop = self._loop
        loop.thread_job_started()
        outer = _Mirror(inner)

        def finished(done: concurrent.futures.Future[_T]) -> None:
            # The caller's callbacks (asyncio.wrap_future's, which queue the result on the
            # loop) run inside these set_* calls, so the job stops counting only after its
            # result is queued: the loop never sees "no thread busy, nothing ready" between.
            if done.cancelled():
                concurrent.futures.Future.cancel(outer)
            elif (error := done.exception()) is not None:
                outer.set_exception(error)
            else:
                outer.set_result(done.result())
            try:
                loop.call_soon_threadsafe(loop.thread_job_finished)
            except RuntimeError:  # the loop is closed: nobody is counting any more
                loop.thread_job_finished()

        inner.add_done_callback(finished)
        return outer


class _Mirror(concurrent.futures.Future[_T]):
    """The future `submit` hands out: settled from the executor's own, after it."""

    def __init__(self, inner: concurrent.futures.Future[_T]) -> None:
        super().__init__()
        self._inner = inner

    def cancel(self) -> bool:
        # Only a job that has not started can be cancelled (the executor's rule); the
        # mirror follows once the executor's future is settled.
        return self._inner.cancel()

    def running(self) -> bool:
        return self._inner.running() or super().running()


def counted_thread(name: str) -> CountedThreads:
    """A `coordinator.runtime.threads.ThreadFactory` for code built on the running virtual
    loop: one thread named after `name`, whose jobs that loop counts. Its owner (the Raft
    loop, for its `threads`) shuts it down as it would a real one."""
    return CountedThreads(virtual_loop(), max_workers=1, thread_name_prefix=name)


def run_virtual(main: Awaitable[_T]) -> _T:
    """`asyncio.run(main)` on a VirtualTimeLoop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)  # type: ignore[arg-type]


def virtual_loop() -> VirtualTimeLoop:
    """The running loop, which must be virtual (helpers that poll rely on it)."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise RuntimeError("not on virtual time: run the test with run_virtual()")
    return loop


class LoopClock:
    """A `coordinator.runtime.clock.Clock` reading the running loop's time: on a
    VirtualTimeLoop, members tick by virtual time (wall stamps move with it)."""

    def monotonic_s(self) -> float:
        return asyncio.get_running_loop().time()

    def wall_ms(self) -> int:
        return _WALL_START_MS + round(asyncio.get_running_loop().time() * 1000)


async def until(cond: Callable[[], bool], timeout_s: float = 30.0, step_s: float = 0.005) -> None:
    """Wait until `cond()` holds, checking every `step_s` of virtual time, for at most
    `timeout_s` of virtual time (a wrong build fails rather than hangs)."""
    loop = virtual_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() >= deadline:
            raise TimeoutError(f"not within {timeout_s} s of virtual time")
        await asyncio.sleep(step_s)
