"""Member cores over an in-memory network, stepped by hand on virtual time (etcd-io/raft's
test style): nothing runs unless the test says so, so every scenario is exact and instant.

Each member is a real `MemberCore` with the real `StateMachine` on a `MemoryLog`. `settle`
delivers messages until the network is quiet; `cut` and `heal` make partitions. Every
completion a member gives is recorded with what its state machine had applied *at that
moment*, so a scenario can check that an answer never ran ahead of the apply.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from coordinator.core import Completed, CoreConfig, MemberCore, MemoryLog
from coordinator.fsm import Applied, Command, Envelope, StateMachine
from coordinator.raft import ConfState, Message, Snapshot, SnapshotMeta

WALL_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Seen:
    """A completion, with the member's applied index when it was handed out."""

    done: Completed
    applied_index: int


@dataclass
class Member:
    core: MemberCore
    log: MemoryLog
    fsm: StateMachine
    seen: dict[int, Seen] = field(default_factory=dict)


class Network:
    def __init__(self) -> None:
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()

    def send(self, msg: Message) -> None:
        if (msg.frm, msg.to) not in self.cut:
            self.queue.append(msg)


class Cluster:
    def __init__(
        self,
        core_class: type[MemberCore] = MemberCore,
        *,
        ids: tuple[int, ...] = (1, 2, 3),
        seed: int = 1,
        **cfg: object,
    ) -> None:
        self.net = Network()
        self.now_s = 0.0
        self.members: dict[int, Member] = {}
        for i in ids:
            log = MemoryLog()
            log.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset(ids)))))
            fsm = StateMachine()
            config = CoreConfig(id=i, commit_flush_s=None, **cfg)  # type: ignore[arg-type]
            core = core_class(config, log, fsm, random.Random(seed * 100 + i))
            self.members[i] = Member(core, log, fsm)

    def core(self, i: int) -> MemberCore:
        return self.members[i].core

    # --- driving --------------------------------------------------------------------------

    def process(self, i: int, *, observe: bool = True) -> None:
        """Everything member `i` has to do now: Readys, background work, and (unless not
        `observe`) its news of the leader."""
        m = self.members[i]
        while m.core.handle_ready(self.net):
            m.core.run_background()
        m.core.run_background()
        if observe:
            m.core.observe_leader(self.now_s)
        self.collect(i)

    def collect(self, i: int) -> None:
        m = self.members[i]
        for done in m.core.completions():
            assert done.id not in m.seen, f"member {i} completed {done.id} twice"
            m.seen[done.id] = Seen(done, m.fsm.applied_index)
        m.core.notices()

    def settle(self, rounds: int = 50, *, blind: frozenset[int] = frozenset()) -> None:
        """Process and deliver until nothing moves (bounded: a livelock fails loudly). The
        `blind` members are not told who leads (`observe_leader`), as if the news and the
        entries arrived in one turn."""
        for _ in range(rounds):
            for i in self.members:
                self.process(i, observe=i not in blind)
            if not self.net.queue:
                return
            batch, self.net.queue = self.net.queue, []
            for msg in batch:
                if msg.to in self.members:
                    self.core(msg.to).step(msg)
        raise AssertionError("the cluster did not settle")

    def elect(self, i: int) -> None:
        self.core(i).node.campaign()
        self.settle()
        assert self.core(i).is_leader, f"member {i} did not win"

    def elect_among(self, *ids: int) -> int:
        """Tick only `ids` (the others stand still, as if paused) until one of them leads."""
        for _ in range(200):
            for i in ids:
                self.core(i).tick()
            self.settle()
            leaders = [i for i in ids if self.core(i).is_leader]
            if leaders:
                return leaders[0]
        raise AssertionError(f"none of {ids} was elected")

    def tick(self, i: int, ticks: int, *, blind: frozenset[int] = frozenset()) -> None:
        for _ in range(ticks):
            self.core(i).tick()
            self.settle(blind=blind)

    def isolate(self, i: int) -> None:
        for j in self.members:
            if j != i:
                self.net.cut |= {(i, j), (j, i)}

    def heal(self) -> None:
        self.net.cut.clear()

    # --- requests ---------------------------------------------------------------------------

    def propose(self, i: int, command: Command, client_id: int = 0, seq: int = 0) -> int:
        pid = self.core(i).propose(Envelope(client_id, seq, WALL_MS, command).encode())
        self.collect(i)
        return pid

    def read(self, i: int) -> int:
        rid = self.core(i).read()
        self.process(i)  # as a driver does after a request: the read's barrier goes out
        return rid

    def outcome(self, i: int, request: int) -> Seen | None:
        return self.members[i].seen.get(request)

    def applied(self, i: int, request: int) -> Applied:
        seen = self.outcome(i, request)
        assert seen is not None, f"request {request} on member {i} has no outcome"
        assert seen.done.error is None, seen.done.error
        assert isinstance(seen.done.value, Applied)
        return seen.done.value
