"""The simulator's nemesis: crashes, restarts, partitions, slow disks and membership
changes, injected by seed, and the live-member and leader queries it acts on."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from coordinator.raft import ConfChange, ConfChangeType, RaftError, Role

from .sim_member import SimNode
from .sim_options import MS

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from .sim import Simulator
    from .sim_options import SimOptions


class SimNemesis:
    """The `Simulator`'s fault injection, a base of it: every method runs on the simulator."""

    if TYPE_CHECKING:  # what the nemesis uses of the `Simulator` it is a base of
        opts: SimOptions
        rng: random.Random
        nodes: dict[int, SimNode]
        stats: dict[str, int]
        blocked: set[tuple[int, int]]
        healing: bool
        next_spare: int

        def at(self, delay_us: int, fn: Callable[..., object], *args: object) -> None: ...
        def trace(self, *parts: object) -> None: ...
        def leader_lost(self) -> None: ...

    def live_members(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raw is not None and not n.removed]

    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        best_term = 0
        for n in self.live_members():
            assert n.raw is not None
            if n.raw.role is Role.LEADER and (best is None or n.raw.term > best_term):
                best, best_term = n, n.raw.term
        return best

    def clock_rate(self) -> float:
        """A host clock's rate: within `opts.clock_drift` of true time, at either edge of it
        two times in three (where a margin too small shows), else anywhere within."""
        drift = self.opts.clock_drift
        if not drift:
            return 1.0
        return 1.0 + drift * self.rng.choice((-1.0, 1.0, self.rng.uniform(-1.0, 1.0)))

    def nemesis(self) -> None:
        if self.healing:
            return
        r = self.rng
        fault = r.choice(self.opts.faults)
        self.stats["faults"] = self.stats.get("faults", 0) + 1
        self.trace("nemesis", fault)
        members = sorted(n.id for n in self.nodes.values() if not n.removed)
        leader = self.leader()
        if fault == "crash":
            victims = [n for n in self.live_members()]
            if victims:
                v = leader if leader is not None and r.random() < 0.5 else r.choice(victims)
                if v is leader:
                    self.leader_lost()
                v.crash("nemesis")
                self._connections_lost(v.id)
                self.at(r.randint(20 * MS, 1500 * MS), self.restart, v)
        elif fault == "torn":
            victims = self.live_members()
            if victims:
                v = r.choice(victims)
                v.disk.tear_next_write = True
                self.stats["torn"] += 1
                self.at(r.randint(50 * MS, 1500 * MS), self.restart, v)
        elif fault in ("partition", "isolate_leader", "flap"):
            self.blocked.clear()
            if fault == "isolate_leader" and leader is not None:
                side = {leader.id}
                self.leader_lost()
            else:
                side = set(r.sample(members, r.randint(1, max(1, len(members) // 2))))
            for a in members:
                for b in members:
                    if (a in side) != (b in side):
                        self.blocked.add((a, b))
                        if r.random() < 0.3:  # a keepalive noticed the dead link
                            self.at(r.randint(0, 300 * MS), self.report_unreachable, a, b)
            self.stats["partitions"] += 1
            heal_after = (
                r.randint(50 * MS, 1200 * MS) if fault != "flap" else r.randint(20 * MS, 80 * MS)
            )
            self.at(heal_after, self.blocked.clear)
            if fault == "flap":
                for i in range(1, r.randint(2, 6)):
                    self.at(i * 120 * MS, self._cut, frozenset(side), members)
                    self.at(i * 120 * MS + r.randint(20, 80) * MS, self.blocked.clear)
        elif fault == "oneway":
            a, b = r.sample(members, 2) if len(members) >= 2 else (members[0], members[0])
            if leader is not None and r.random() < 0.5:
                a = leader.id  # the leader can send but not hear, or the reverse
                b = r.choice([m for m in members if m != a] or [a])
            pair = (a, b) if r.random() < 0.5 else (b, a)
            self.blocked.add(pair)
            self.stats["partitions"] += 1
            self.at(r.randint(100 * MS, 1500 * MS), self.blocked.discard, pair)
        elif fault == "slow_disk":
            victims = self.live_members()
            if victims:
                v = r.choice(victims)
                v.disk.latency_us = r.randint(5 * MS, 80 * MS)
                self.stats["slow_disks"] += 1

                def fast(v: SimNode = v) -> None:
                    v.disk.latency_us = 0

                self.at(r.randint(200 * MS, 2000 * MS), fast)
        elif fault == "clock":
            # A host's clock changes rate (temperature, an NTP slew), within the bound.
            victims = self.live_members()
            if victims:
                r.choice(victims).set_clock_rate(self.clock_rate())
                self.stats["clock_rates"] += 1
        elif fault == "pause":
            # A process stops (a long GC, SIGSTOP, a descheduled VM) while its clock runs
            # on: it hears nothing and misses its ticks, then carries on where it was. A
            # leader paused past the election timeout comes back deposed but not yet told.
            victims = self.live_members()
            if victims:
                v = leader if leader is not None and r.random() < 0.5 else r.choice(victims)
                v.pause(r.randint(20 * MS, 600 * MS))
                self.stats["pauses"] += 1
        elif fault == "hint":
            # A transport's false alarm: a live member told it lost its link to another
            # (usually its leader), with no fault behind it.
            live = self.live_members()
            if live:
                u = r.choice(live)
                peer = leader.id if leader is not None and r.random() < 0.7 else r.choice(members)
                self.report_unreachable(u.id, peer)
        elif fault == "membership" and leader is not None:
            self._change_membership(leader)
        elif fault == "transfer" and leader is not None:
            assert leader.raw is not None
            voters = sorted(leader.raw.conf.voters - {leader.id})
            if voters:
                try:
                    leader.raw.transfer_leader(r.choice(voters))
                    self.stats["transfers"] += 1
                    leader.process()
                except RaftError:
                    pass
        self.at(
            r.randint(self.opts.nemesis_every_us // 2, self.opts.nemesis_every_us), self.nemesis
        )

    def _connections_lost(self, dead: int) -> None:
        """A crashed process's connections close: most members' transports notice soon."""
        for u in self.live_members():
            if self.rng.random() < 0.8:
                self.at(self.rng.randint(0, 5 * MS), self.report_unreachable, u.id, dead)

    def report_unreachable(self, node_id: int, peer: int) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.core is None or self.healing:
            return
        self.stats["hints"] += 1
        self.trace("unreachable", node_id, peer)
        node.core.report_unreachable(peer)
        node.process()

    def _cut(self, side: frozenset[int], members: list[int]) -> None:
        if self.healing:
            return
        for a in members:
            for b in members:
                if (a in side) != (b in side):
                    self.blocked.add((a, b))

    def _change_membership(self, leader: SimNode) -> None:
        raw = leader.raw
        assert raw is not None
        r = self.rng
        conf = raw.conf
        choices: list[ConfChange] = []
        if conf.learners:
            choices.append(ConfChange(ConfChangeType.PROMOTE, r.choice(sorted(conf.learners))))
        if len(conf.voters) > 3:
            choices.append(ConfChange(ConfChangeType.REMOVE, r.choice(sorted(conf.voters))))
        if self.next_spare <= self.opts.voters + self.opts.spares and len(conf.members) < 8:
            choices.append(ConfChange(ConfChangeType.ADD_LEARNER, self.next_spare))
        if not choices:
            return
        cc = r.choice(choices)
        try:
            raw.propose_conf_change(cc)  # an operator's change: nobody waits for its outcome
        except RaftError:
            return
        self.stats["conf_changes"] += 1
        self.trace("conf", cc.type.value, cc.node_id)
        if cc.type is ConfChangeType.ADD_LEARNER:
            self.nodes[cc.node_id] = SimNode(cast("Simulator", self), cc.node_id, None)
            self.next_spare += 1
        leader.process()

    def restart(self, node: SimNode) -> None:
        if node.removed or node.raw is not None:
            return
        self.stats["restarts"] += 1
        self.trace("restart", node.id)
        node.disk.tear_next_write = False
        node.start()
        node.process()
