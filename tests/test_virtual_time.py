"""Virtual time for the tests above the core (coordinator.testing.virtual_time)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest

from coordinator.testing.virtual_time import LoopClock, run_virtual, until, virtual_loop

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
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
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
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
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


def test_until_and_the_loop_clock_run_on_loop_time() -> None:
    async def main() -> None:
        loop = virtual_loop()
        clock = LoopClock()
        start_ms = clock.wall_ms()
        await until(lambda: loop.time() >= 90.0, timeout_s=100.0)
        assert clock.monotonic_s() == loop.time()
        assert 90_000 <= clock.wall_ms() - start_ms <= 90_010
        with pytest.raises(TimeoutError):
            await until(lambda: False, timeout_s=5.0)

    run_virtual(main())


def test_until_refuses_a_real_loop() -> None:
    with pytest.raises(RuntimeError, match="not on virtual time"):
        asyncio.run(until(lambda: True))
