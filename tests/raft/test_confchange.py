"""Membership changes (`coordinator/raft/_confchange.py`): one server at a time.

`apply_change` is checked rule by rule (thesis §4.1 and §4.2.1: newcomers join as
learners, learners are promoted, members are removed, never the last voter), then against a
property: any sequence of allowed changes keeps voters and learners disjoint, never empties
the voters, and moves at most one voter per step, which is what makes every old majority
intersect every new one.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    ConfState,
    RaftError,
    apply_change,
)

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=200)

ADD, PROMOTE, REMOVE = ConfChangeType.ADD_LEARNER, ConfChangeType.PROMOTE, ConfChangeType.REMOVE


def conf(voters: set[int], learners: set[int] | None = None) -> ConfState:
    return ConfState(frozenset(voters), frozenset(learners or set()))


# --- what is allowed -------------------------------------------------------------------------


def test_add_learner() -> None:
    assert apply_change(conf({1}), ConfChange(ADD, 2)) == conf({1}, {2})


def test_promote_a_learner() -> None:
    assert apply_change(conf({1}, {2}), ConfChange(PROMOTE, 2)) == conf({1, 2})


def test_remove_a_voter() -> None:
    assert apply_change(conf({1, 2, 3}), ConfChange(REMOVE, 2)) == conf({1, 3})


def test_remove_a_learner() -> None:
    assert apply_change(conf({1}, {2}), ConfChange(REMOVE, 2)) == conf({1})


def test_the_input_configuration_is_not_modified() -> None:
    before = conf({1, 2}, {3})
    apply_change(before, ConfChange(PROMOTE, 3))
    assert before == conf({1, 2}, {3})


# --- what is not, with a message that says why -------------------------------------------------


@pytest.mark.parametrize("change_type", list(ConfChangeType), ids=lambda t: t.value)
@pytest.mark.parametrize("node", [0, -1])
def test_node_id_must_be_positive(change_type: ConfChangeType, node: int) -> None:
    with pytest.raises(ConfChangeError, match=rf"node id must be a positive integer, got {node}"):
        apply_change(conf({1}, {2}), ConfChange(change_type, node))


@pytest.mark.parametrize(
    ("before", "change", "message"),
    [
        (conf({1, 2}), ConfChange(ADD, 2), r"node 2 is already a voter"),
        (conf({1}, {2}), ConfChange(ADD, 2), r"node 2 is already a learner"),
        (conf({1, 2}), ConfChange(PROMOTE, 2), r"node 2 is already a voter"),
        (conf({1}), ConfChange(PROMOTE, 2), r"node 2 is not a learner; add it as a learner first"),
        (conf({1}), ConfChange(REMOVE, 2), r"node 2 is not a member"),
        (conf({1}, {2}), ConfChange(REMOVE, 1), r"node 1 is the last voter"),
    ],
    ids=[
        "add-existing-voter",
        "add-existing-learner",
        "promote-voter",
        "promote-non-learner",
        "remove-non-member",
        "remove-last-voter",
    ],
)
def test_disallowed_changes_raise(before: ConfState, change: ConfChange, message: str) -> None:
    with pytest.raises(ConfChangeError, match=message) as info:
        apply_change(before, change)
    assert isinstance(info.value, RaftError)


# --- sequences -------------------------------------------------------------------------------


@SETTINGS
@given(
    changes=st.lists(
        st.builds(ConfChange, st.sampled_from(list(ConfChangeType)), st.integers(0, 6)),
        max_size=30,
    )
)
def test_allowed_changes_keep_the_configuration_sound(changes: list[ConfChange]) -> None:
    current = conf({1})
    for cc in changes:
        was_voter = cc.node_id in current.voters
        was_learner = cc.node_id in current.learners
        allowed = (
            cc.node_id > 0
            and {
                ADD: not was_voter and not was_learner,
                PROMOTE: was_learner,
                REMOVE: was_learner or (was_voter and current.voters != {cc.node_id}),
            }[cc.type]
        )
        if not allowed:
            with pytest.raises(ConfChangeError):
                apply_change(current, cc)
            continue
        new = apply_change(current, cc)
        assert not new.voters & new.learners
        assert new.voters
        assert len(new.voters ^ current.voters) <= 1  # one voter at a time
        assert len(new.members ^ current.members) <= 1
        # Every majority of the old voters meets every majority of the new ones: the
        # smallest majorities together outnumber the voters of both configurations.
        union = current.voters | new.voters
        assert len(current.voters) // 2 + 1 + len(new.voters) // 2 + 1 > len(union)
        current = new
