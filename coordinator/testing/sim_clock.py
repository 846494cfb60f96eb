"""One simulated host's monotonic clock: its own rate, which the nemesis may change.

Real clocks do not run at one rate: a quartz oscillator is off by tens of parts per million,
temperature moves it, NTP slews it. Everything a member decides by its clock (when it ticks,
so its election and heartbeat timeouts; the lessor's lease deadlines; the stamps a leader
puts on what it proposes) is measured on this clock, while the clients and the checkers
measure true (virtual global) time. A rate stays within `CLOCK_RATE_BOUND`
(`coordinator/fsm/lessor.py`) of true time: that is the bound the lessor's margin (and lease
reads) assume, so within it every check must pass, and a mutant that ignores the margin
must not.

The clock is piecewise linear in true time: `anchor_true_us` maps to `anchor_local_us`, and
from there local time runs at `rate` local microseconds per true microsecond.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SimClock:
    rate: float = 1.0
    anchor_true_us: int = 0
    anchor_local_us: int = 0

    def local_us(self, true_us: int) -> int:
        """This host's clock at true time `true_us` (never before the last anchor)."""
        return self.anchor_local_us + int((true_us - self.anchor_true_us) * self.rate)

    def set_rate(self, true_us: int, rate: float) -> None:
        """From `true_us` on, run at `rate` (the reading at `true_us` is unchanged)."""
        self.anchor_local_us = self.local_us(true_us)
        self.anchor_true_us = true_us
        self.rate = rate

    def true_delay_us(self, true_us: int, local_target_us: int) -> int:
        """True microseconds from `true_us` until this clock reads `local_target_us` at the
        current rate (0 if it already does); at least 1 when it must still advance."""
        ahead = local_target_us - self.local_us(true_us)
        if ahead <= 0:
            return 0
        return max(1, -int(-ahead // self.rate))
