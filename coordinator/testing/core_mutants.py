"""Deliberately broken member cores, to prove that tests/core's scenarios bite.

Each overrides the one small method of `MemberCore` that embodies a rule of what a member may
tell its callers (as `mutants.py` does for the Raft rules). The production core has no flags
for this; only tests build these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from coordinator.core import Completed, MemberCore
from coordinator.core.lease_reads import LeaseReads
from coordinator.fsm import Applied, Lessor, Renewal
from coordinator.raft import Message, MessageType


class AnswersBeforeApply(MemberCore):
    """Broken: acknowledges a proposal as soon as the leader appended it, before it is
    committed and applied (a client then believes in a write that a new leader may drop)."""

    def _track(self, index: int, term: int, pid: int) -> None:
        self._completed.append(Completed(pid, Applied(index, term)))


class ReadsWithoutQuorum(MemberCore):
    """Broken: serves a read barrier at the local commit index without confirming with a
    quorum that this member still leads (a deposed leader then serves stale reads)."""

    def _ask_read_index(self) -> None:
        self._reads.at(self.node.status().commit, self._reads.take_next())
        self._serve_reads()


class RenewsWithoutDeadline(MemberCore):
    """Broken: acknowledges lease renewals without moving their leases' deadlines in the
    lessor, so a lease renewed every TTL/3 still expires a TTL after the leader started."""

    def renew_leases(self, asks: Sequence[tuple[Sequence[int], int]]) -> list[Renewal] | None:
        if not self.is_leader or self.lessor.serving_term != self.node.term:
            return super().renew_leases(asks)  # not leading, or not serving yet: as ever
        return [
            Renewal.RENEWED if self.lessor.ttl_ms(i) else Renewal.UNKNOWN
            for ids, _ in asks
            for i in ids
        ]


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


class _LeaseWithoutOwnTermCommit(LeaseReads):
    def valid(
        self, now_ms: float, term: int, voters: Iterable[int], own_term_committed: bool
    ) -> bool:
        return super().valid(now_ms, term, voters, True)


class _LeaseWithoutQuorum(LeaseReads):
    def valid(
        self, now_ms: float, term: int, voters: Iterable[int], own_term_committed: bool
    ) -> bool:
        return own_term_committed and not self._transferred


class _LeaseFromTheAnswer(LeaseReads):
    def received(self, m: Message, term: int, leading: bool) -> None:
        super().received(m, term, leading)
        if leading and m.type is MessageType.HEARTBEAT_RESP and m.term == term:
            self._heard[m.frm] = self._now_ms


class _LeaseOnTicks(LeaseReads):
    """Time is ticks times the tick length: the ticks a stalled loop drops are never seen."""

    def clock(self, now_ms: float) -> None:
        pass

    def tick(self) -> None:
        super().tick()
        self._now_ms += self._tick_ms

    def renewal_due(self, now_ms: float, term: int) -> bool:
        return super().renewal_due(self._now_ms, term)

    def valid(
        self, now_ms: float, term: int, voters: Iterable[int], own_term_committed: bool
    ) -> bool:
        return super().valid(self._now_ms, term, voters, own_term_committed)


class _LeaseReadsMutant(MemberCore):
    broken: type[LeaseReads] = LeaseReads

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 (as MemberCore's)
        super().__init__(*args, **kwargs)
        if self._lease_reads is not None:
            self._lease_reads.__class__ = self.broken


class LeaseReadsWithoutDriftMargin(_LeaseReadsMutant):
    """Broken: a leader serves reads on its lease for a whole election timeout after the
    heartbeat a quorum answered, with no margin for clock rates or tick granularity, while a
    voter whose clock runs fast may already have voted for a new leader."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 (as MemberCore's)
        super().__init__(*args, **kwargs)
        if self._lease_reads is not None:
            self._lease_reads.lease_ms = self.cfg.election_ticks * self.cfg.tick_s * 1000


class LeaseReadsBeforeOwnTermCommit(_LeaseReadsMutant):
    """Broken: a new leader serves reads on its lease before it has committed an entry of
    its term, at a commit index that may be behind a write its predecessor acknowledged."""

    broken = _LeaseWithoutOwnTermCommit


class LeaseReadsFromTheAnswer(_LeaseReadsMutant):
    """Broken: the lease counts from when a voter's answer arrived, not from when the
    heartbeat it answers was first sent: a late answer to an old heartbeat extends it."""

    broken = _LeaseFromTheAnswer


class LeaseReadsOnTicks(_LeaseReadsMutant):
    """Broken: the leader measures its lease in ticks, as etcd-raft's lease-based reads do,
    not on its clock: a leader whose process stalled missed ticks (the loop drops them) and
    comes back believing its lease young, while the others elected a new leader and wrote."""

    broken = _LeaseOnTicks


class LeaseReadsWithoutQuorum(_LeaseReadsMutant):
    """Broken: a leader serves every read on its lease, whether or not a quorum heard from
    it lately (a deposed leader cut off from the others then answers stale reads)."""

    broken = _LeaseWithoutQuorum


CORE_MUTANTS: dict[str, type[MemberCore]] = {
    "answers_before_apply": AnswersBeforeApply,
    "reads_without_quorum": ReadsWithoutQuorum,
    "renews_without_deadline": RenewsWithoutDeadline,
    "leases_without_drift_margin": LeasesWithoutDriftMargin,
    "lease_reads_without_drift_margin": LeaseReadsWithoutDriftMargin,
    "lease_reads_before_own_term_commit": LeaseReadsBeforeOwnTermCommit,
    "lease_reads_from_the_answer": LeaseReadsFromTheAnswer,
    "lease_reads_on_ticks": LeaseReadsOnTicks,
    "lease_reads_without_quorum": LeaseReadsWithoutQuorum,
}
