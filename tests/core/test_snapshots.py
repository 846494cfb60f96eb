"""Snapshot and compaction policy, and the steps of a data key rotation, in the member core."""

from __future__ import annotations

import pytest

from coordinator.core import KeyRotation
from coordinator.fsm import Put, StateMachine
from tests.core.harness import Cluster

EVERY = 10
KEEP = 3


def write(c: Cluster, leader: int, n: int, seq0: int = 1) -> None:
    for k in range(n):
        c.propose(leader, Put(b"k%d" % k, b"v%d" % (seq0 + k)), client_id=7, seq=seq0 + k)
        c.settle()
    c.tick(leader, 1)


@pytest.mark.parametrize("seed", range(4))
def test_snapshots_follow_the_drawn_gap_and_keep_a_tail(seed: int) -> None:
    c = Cluster(seed=seed, snapshot_every_entries=EVERY, snapshot_keep_entries=KEEP)
    c.elect(1)
    taken: dict[int, list[int]] = {i: [] for i in c.members}
    for seq in range(1, 61):
        c.propose(1, Put(b"k", b"%d" % seq), client_id=7, seq=seq)
        c.settle()
        for i, m in c.members.items():
            snap = m.log.snapshot().meta.index
            if snap and (not taken[i] or taken[i][-1] != snap):
                taken[i].append(snap)
            # Never more than the largest gap (EVERY and up to half again) behind.
            assert m.fsm.applied_index - snap < EVERY + EVERY // 2 + 1
            if snap:
                assert m.log.first_index() - 1 == snap - KEEP  # a tail kept for followers
    for i, snaps in taken.items():
        assert len(snaps) >= 3, f"member {i} took {snaps}"
        gaps = [b - a for a, b in zip([0, *snaps], snaps, strict=False)]
        assert all(EVERY <= g <= EVERY + EVERY // 2 for g in gaps), (i, gaps)
    # The image is the state machine at its index: restoring it reproduces the state.
    snap = c.members[2].log.snapshot()
    restored = StateMachine()
    restored.restore(snap.data)
    assert restored.applied_index == snap.meta.index


def test_members_draw_different_gaps() -> None:
    c = Cluster(seed=3, snapshot_every_entries=100, snapshot_keep_entries=KEEP)
    gaps = {c.core(i).snapshot_gap for i in c.members}
    assert len(gaps) > 1 and all(100 <= g <= 150 for g in gaps)


def test_a_key_rotation_ends_with_a_snapshot_and_a_fully_compacted_log() -> None:
    c = Cluster(snapshot_every_entries=1000, snapshot_keep_entries=KEEP)
    c.elect(1)
    write(c, 1, 5)
    assert c.members[1].log.snapshot().meta.index == 0
    rid = c.core(1).rotate_data_key()
    c.process(1)
    seen = c.outcome(1, rid)
    assert seen is not None and isinstance(seen.done.value, KeyRotation)
    rotation = seen.done.value
    log = c.members[1].log
    assert rotation.key_id == log.key_id == 2
    assert rotation.snapshot_index == log.snapshot().meta.index == c.members[1].fsm.applied_index
    assert log.first_index() == rotation.snapshot_index + 1  # no tail under the old key
    write(c, 1, 3, seq0=100)  # and the member goes on
    assert c.members[1].fsm.applied_index > rotation.snapshot_index
