"""Virtual time for the tests above the core (coordinator.testing.virtual_time), and the guard
that keeps real sleeps out of tests/runtime, tests/client and tests/server.

A real sleep there is wall time every run of the inner loop pays, and a race with a loaded
machine. Tests that need real time (real gRPC deadlines, real sockets cut for a while) are
marked `process` and named below; a few condition polls over real sockets remain, named too.
Both lists may only shrink: an entry whose sleep is gone fails the guard until removed.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import threading
import time
from pathlib import Path

import pytest

from coordinator.testing.virtual_time import (
    CountedThreads,
    LoopClock,
    run_virtual,
    until,
    virtual_loop,
)

REPO = Path(__file__).resolve().parents[1]
GUARDED = ("tests/runtime", "tests/client", "tests/server")

# Tests marked `process` that sleep for real, each for a reason that needs the wall clock.
REAL_TIME_TESTS = frozenset(
    {
        # gRPC call deadlines of 1 s and 1.5 s: the waiter must outlast several real rounds.
        "tests/client/test_holds.py::test_a_wait_outlasts_a_whole_call_budget_shorter_than_one_round",
        # A real outage (every proxied connection cut) shorter than the TTL, then restored.
        "tests/client/test_keepalive.py::test_transient_failures_shorter_than_the_ttl_keep_the_lease",
        # Renewals answered 1.5 s late, past the keeper's old real-time silence bound of 1 s.
        "tests/client/test_keepalive.py::test_a_leader_that_answers_renewals_late_keeps_the_stream",
        # Real gRPC deadlines (1 s, 5 s) decide when "still queued" is answered.
        "tests/server/test_lock.py::test_a_waiter_near_its_deadline_is_told_so_and_keeps_its_place",
    }
)  # fmt: skip

# Helpers that poll a condition over real sockets or real gRPC (no event to wait on), each
# returning as soon as it holds: not a fixed sleep, but wall-clock polling all the same.
REAL_TIME_POLLS = frozenset(
    {
        "tests/runtime/frame_kit.py::wait_for",
        "tests/runtime/test_grpc_transport.py::wait_for",
        "tests/runtime/test_grpc_transport.py::test_a_peer_of_another_cluster_is_refused",
        "tests/runtime/test_grpc_transport.py::test_peers_are_added_changed_and_removed_at_run_time",
        "tests/runtime/test_metrics.py::_until",
        "tests/runtime/test_recovery.py::wait_until",
        "tests/server/harness.py::wait_for",
        "tests/server/harness.py::eventually",
    }
)  # fmt: skip


def _is_real_sleep(call: ast.Call) -> bool:
    """time.sleep(x) / asyncio.sleep(x) with x other than a literal 0 (a bare yield)."""
    func = call.func
    if not (
        isinstance(func, ast.Attribute)
        and func.attr == "sleep"
        and isinstance(func.value, ast.Name)
        and func.value.id in {"time", "asyncio"}
    ):
        return False
    arg = call.args[0] if call.args else None
    return not (isinstance(arg, ast.Constant) and arg.value == 0)


def _marked_process(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Attribute)
        and d.attr == "process"
        and ast.unparse(d) == "pytest.mark.process"
        for d in fn.decorator_list
    )


def _sleeps() -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """ "path::top-level function" -> that function, for every real sleep in the guarded dirs."""
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for folder in GUARDED:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for top in ast.walk(tree):
                if not isinstance(top, ast.Module | ast.ClassDef):
                    continue
                for fn in top.body:
                    if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                        continue
                    calls = (n for n in ast.walk(fn) if isinstance(n, ast.Call))
                    if any(_is_real_sleep(c) for c in calls):
                        found[f"{path.relative_to(REPO)}::{fn.name}"] = fn
    return found


def test_no_new_real_sleeps_above_the_core() -> None:
    found = _sleeps()
    new = sorted(set(found) - REAL_TIME_TESTS - REAL_TIME_POLLS)
    assert not new, (
        "real sleeps in tests above the core: run on virtual time "
        "(coordinator.testing.virtual_time) or wait for the event itself; a test that needs "
        f"the wall clock is marked `process` and listed here: {new}"
    )
    stale = sorted((REAL_TIME_TESTS | REAL_TIME_POLLS) - set(found))
    assert not stale, f"no longer sleeping: take them off the lists: {stale}"
    unmarked = sorted(name for name in REAL_TIME_TESTS if not _marked_process(found[name]))
    assert not unmarked, f"real-time tests must be marked `process`: {unmarked}"


def test_the_guard_sees_a_sleep() -> None:
    def calls(src: str) -> list[bool]:
        return [_is_real_sleep(n) for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)]

    assert calls("await asyncio.sleep(0.01)") == [True]
    assert calls("time.sleep(1)") == [True]
    assert calls("await asyncio.sleep(delay)") == [True]
    assert calls("await asyncio.sleep(0)") == [False]
    assert calls("loop.sleep(1)") == [False]


# --- the virtual-time loop --------------------------------------------------------------------


def test_an_hour_of_sleep_takes_no_wall_time_and_timers_fire_in_order() -> None:
    fired: list[tuple[str, float]] = []

    async def main() -> None:
        loop = virtual_loop()
        loop.call_later(2.0, lambda: fired.append(("b", loop.time())))
        loop.call_later(1.0, lambda: fired.append(("a", loop.time())))
        await asyncio.sleep(3600)
        fired.append(("end", loop.time()))

    started = time.monotonic()
    run_virtual(main())
    assert time.monotonic() - started < 1.0
    assert fired == [("a", 1.0), ("b", 2.0), ("end", 3600.0)]


def test_time_stands_still_while_a_thread_works() -> None:
    """Virtual time never passes while a thread's job is unfinished: a Raft loop awaiting its
    fsync must not see its peers' election timers fire meanwhile."""
    seen: list[float] = []

    def work() -> float:
        time.sleep(0.05)  # real work, on the thread
        return 1.0

    async def ticker(loop: asyncio.AbstractEventLoop) -> None:
        while True:
            await asyncio.sleep(0.01)
            seen.append(loop.time())

    async def main() -> None:
        loop = virtual_loop()
        ticks = asyncio.create_task(ticker(loop))
        await asyncio.sleep(0)
        with CountedThreads(loop, 1) as pool:
            assert await asyncio.wrap_future(pool.submit(work)) == 1.0
            assert loop.time() == 0.0 and seen == []
            assert await loop.run_in_executor(pool, work) == 1.0
            assert await asyncio.to_thread(work) == 1.0
        assert loop.time() == 0.0 and seen == []
        await asyncio.sleep(0.025)
        assert seen == pytest.approx([0.01, 0.02])
        ticks.cancel()

    run_virtual(main())


def test_a_started_thread_job_cannot_be_cancelled_and_a_queued_one_can() -> None:
    async def main() -> None:
        gate = threading.Event()
        with CountedThreads(virtual_loop(), 1) as pool:
            running = pool.submit(gate.wait, 10)
            queued = pool.submit(lambda: None)
            await asyncio.sleep(0)
            assert queued.cancel() and queued.cancelled()
            while not running.running():
                await asyncio.to_thread(gate.wait, 0.001)
            assert not running.cancel()
            gate.set()
            assert await asyncio.wrap_future(running) is True

    run_virtual(main())


def test_threads_that_are_not_counted_do_not_stop_time() -> None:
    """Only counted threads hold virtual time: an executor the loop was not given (gRPC's,
    a plain ThreadPoolExecutor anywhere in the process) is left as it is."""
    gate = threading.Event()

    async def main() -> None:
        loop = virtual_loop()
        with concurrent.futures.ThreadPoolExecutor(1) as plain:
            job = plain.submit(gate.wait, 5)
            assert type(job) is concurrent.futures.Future
            await asyncio.sleep(10)
            assert loop.time() == 10.0 and not job.done()
            gate.set()

    started = time.monotonic()
    run_virtual(main())
    assert time.monotonic() - started < 2.0


def test_until_and_the_loop_clock_run_on_loop_time() -> None:
    async def main() -> None:
        loop = virtual_loop()
        clock = LoopClock()
        start_ms = clock.wall_ms()
        await until(lambda: loop.time() >= 90.0, timeout_s=100.0, step_s=0.5)
        assert clock.monotonic_s() == loop.time()
        assert 90_000 <= clock.wall_ms() - start_ms <= 90_500
        with pytest.raises(TimeoutError):
            await until(lambda: False, timeout_s=5.0)

    run_virtual(main())


def test_until_refuses_a_real_loop() -> None:
    with pytest.raises(RuntimeError, match="not on virtual time"):
        asyncio.run(until(lambda: True))
