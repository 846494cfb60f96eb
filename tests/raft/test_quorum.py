"""Majority arithmetic (`coordinator/raft/_quorum.py`) against naive twins.

Each twin restates the rule from the Raft paper in the most literal way, without sharing
any code or formula with the implementation:
- committed index: the largest i such that more than half of the voters have match >= i,
  found by trying every candidate i;
- vote result: enumerate every way the outstanding voters could still answer; WON if the
  candidate wins in all of them, LOST if it wins in none, PENDING otherwise;
- has_quorum: more than half of the voters are present.

Hypothesis is derandomized (no database), so every run checks the same examples.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.raft._quorum import (
    VoteResult,
    committed_index,
    has_quorum,
    quorum_size,
    vote_result,
)

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=200)

node_ids = st.integers(min_value=1, max_value=9)
voter_sets = st.frozensets(node_ids, min_size=1, max_size=7)


# --- naive twins -------------------------------------------------------------------------


def _majority(count: int, total: int) -> bool:
    return 2 * count > total


def naive_committed_index(voters: Iterable[int], match: Mapping[int, int]) -> int:
    ids = set(voters)
    best = 0
    for i in range(max([0, *match.values()]) + 1):
        if _majority(sum(1 for v in ids if match.get(v, 0) >= i), len(ids)):
            best = i
    return best


def naive_vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    ids = sorted(set(voters))
    pending = [v for v in ids if v not in votes]
    outcomes = set()
    for answers in itertools.product([True, False], repeat=len(pending)):
        final = {v: votes[v] for v in ids if v in votes} | dict(zip(pending, answers, strict=True))
        outcomes.add(_majority(sum(final.values()), len(ids)))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


def naive_has_quorum(voters: Iterable[int], present: Iterable[int]) -> bool:
    ids = set(voters)
    return _majority(len([v for v in ids if v in set(present)]), len(ids))


# --- properties --------------------------------------------------------------------------


@SETTINGS
@given(
    voters=voter_sets,
    match=st.dictionaries(node_ids, st.integers(min_value=0, max_value=20), max_size=9),
)
def test_committed_index_matches_naive_twin(voters: frozenset[int], match: dict[int, int]) -> None:
    # `match` may hold non-voters (learners, removed nodes): they must not count.
    assert committed_index(voters, match) == naive_committed_index(voters, match)
    # Iterables are consumed once: a generator must give the same answer as a set.
    assert committed_index(iter(sorted(voters)), match) == naive_committed_index(voters, match)


@SETTINGS
@given(
    voters=voter_sets,
    match=st.dictionaries(node_ids, st.integers(min_value=0, max_value=20), max_size=9),
    bump=node_ids,
)
def test_committed_index_is_monotonic_in_match(
    voters: frozenset[int], match: dict[int, int], bump: int
) -> None:
    before = committed_index(voters, match)
    after = committed_index(voters, {**match, bump: match.get(bump, 0) + 1})
    assert after >= before


@SETTINGS
@given(
    voters=voter_sets,
    votes=st.dictionaries(st.integers(min_value=1, max_value=12), st.booleans(), max_size=12),
)
def test_vote_result_matches_naive_twin(voters: frozenset[int], votes: dict[int, bool]) -> None:
    # Voters are drawn from 1..9, so votes from 10..12 come from non-voters: ignored.
    assert vote_result(voters, votes) == naive_vote_result(voters, votes)


@SETTINGS
@given(voters=voter_sets, present=st.frozensets(st.integers(min_value=1, max_value=12)))
def test_has_quorum_matches_naive_twin(voters: frozenset[int], present: frozenset[int]) -> None:
    assert has_quorum(voters, present) is naive_has_quorum(voters, present)


@settings(SETTINGS, max_examples=100)
@given(voters=voter_sets, data=st.data())
def test_two_quorums_always_intersect(voters: frozenset[int], data: st.DataObject) -> None:
    """The safety fact majority math exists for: any two quorums share a voter."""
    ordered = sorted(voters)
    a = data.draw(st.frozensets(st.sampled_from(ordered)))
    b = data.draw(st.frozensets(st.sampled_from(ordered)))
    if has_quorum(voters, a) and has_quorum(voters, b):
        assert a & b


# --- examples, including the edges ---------------------------------------------------------


@pytest.mark.parametrize(
    ("voters", "expected"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)]
)
def test_quorum_size(voters: int, expected: int) -> None:
    assert quorum_size(voters) == expected


def test_committed_index_examples() -> None:
    assert committed_index({1, 2, 3}, {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index({1, 2, 3}, {1: 5}) == 0  # missing voters count as 0
    assert committed_index({1, 2, 3, 4}, {1: 9, 2: 9, 3: 4, 4: 4}) == 4
    assert committed_index({1}, {1: 7}) == 7
    # A learner that has everything does not make an index committed.
    assert committed_index({1, 2, 3}, {1: 9, 4: 9, 5: 9}) == 0


def test_committed_index_of_no_voters_is_zero() -> None:
    assert committed_index(set(), {1: 5}) == 0


def test_vote_result_examples() -> None:
    assert vote_result({1, 2, 3}, {1: True}) is VoteResult.PENDING
    assert vote_result({1, 2, 3}, {1: True, 2: True}) is VoteResult.WON
    assert vote_result({1, 2, 3}, {1: True, 2: False}) is VoteResult.PENDING
    assert vote_result({1, 2, 3}, {2: False, 3: False}) is VoteResult.LOST
    assert vote_result({1, 2, 3, 4}, {1: True, 2: True}) is VoteResult.PENDING
    assert vote_result({1, 2, 3, 4}, {1: False, 2: False}) is VoteResult.LOST
    assert vote_result({1}, {1: True}) is VoteResult.WON
    # Votes from outside the configuration count for nothing.
    assert vote_result({1, 2, 3}, {1: True, 7: True, 8: True}) is VoteResult.PENDING


def test_vote_result_of_no_voters_is_lost() -> None:
    assert vote_result(set(), {}) is VoteResult.LOST


def test_has_quorum_examples() -> None:
    assert has_quorum({1, 2, 3}, {1, 2})
    assert not has_quorum({1, 2, 3}, {1, 4, 5})
    assert not has_quorum({1, 2, 3, 4}, {1, 2})
    assert not has_quorum(set(), {1})
