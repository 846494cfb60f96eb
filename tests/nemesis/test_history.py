"""The nemesis's recorder: every call is timed and classified as ok, fail or info (unknown).

Pure asyncio, no sockets: the calls are coroutines that answer, raise or never return.
"""

from __future__ import annotations

import asyncio

import pytest

from coordinator.client import ConcordError
from coordinator.testing.nemesis.history import Clock, Recorder


async def answer(value: object) -> object:
    return value


async def refuse(code: str) -> object:
    raise ConcordError(code, "no")


async def never() -> object:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_outcomes_are_classified_by_what_the_client_can_know() -> None:
    async def scenario() -> Recorder:
        rec = Recorder("w", Clock())
        await rec.run(1, "read", {}, lambda: answer(b"v"), timeout_s=1, convert=bytes.decode)
        await rec.run(1, "write", {}, lambda: refuse("FAILED_PRECONDITION"), timeout_s=1)
        await rec.run(1, "write", {}, lambda: refuse("UNAVAILABLE"), timeout_s=1)
        await rec.run(2, "write", {}, lambda: refuse("DEADLINE_EXCEEDED"), timeout_s=1)
        await rec.run(3, "write", {}, never, timeout_s=0.01)
        return rec

    rec = asyncio.run(scenario())
    assert [(op.outcome, op.result) for op in rec.ops] == [
        ("ok", "v"),
        ("fail", None),  # the service refused: it did not happen
        ("info", None),  # gave up: it may have happened
        ("info", None),
        ("info", None),  # our own timeout
    ]
    assert rec.ops[4].error == "timeout"
    for op in rec.ops:
        assert (op.ret_us is None) == (op.outcome == "info")
        assert op.ret_us is None or op.ret_us >= op.call_us
    assert rec.counts() == {"ok": 1, "fail": 1, "info": 3}


def test_a_cancelled_call_is_recorded_as_unknown_and_the_cancellation_goes_on() -> None:
    async def scenario() -> Recorder:
        rec = Recorder("w", Clock())
        task = asyncio.create_task(rec.run(1, "write", {}, never, timeout_s=10))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return rec

    rec = asyncio.run(scenario())
    assert [(op.outcome, op.error) for op in rec.ops] == [("info", "cancelled")]
