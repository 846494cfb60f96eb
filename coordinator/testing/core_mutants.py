"""Deliberately broken member cores, to prove that tests/core's scenarios bite.

Each overrides the one small method of `MemberCore` that embodies a rule of what a member may
tell its callers (as `mutants.py` does for the Raft rules). The production core has no flags
for this; only tests build these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordinator.core import Completed, MemberCore
from coordinator.fsm import Applied, Lessor, Renewal


class AnswersBeforeApply(MemberCore):
    """Broken: acknowledges a proposal as soon as the leader appended it, before it is
    committed and applied (a client then believes in a write that a new leader may drop)."""

    def _track(self, index: int, term: int, pid: int) -> None:
        self._completed.append(Completed(pid, Applied(index, term)))


class ReadsWithoutQuorum(MemberCore):
    """Broken: serves a read barrier at the local commit index without confirming with a
    quorum that this member still leads (a deposed leader then serves stale reads)."""

    def _ask_read_index(self, rid: int) -> None:
        self._waiting_reads.append((self.node.status().commit, rid))
        self._serve_reads()


class RenewsWithoutDeadline(MemberCore):
    """Broken: acknowledges lease renewals without moving their leases' deadlines in the
    lessor, so a lease renewed every TTL/3 still expires a TTL after the leader started."""

    def renew_leases(self, asks: Sequence[tuple[int, int]]) -> list[Renewal] | None:
        if not self.is_leader or self.lessor.serving_term != self.node.term:
            return super().renew_leases(asks)  # not leading, or not serving yet: as ever
        return [Renewal.RENEWED if self.lessor.ttl_ms(i) else Renewal.UNKNOWN for i, _ in asks]


class _LessorWithoutMargin(Lessor):
    def _hold_ms(self, ttl_ms: int) -> int:
        return ttl_ms


class LeasesWithoutDriftMargin(MemberCore):
    """Broken: the lessor holds a lease exactly its TTL on the leader's own clock, with no
    margin for clock rates (`fsm/lessor.py`, rule f): a leader whose clock runs fast ends a
    lease before the TTL its holder was promised has passed in true time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 (as MemberCore's)
        super().__init__(*args, **kwargs)
        self.lessor.__class__ = _LessorWithoutMargin


CORE_MUTANTS: dict[str, type[MemberCore]] = {
    "answers_before_apply": AnswersBeforeApply,
    "reads_without_quorum": ReadsWithoutQuorum,
    "renews_without_deadline": RenewsWithoutDeadline,
    "leases_without_drift_margin": LeasesWithoutDriftMargin,
}
