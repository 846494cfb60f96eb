"""The one module that reads the system clock.

Everything else receives time from a `Clock`: the runtime's ticker (monotonic seconds, for
Raft ticks and timeouts) and the leader's stamp on every command (wall-clock milliseconds,
so lease and lock times mean something to people). The replicated state machine never reads
either: it sees only the stamp inside each entry, made monotonic across leaders by taking
the maximum, so a replica replaying the log decides exactly what the leader decided.

`ManualClock` is the in-memory twin for tests: time moves only when the test says so.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic_s(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards; for timers only."""
        ...

    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch; may jump; for stamps shown to people."""
        ...


class SystemClock:
    def monotonic_s(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    def __init__(self, start_s: float = 0.0, wall_start_ms: int = 1_700_000_000_000) -> None:
        self._now_s = start_s
        self._wall_start_ms = wall_start_ms
        self._start_s = start_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now_s += seconds

    def monotonic_s(self) -> float:
        return self._now_s

    def wall_ms(self) -> int:
        return self._wall_start_ms + round((self._now_s - self._start_s) * 1000)
