"""Majority arithmetic, kept apart so it can be tested against a naive twin.

Membership changes one voter at a time, so every decision uses a single majority
configuration: any two majorities of configurations that differ by one voter intersect.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def quorum_size(voters: int) -> int:
    return voters // 2 + 1


def committed_index(voters: Iterable[int], match: Mapping[int, int]) -> int:
    """The largest index that a majority of voters have (missing voters count as 0)."""
    ids = list(voters)
    if not ids:
        return 0
    indexes = sorted((match.get(v, 0) for v in ids), reverse=True)
    return indexes[quorum_size(len(ids)) - 1]


def vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    ids = list(voters)
    need = quorum_size(len(ids))
    granted = sum(1 for v in ids if votes.get(v) is True)
    rejected = sum(1 for v in ids if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if len(ids) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Iterable[int], present: Iterable[int]) -> bool:
    ids = set(voters)
    return len(ids & set(present)) >= quorum_size(len(ids))
