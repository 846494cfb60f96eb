"""Deliberately broken variants of the core and of the state machine, to prove the
simulator's checkers bite.

Each member-core mutant (`core_mutants.py`) breaks one rule of what a member tells its
callers. Each Raft mutant breaks one rule the Raft paper states, by overriding the one small
method of `Raft` that embodies it. Each state machine mutant swaps one part of the real
`StateMachine` for a broken one. Production code has no flags for this: the variants live
here, in the test kit, and are swapped in only by the simulator. A checker that cannot catch
these within the seeds CI runs is not checking anything.

    python -m coordinator.testing.sim --seeds 200 --mutant commit_on_minority
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coordinator.core import MemberCore
from coordinator.fsm import StateMachine
from coordinator.raft import (
    Config,
    LogStorage,
    Message,
    RawNode,
    SessionCheck,
    SessionTable,
    SessionVerdict,
)
from coordinator.raft._log import RaftLog
from coordinator.raft._raft import Raft
from coordinator.raft._readonly import PendingRead

from .core_mutants import (
    AnswersBeforeApply,
    LeaseReadsBeforeOwnTermCommit,
    LeaseReadsFromTheAnswer,
    LeaseReadsOnTicks,
    LeaseReadsWithoutDriftMargin,
    LeaseReadsWithoutQuorum,
    LeasesWithoutDriftMargin,
    ReadsWithoutQuorum,
    RenewsWithoutDeadline,
)


class _CommitOnMinority(Raft):
    def _quorum_index(self) -> int:
        # Broken: n // 2 replicas (a minority) "commit" an entry.
        voters = sorted(
            (pr.match for n, pr in self.prs.items() if n in self.conf.voters), reverse=True
        )
        return voters[max(0, len(voters) // 2 - 1)] if voters else 0


class _VoteIgnoresLog(Raft):
    def _log_ok_for_vote(self, m: Message) -> bool:
        return True  # Broken: skips the §5.4.1 up-to-date check.


class _DoubleVote(Raft):
    def _can_vote(self, m: Message) -> bool:
        return True  # Broken: votes for every candidate of a term, not just one.


class _CommitPriorTerm(Raft):
    def _countable(self, index: int) -> bool:
        return True  # Broken: counts replicas of old-term entries (the Figure 8 bug).


class _StaleRead(Raft):
    def _handle_read_request(self, context: int, requester: int) -> None:
        # Broken: serves ReadIndex without confirming leadership with a quorum.
        self._answer_read(PendingRead(0, self.log.committed, context, requester))


class _EagerLog(RaftLog):
    def next_committed(self, max_bytes: int | None = None) -> list:  # type: ignore[type-arg]
        lo = max(self.applied + 1, self.first_index())
        return self.slice(lo, self.last_index() + 1, max_bytes) if lo <= self.last_index() else []

    def applied_to(self, index: int) -> None:
        self.applied = index


class _ApplyBeforeCommit(Raft):
    def __init__(self, config: Config, storage: LogStorage) -> None:
        super().__init__(config, storage)
        self.log.__class__ = _EagerLog  # Broken: hands out entries before they commit.


def _with_raft(cls: type[Raft]) -> Callable[[Config, LogStorage], RawNode]:
    def factory(config: Config, storage: LogStorage) -> RawNode:
        node = RawNode(config, storage)
        node._raft = cls(config, storage)  # the one place the core's innards are swapped
        return node

    return factory


class _BrokenMachine(StateMachine):
    """The real machine with one part swapped by `_break`, again after every restore (which
    builds all parts afresh)."""

    def __init__(self) -> None:
        super().__init__()
        self._break()

    def restore(self, data: bytes | memoryview) -> None:
        super().restore(data)
        self._break()

    def _break(self) -> None:
        raise NotImplementedError


class _ForgetfulSessions(SessionTable):
    def check(self, client_id: int, seq: int) -> SessionCheck:
        return SessionCheck(SessionVerdict.NEW)  # Broken: every retry runs again.


class _NoSessions(_BrokenMachine):
    def _break(self) -> None:
        # Keeps the table's contents (every member's image stays the same), not its answers.
        self._sessions.__class__ = _ForgetfulSessions


class _LockIgnoresLease(_BrokenMachine):
    def _break(self) -> None:
        # Broken: a lock is granted (or queued for) under a lease that has expired or was
        # never granted, so it is held past its lease and no expiry will ever release it.
        self._locks._lease_exists = lambda _lease: True


@dataclass(frozen=True)
class Mutant:
    name: str
    breaks: str
    node_factory: Callable[[Config, LogStorage], RawNode] = RawNode
    fsm_factory: Callable[[], StateMachine] = StateMachine
    core_class: type[MemberCore] = MemberCore
    lease_reads: bool = False
    """Runs with lease reads on (`SimOptions.lease_reads`): it breaks one of their rules."""


MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in (
        Mutant("commit_on_minority", "commit needs a majority", _with_raft(_CommitOnMinority)),
        Mutant("vote_ignores_log", "§5.4.1 election restriction", _with_raft(_VoteIgnoresLog)),
        Mutant("double_vote", "one vote per term (§5.2)", _with_raft(_DoubleVote)),
        Mutant("commit_prior_term", "§5.4.2 count only current-term", _with_raft(_CommitPriorTerm)),
        Mutant("stale_read", "ReadIndex confirms leadership", _with_raft(_StaleRead)),
        Mutant("apply_before_commit", "apply only committed", _with_raft(_ApplyBeforeCommit)),
        Mutant("no_sessions", "exactly-once via client sessions", fsm_factory=_NoSessions),
        Mutant(
            "lock_ignores_lease",
            "a lock is held only under a live lease",
            fsm_factory=_LockIgnoresLease,
        ),
        Mutant(
            "answers_before_apply",
            "a proposal is answered once applied",
            core_class=AnswersBeforeApply,
        ),
        Mutant(
            "reads_without_quorum",
            "a read barrier confirms leadership with a quorum",
            core_class=ReadsWithoutQuorum,
        ),
        Mutant(
            "renews_without_deadline",
            "an acknowledged lease renewal moves the lease's deadline",
            core_class=RenewsWithoutDeadline,
        ),
        Mutant(
            "leases_without_drift_margin",
            "a lease outlives its TTL on any clock within the rate bound",
            core_class=LeasesWithoutDriftMargin,
        ),
        Mutant(
            "lease_reads_without_drift_margin",
            "a lease read ends before any voter's refusal can, at any clock rate in the bound",
            core_class=LeaseReadsWithoutDriftMargin,
            lease_reads=True,
        ),
        Mutant(
            "lease_reads_before_own_term_commit",
            "a lease read waits for the leader's commit of its own term",
            core_class=LeaseReadsBeforeOwnTermCommit,
            lease_reads=True,
        ),
        Mutant(
            "lease_reads_from_the_answer",
            "a lease counts from the first send of the heartbeat a quorum answered",
            core_class=LeaseReadsFromTheAnswer,
            lease_reads=True,
        ),
        Mutant(
            "lease_reads_on_ticks",
            "a leader measures its lease on its clock, which runs on while its process stalls",
            core_class=LeaseReadsOnTicks,
            lease_reads=True,
        ),
        Mutant(
            "lease_reads_without_quorum",
            "a lease read needs a quorum that heard from the leader lately",
            core_class=LeaseReadsWithoutQuorum,
            lease_reads=True,
        ),
    )
}
