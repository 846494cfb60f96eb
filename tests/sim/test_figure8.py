"""The Raft paper's Figure 8, scripted: why a leader never commits old-term entries by counting.

Five members. S1 leads term 1 and gets X to S2 only. S5 wins term 2 with S3 and S4 and
appends its own entry at X's index, then falls silent. S1 wins term 3 and copies X to S3,
so a majority holds X. The broken variant counts that majority and applies X; then S1 dies,
S5 wins term 4 (its last term, 2, beats the others' 1) and overwrites X everywhere. The
checker must see two different entries applied at one index. The real core waits for an
entry of term 3 to reach a majority, so X is never applied before it is safe.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from coordinator.raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
)
from coordinator.runtime.driver import handle_ready
from coordinator.testing.checkers import SafetyChecker, Violation
from coordinator.testing.mutants import MUTANTS

Factory = Callable[[Config, MemoryStorage], RawNode]


class Member:
    def __init__(self, cluster: Cluster, node_id: int, factory: Factory) -> None:
        self.cluster = cluster
        self.id = node_id
        self.storage = MemoryStorage()
        self.storage.apply_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset(range(1, 6))))))
        self.factory = factory
        self.cfg = Config(
            id=node_id,
            rng=random.Random(node_id),
            pre_vote=False,
            check_quorum=False,
            max_msg_bytes=1,  # one entry per APP, so X can travel without what follows it
        )
        self.node = factory(self.cfg, self.storage)

    def restart(self) -> None:
        """Lose everything in memory; come back from what was persisted (and re-apply)."""
        self.node = self.factory(self.cfg, self.storage)
        self.cluster.checker.on_restart(self.id, self.storage.snapshot().meta.index)

    # Wal
    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        self.storage.append(entries)
        if hard_state is not None:
            self.storage.set_hard_state(hard_state)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.storage.apply_snapshot(snapshot)

    # Transport
    def send(self, msg: Message) -> None:
        self.cluster.in_flight.append(msg)

    # Applier
    def restore(self, snapshot: Snapshot) -> None:
        self.cluster.checker.on_restore(self.id, snapshot.meta)

    def apply(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            self.cluster.checker.on_apply(self.id, e, self.node.term)

    def read_states(self, states: Sequence[ReadState]) -> None:
        pass


class Cluster:
    def __init__(self, factory: Factory) -> None:
        self.checker = SafetyChecker()
        self.in_flight: list[Message] = []
        self.m = {i: Member(self, i, factory) for i in range(1, 6)}
        self.down: set[int] = set()

    def process(self) -> None:
        for i, mem in self.m.items():
            if i in self.down:
                continue
            rd = handle_ready(mem.node, mem, mem, mem)
            if rd is not None and rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
                node = mem.node
                self.checker.on_leader(i, node.term, node.term_at, node.first_index())

    def settle(self, net: Callable[[Message], Message | None] = lambda m: m) -> None:
        """Process and deliver until quiet. Messages to or from a down member are lost;
        `net` may drop (None) or rewrite what the network carries."""
        for _ in range(50):
            self.process()
            batch, self.in_flight = self.in_flight, []
            if not batch:
                return
            for msg in batch:
                if msg.frm in self.down or msg.to in self.down:
                    continue
                carried = net(msg)
                if carried is not None:
                    self.m[msg.to].node.step(carried)


def play_figure8(factory: Factory) -> Cluster:
    c = Cluster(factory)
    s1, s5 = c.m[1].node, c.m[5].node
    s1.campaign()
    c.settle()
    assert s1.role is Role.LEADER and s1.status().commit == 1

    # S1 gets X (index 2, term 1) to S2 only.
    c.down = {3, 4, 5}
    s1.propose(b"X")
    c.settle()
    assert c.m[2].node.term_at(2) == 1

    # S5 wins term 2 with S3 and S4, appends its no-op at index 2, and tells nobody.
    c.down = {1, 2}
    s5.campaign()
    c.settle(lambda m: None if m.type is MessageType.APP else m)
    assert s5.role is Role.LEADER and s5.term == 2
    assert c.m[3].node.term_at(2) == 0

    # S1 wins term 3 with S2 and S3 and copies X to S3: a majority holds X (term 1).
    c.down = {4, 5}
    c.m[1].restart()
    s1 = c.m[1].node
    for _ in range(2):  # term 2 is spent (S3 voted for S5), so S1 needs two tries
        s1.campaign()
        # The network carries S1's votes, probes and X, never the term-3 no-op at index 3.
        c.settle(lambda m: replace(m, entries=tuple(e for e in m.entries if e.index < 3)))
    assert s1.role is Role.LEADER and s1.term == 3
    assert c.m[3].node.term_at(2) == 1, "X should have reached S3"

    # S1 dies; S5 (last term 2) beats S2, S3, S4 (last term 1) and overwrites index 2.
    c.down = {1}
    c.in_flight = []
    c.m[5].restart()
    s5 = c.m[5].node
    for _ in range(2):  # term 3 is spent (S2 and S3 voted for S1)
        s5.campaign()
        c.settle()
    assert s5.role is Role.LEADER and s5.term == 4
    return c


def test_real_core_survives_figure_8() -> None:
    c = play_figure8(RawNode)
    assert all(c.m[i].node.term_at(2) == 2 for i in (2, 3, 4, 5))
    assert c.checker.applied[2].term == 2  # X was never applied: it was never committed


def test_mutant_counting_old_term_replicas_is_an_expected_catch() -> None:
    with pytest.raises(Violation, match=r"leader completeness|state machine safety"):
        play_figure8(MUTANTS["commit_prior_term"].node_factory)
