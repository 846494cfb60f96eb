"""Histories: every client operation as the client saw it, Jepsen-style.

Each operation is recorded once it ends, with its invocation and completion times (a
monotonic clock, microseconds since the run began) and one of three outcomes:

- `ok`: the service answered; `result` is what it said;
- `fail`: the service refused with a status that means the request was not executed
  (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...);
- `info`: the outcome is unknown. The client gave up (a timeout, UNAVAILABLE after its
  retries, the scenario's end) after the request may have reached a member: it may have been
  applied, then or later, or never. Checkers treat it as possibly applied at any time after
  its invocation, as Jepsen and Porcupine do.

After an `info` operation the client continues as a *new process* (a new id): a process
is sequential, and its unknown operation stays open forever.

Times come from `time.perf_counter_ns` (CLOCK_MONOTONIC on Linux); `time.monotonic` itself is
read only in `coordinator/runtime/clock.py` (tests/test_layout.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

from coordinator.client import ConcordError

T = TypeVar("T")

Outcome = Literal["ok", "fail", "info"]

DEFINITE_FAILURES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)
"""Statuses after which the request certainly did not take effect; anything else (UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, CANCELLED, ...) leaves the outcome unknown."""


class Clock:
    """Microseconds since the clock was made, from a monotonic source."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter_ns()

    def now_us(self) -> int:
        return (time.perf_counter_ns() - self._t0) // 1000


@dataclass(frozen=True, slots=True)
class Op:
    """One operation. Invariant: `ret_us is None` iff `outcome == "info"` (unknown)."""

    workload: str
    process: int
    f: str
    """What was asked: read, write, cas, next, add, acquire, ..."""
    args: dict[str, object]
    call_us: int
    ret_us: int | None
    outcome: Outcome
    result: object = None
    error: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Recorder:
    """Collects the operations of one workload; `run` times and classifies one call."""

    def __init__(self, workload: str, clock: Clock) -> None:
        self.workload = workload
        self.clock = clock
        self.ops: list[Op] = []

    async def run(
        self,
        process: int,
        f: str,
        args: dict[str, object],
        call: Callable[[], Awaitable[T]],
        *,
        timeout_s: float,
        convert: Callable[[T], object] = lambda r: r,
    ) -> tuple[Op, T | None]:
        """Run `call()` within `timeout_s`; record and return the op and the raw result
        (None unless ok). Cancellation is recorded as `info` and re-raised."""
        call_us = self.clock.now_us()

        def record(outcome: Outcome, result: object = None, error: str = "") -> Op:
            ret_us = None if outcome == "info" else self.clock.now_us()
            op = Op(self.workload, process, f, args, call_us, ret_us, outcome, result, error)
            self.ops.append(op)
            return op

        try:
            async with asyncio.timeout(timeout_s):
                raw = await call()
        except ConcordError as err:
            outcome: Outcome = "fail" if err.code in DEFINITE_FAILURES else "info"
            return record(outcome, error=f"{err.code}: {err.message}"), None
        except TimeoutError:
            return record("info", error="timeout"), None
        except asyncio.CancelledError:
            record("info", error="cancelled")
            raise
        except Exception as err:  # a client-side surprise: unknown outcome, noted
            return record("info", error=f"{type(err).__name__}: {err}"), None
        return record("ok", convert(raw)), raw

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "fail": 0, "info": 0}
        for op in self.ops:
            out[op.outcome] += 1
        return out
