"""Deliberately broken member cores, to prove that tests/core's scenarios bite.

Each overrides the one small method of `MemberCore` that embodies a rule of what a member may
tell its callers (as `mutants.py` does for the Raft rules). The production core has no flags
for this; only tests build these.
"""

from __future__ import annotations

from coordinator.core import Completed, MemberCore
from coordinator.fsm import Applied


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


CORE_MUTANTS: dict[str, type[MemberCore]] = {
    "answers_before_apply": AnswersBeforeApply,
    "reads_without_quorum": ReadsWithoutQuorum,
}
