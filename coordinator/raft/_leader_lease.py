"""CheckQuorum and the leader lease it makes possible (thesis §6.2 and §9.6).

A leader that has not heard from a quorum within an election timeout steps down, instead of
serving on as a leader nobody follows. In return, a node that has heard from its leader
within an election timeout refuses to help depose it: its vote goes to no candidate of a
higher term (unless the leader itself asked for the election, in a transfer). Together they
keep a node that cannot hear the leader, say behind a one-way partition, from disrupting a
working cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _quorum as quorum
from .messages import NONE

if TYPE_CHECKING:
    from ._raft import Raft


def _in_lease(self: Raft) -> bool:
    """We heard from a live leader within an election timeout."""
    return (
        self.cfg.check_quorum
        and self.lead != NONE
        and self.election_elapsed < self.cfg.election_timeout_ticks
    )


def _check_quorum(self: Raft) -> None:
    """Leader, once per election timeout: step down unless a quorum was heard from since the
    last check."""
    active = [n for n, pr in self.prs.items() if pr.recent_active]
    if not quorum.has_quorum(self.conf.voters, active):
        self.cfg.logger.warning("leader %d lost contact with a quorum; stepping down", self.id)
        self._become_follower(self.term, NONE)
        return
    for node, peer in self.prs.items():
        peer.recent_active = node == self.id
