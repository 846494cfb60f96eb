"""What the Raft loop tells the rest of the member: `LoopObserver` (applies, restores, leader
changes; for the client-facing server) and `LoopEvents` (proposals and applied batches; for
the metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coordinator.fsm import Applied


class LoopObserver(Protocol):
    """Told what the member did, from inside `run()`: between two applies, so it may read the
    state machine, and it must neither block nor raise (an exception is logged and dropped).
    The client-facing server uses this to wake blocked requests and watch streams."""

    def on_applied(self, batch: Sequence[Applied]) -> None:
        """Entries just applied, in log order (the state machine already reflects them)."""
        ...

    def on_restored(self) -> None:
        """The state machine was replaced by a snapshot: everything may have changed at once,
        and the effects of the entries it covers were never reported."""
        ...

    def on_leader(self, leader: int) -> None:
        """The leader this member knows of changed (0: none known)."""
        ...

    def on_stop(self) -> None:
        """`run()` is ending; nothing more will be reported."""
        ...


class LoopEvents(Protocol):
    """Told of each proposal's life and of each applied batch, for metrics (which observe
    the loop instead of overriding its methods, so no call path can bypass the count). Called
    on the event loop; must neither block nor raise (an exception is logged and dropped)."""

    def proposal_started(self) -> None:
        """A proposal was accepted for replication (`submit`, `change_membership`)."""
        ...

    def proposal_settled(self, error: BaseException | None) -> None:
        """A started proposal's caller has its outcome: None (committed and applied, even if
        the state machine answered with an error result), the exception it got
        (NotLeaderError, ProposalLostError, StoppedError...), or CancelledError if the
        caller stopped waiting first (its proposal may still commit)."""
        ...

    def applied_batch(self, entries: int, duration_s: float) -> None:
        """A batch of committed entries was applied, taking `duration_s` (any snapshot the
        batch triggered included)."""
        ...
