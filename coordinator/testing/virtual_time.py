"""An asyncio event loop on virtual time, for tests of code that waits on `loop.time()`,
`asyncio.sleep`, timeouts and `call_later` (the Raft loop's ticks, the watch fan-out's
pauses, the client's schedules) but needs no real socket.

`VirtualTimeLoop.time()` starts at 0 and moves only when the loop would otherwise sleep:
with nothing ready to run, it jumps straight to the next timer. A test's `asyncio.sleep(5)`
then takes no wall time, and what the code under test does in those 5 seconds (ticks,
elections, expiries) still happens, in the same order as on a real loop with an infinitely
fast machine.

Work on threads is real time: while a `ThreadPoolExecutor` job submitted from the loop (the
Raft loop's disk and snapshot threads, `asyncio.to_thread`) is unfinished, virtual time
stands still and the loop waits for it for real, as if the job took no time at all.
Otherwise a jump could fire election timers while a leader's fsync is under way, which no
real machine does at that speed.

Not for real sockets or gRPC: their I/O is real time, invisible to the jump rule (the loop
cannot tell "idle" from "waiting for a reply"). Tests that need those stay on real time,
marked `process`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import selectors
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

_T = TypeVar("_T")

_WALL_START_MS = 1_700_000_000_000


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        self._threads_busy = 0
        self._threads_lock = threading.Lock()
        real: selectors.BaseSelector = self._selector  # type: ignore[has-type]
        self._selector = _JumpingSelector(real, self)

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


_real_submit = concurrent.futures.ThreadPoolExecutor.submit
_patch_lock = threading.Lock()
_patched = [0]
"""How many `run_virtual` calls are under way (threads may run tests concurrently)."""


def _counting_submit(
    self: concurrent.futures.ThreadPoolExecutor,
    fn: Callable[..., _T],
    /,
    *args: object,
    **kw: object,
) -> concurrent.futures.Future[_T]:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if not isinstance(loop, VirtualTimeLoop):
        return _real_submit(self, fn, *args, **kw)
    loop.thread_job_started()
    inner = _real_submit(self, fn, *args, **kw)
    outer = _Mirror(inner)

    def finished(done: concurrent.futures.Future[_T]) -> None:
        # The caller's callbacks (asyncio.wrap_future's, which queue the result on the loop)
        # run inside these set_* calls, so the job stops counting only after its result is
        # queued: the loop never sees "no thread busy, nothing ready" in between.
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


@contextlib.contextmanager
def _count_thread_jobs() -> Iterator[None]:
    """ThreadPoolExecutor.submit, counted when called from a VirtualTimeLoop (executors are
    created by the code under test, which must not need to know it runs on virtual time)."""
    with _patch_lock:
        if _patched[0] == 0:
            concurrent.futures.ThreadPoolExecutor.submit = _counting_submit  # type: ignore[assignment,method-assign]
        _patched[0] += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patched[0] -= 1
            if _patched[0] == 0:
                concurrent.futures.ThreadPoolExecutor.submit = _real_submit  # type: ignore[method-assign]


def run_virtual(main: Awaitable[_T]) -> _T:
    """`asyncio.run(main)` on a VirtualTimeLoop."""
    with _count_thread_jobs(), asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
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
