"""Membership changes, one server at a time (Raft thesis §4.1 and §4.2.1).

A change is proposed as a log entry holding the whole new configuration, and every node uses
the newest configuration in its log the moment it is appended, committed or not. Because
successive configurations differ by at most one voter, any majority of the old and any
majority of the new intersect, so two leaders can never be elected for one term.

Two extra rules close the known holes:
- a leader proposes no change before it has committed an entry of its own term (the fix for
  the single-server bug found in 2015: a change from an earlier term that never committed
  could otherwise overlap with a new one);
- at most one change is uncommitted at a time.

New servers join as learners (non-voting): they receive the log but count in no majority,
so a slow newcomer cannot stall commits. A learner is promoted only once it has caught up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import ConfChangeError
from .messages import ConfState


class ConfChangeType(enum.Enum):
    ADD_LEARNER = "add-learner"
    PROMOTE = "promote"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: int


def apply_change(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after `cc`, or ConfChangeError saying why it is not allowed."""
    node = cc.node_id
    if node <= 0:
        raise ConfChangeError(f"node id must be a positive integer, got {node}")
    if cc.type is ConfChangeType.ADD_LEARNER:
        if node in conf.voters:
            raise ConfChangeError(f"node {node} is already a voter")
        if node in conf.learners:
            raise ConfChangeError(f"node {node} is already a learner")
        return ConfState(conf.voters, conf.learners | {node})
    if cc.type is ConfChangeType.PROMOTE:
        if node in conf.voters:
            raise ConfChangeError(f"node {node} is already a voter")
        if node not in conf.learners:
            raise ConfChangeError(f"node {node} is not a learner; add it as a learner first")
        return ConfState(conf.voters | {node}, conf.learners - {node})
    if node in conf.learners:
        return ConfState(conf.voters, conf.learners - {node})
    if node not in conf.voters:
        raise ConfChangeError(f"node {node} is not a member")
    if conf.voters == {node}:
        raise ConfChangeError(f"node {node} is the last voter; removing it would end the cluster")
    return ConfState(conf.voters - {node}, conf.learners)
