"""Deterministic simulation of a Concord cluster under injected faults, by seed.

One `random.Random(seed)` drives everything: the swarm options (cluster size, which faults
are on and how often, the workload mix), the network, the nemesis, the clients and every
node's own RNG. Time is virtual (microseconds on a discrete-event queue), so a seed replays
the same run to the last message, and a failing seed is reproduced by one printed command:

    python -m coordinator.testing.sim --seed N

Each seed runs in three phases:
1. faults: clients (`sim_clients.py`) use every primitive (KV put/get/compare-and-swap,
   sequences, locks and elections through leases) while the nemesis drops, delays,
   duplicates and reorders messages, partitions the network (symmetric, one-way, flapping,
   leader isolated), crashes and restarts members (losing the unsynced part of a torn write),
   slows disks, changes membership, transfers leadership, changes the rate of a member's
   clock and pauses a member's process (each member's clock runs at its own rate, within
   the bound the lessor assumes: `sim_clock.py`);
2. heal: every fault stops and crashed members restart; a leader must be elected and a
   proposal committed within a bounded time (liveness), which is measured;
3. drain: KV and sequence clients finish (lock and election clients go on, so leases run
   out under a stable leader), and every history is checked: the KV's for linearizability,
   the others by `primitive_checks.py`.

Each member is the production member core (`core.MemberCore`: the real `RawNode`, the real
replicated state machine `fsm.StateMachine`, the leader's lessor), driven turn by turn as the
runtime's loop drives it; only the disk, the network and the clocks are simulated. Lease
keep-alives take the server's path: a batched read barrier, then `MemberCore.renew_leases`.
Safety checkers (`checkers.py`, and the lease invariant of `primitive_checks.py`) run at
every step.

This module holds the engine, `Simulator`: the event queue, the network, the observers, the
clients' side and the phases. The swarm options are in `sim_options.py`, the simulated member
in `sim_member.py`, the fault injection in `sim_nemesis.py`, and running seeds (with the
command line) in `sim_run.py`.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.core import MemberCore
from coordinator.fsm import (
    Applied,
    Campaign,
    Envelope,
    ExpireLeaseIds,
    ExpireLeases,
    LeaseExpired,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Noop,
    Resign,
    StateMachine,
)
from coordinator.raft import (
    NONE,
    Config,
    ConfState,
    Message,
    MessageType,
    RawNode,
)
from coordinator.raft import LogStorage as Storage

from . import linearizability as lin
from .checkers import SafetyChecker, Violation
from .kv_model import KvModel
from .primitive_checks import (
    check_holds,
    check_lease_lives,
    check_leases_held,
    check_sequence,
)
from .sim_clients import (
    ELECTION,
    LOCK,
    Histories,
    HoldClient,
    KvClient,
    Read,
    SequenceClient,
    SimClient,
)
from .sim_member import ClientReply, SimNode
from .sim_nemesis import SimNemesis
from .sim_options import MS, SimOptions

NodeFactory = Callable[[Config, Storage], RawNode]


# ---------------------------------------------------------------------------------- results


@dataclass
class SimResult:
    seed: int
    options: str
    ok: bool
    failure: str = ""
    steps: int = 0
    faults: int = 0
    ops: int = 0
    ops_unknown: int = 0
    ops_by_kind: dict[str, int] = field(default_factory=dict)
    """Acknowledged operations per primitive: kv, seq, lock, lease, elect."""
    histories: int = 0
    checks: int = 0
    lin_states: int = 0
    heal_to_commit_us: int | None = None
    elections_us: list[int] = field(default_factory=list)
    trace_hash: str = ""
    virtual_us: int = 0
    stats: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- engine


class Simulator(SimNemesis):
    def __init__(
        self,
        opts: SimOptions,
        node_factory: NodeFactory = RawNode,
        fsm_factory: Callable[[], StateMachine] = StateMachine,
        core_class: type[MemberCore] = MemberCore,
    ) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed ^ 0x5EED)
        self.node_factory = node_factory
        self.fsm_factory = fsm_factory
        self.core_class = core_class
        self.checker = SafetyChecker()
        self.now = 0
        self._queue: list[tuple[int, int, Callable[..., object], tuple[object, ...]]] = []
        self._seq = 0
        self._ctx = 0
        self._hash = hashlib.blake2b(digest_size=16)
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "dropped",
                "duplicated",
                "crashes",
                "restarts",
                "partitions",
                "torn",
                "slow_disks",
                "conf_changes",
                "transfers",
                "hints",
                "snapshots",
                "applied",
                "steps",
                "snapshot_chunks",
                "leaders",
                "clock_rates",
                "pauses",
                "lease_reads",
            ),
            0,
        )
        self.blocked: set[tuple[int, int]] = set()
        self.healing = False
        self.marker_seq = 0
        self.marker_done: int | None = None
        self.heal_at = 0
        self.leaderless_since: int | None = 0
        self.elections_us: list[int] = []
        self.hist = Histories()
        voters = frozenset(range(1, opts.voters + 1))
        conf = ConfState(voters)
        self.nodes: dict[int, SimNode] = {i: SimNode(self, i, conf) for i in sorted(voters)}
        self.next_spare = opts.voters + 1
        self.ever_members: set[int] = set(voters)
        self.clients = self._make_clients()
        self._transports: dict[int, _Transport] = {}

    # --- event queue ---------------------------------------------------------------------

    def at(self, delay_us: int, fn: Callable[..., object], *args: object) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay_us, self._seq, fn, args))

    def _pop(self) -> tuple[int, int, Callable[..., object], tuple[object, ...]]:
        return heapq.heappop(self._queue)

    def trace(self, *parts: object) -> None:
        self.hash_event(*parts)

    def hash_event(self, *parts: object) -> None:
        self._hash.update(repr((self.now, *parts)).encode())

    def next_ctx(self) -> int:
        self._ctx += 1
        return self._ctx

    # --- network -------------------------------------------------------------------------

    def transport_for(self, node: SimNode) -> _Transport:
        t = self._transports.get(node.id)
        if t is None:
            t = self._transports[node.id] = _Transport(self, node.id)
        return t

    def delay(self) -> int:
        o = self.opts
        d = self.rng.randint(o.delay_min_us, o.delay_max_us)
        if not self.healing and self.rng.random() < o.long_delay_p:
            d += self.rng.randint(50 * MS, 400 * MS)
        return d

    def send(self, msg: Message) -> None:
        self.stats["messages"] += 1
        sender = self.nodes.get(msg.frm)
        extra = sender.disk.latency_us if sender is not None else 0
        faulty = not self.healing
        if faulty and self.rng.random() < self.opts.drop_p:
            self.stats["dropped"] += 1
            return
        copies = 2 if faulty and self.rng.random() < self.opts.dup_p else 1
        if copies == 2:
            self.stats["duplicated"] += 1
        for _ in range(copies):
            self.at(extra + self.delay(), self.deliver, msg)

    def deliver(self, msg: Message) -> None:
        if (msg.frm, msg.to) in self.blocked:
            return
        node = self.nodes.get(msg.to)
        if node is None or node.core is None or node.removed:
            return
        if node.paused():  # it reads its sockets when it resumes
            self.at(node.paused_until - self.now, self.deliver, msg)
            return
        self.stats["steps"] += 1
        if msg.type is MessageType.SNAP:
            self.stats["snapshot_chunks"] += 1
        self.hash_event("msg", msg.type.value, msg.frm, msg.to, msg.term, msg.index)
        node.core.step(msg)
        node.process()

    def reply(self, node: SimNode, rep: ClientReply) -> None:
        if rep.kind == "ok":
            rep.leader = node.id  # clients stick to whoever answered
        self.at(self.delay(), self.on_reply, rep)

    # --- observers -----------------------------------------------------------------------

    def on_new_leader(self, node: SimNode, raw: RawNode) -> None:
        self.hash_event("leader", node.id, raw.term)
        self.stats["leaders"] += 1
        self.checker.on_leader(node.id, raw.term, raw.term_at, raw.first_index())
        if self.leaderless_since is not None:
            self.elections_us.append(self.now - self.leaderless_since)
            self.leaderless_since = None

    def leader_lost(self) -> None:
        if self.leaderless_since is None:
            self.leaderless_since = self.now

    def on_conf_applied(self, node: SimNode, conf: ConfState) -> None:
        # Decommission members the committed configuration no longer holds, the way an
        # operator would scale them away (their data is never reused).
        for nid in list(self.ever_members):
            if nid not in conf.members:
                gone = self.nodes[nid]
                if not gone.removed:
                    gone.removed = True
                    gone.alive = False
                    gone.core = gone.raw = None
                    self.trace("decommission", nid)
        self.ever_members |= conf.members

    def on_applied(self, node: SimNode, applied: Applied) -> None:
        cmd = applied.command
        if isinstance(cmd, Noop) and applied.client_id == 0:
            # Any marker proves the healed cluster commits: markers are proposed only after
            # healing, again every 50 ms, and a slow cluster may commit an earlier one.
            if self.marker_done is None:
                self.marker_done = self.now
        elif isinstance(
            cmd,
            (ExpireLeaseIds, ExpireLeases, LeaseRevoke, LockAcquire, LockRelease, Campaign, Resign),
        ):
            self.checker.checks += 1
            check_leases_held(node.fsm, self.lock_names, self.election_names)
            for effect in applied.effects:
                if isinstance(effect, LeaseExpired):
                    self.hist.expired_us.setdefault(effect.id, self.now)

    # --- clients -------------------------------------------------------------------------

    def _make_clients(self) -> list[SimClient]:
        o = self.opts
        h = self.hist
        clients: list[SimClient] = [
            KvClient(100 + i, h, o.keys, o.get_p, o.cas_p) for i in range(o.clients)
        ]
        clients += [SequenceClient(100 + len(clients) + i, h) for i in range(o.seq_clients)]
        for kind, name, count in (
            (LOCK, "lock0", o.lock_clients),
            (ELECTION, "elect0", o.elect_clients),
        ):
            clients += [
                HoldClient(
                    100 + len(clients) + i, h, kind, name, ttl_ms=o.lease_ttl_ms, stall_p=o.stall_p
                )
                for i in range(count)
            ]
        self.lock_names = ("lock0",) if o.lock_clients else ()
        self.election_names = ("elect0",) if o.elect_clients else ()
        return clients

    def client_next(self, c: SimClient) -> None:
        if self.now >= self.stop_clients_at and not isinstance(c, HoldClient):
            # Lock and election clients go on through the drain: a stable leader is when
            # leases run out (each leader change gives every lease a full TTL again), and
            # their checks need no operation to finish.
            return
        step = c.next(self.now, self.rng)
        if isinstance(step, int):
            self.at(max(step, 1), self.client_next, c)
            return
        c.seq += 1
        c.request = step
        c.attempt = 0
        self.client_send(c)

    def client_send(self, c: SimClient) -> None:
        if c.request is None:
            return
        c.attempt += 1
        members = [n for n in sorted(self.nodes) if not self.nodes[n].removed]
        target = c.leader_hint if c.leader_hint in members else self.rng.choice(members)
        if isinstance(c.request, Read) and self.rng.random() < self.opts.follower_reads_p:
            target = self.rng.choice(members)
        seq, attempt, request = c.seq, c.attempt, c.request

        def arrive() -> None:
            node = self.nodes.get(target)
            if node is not None and node.paused():
                self.at(node.paused_until - self.now, arrive)
            elif node is not None and node.core is not None and not node.removed:
                self.stats["steps"] += 1
                node.on_request(c.id, seq, request)

        self.at(self.delay(), arrive)

        def timeout() -> None:
            if c.request is not None and c.seq == seq and c.attempt == attempt:
                c.leader_hint = NONE
                self.client_send(c)

        self.at(self.opts.client_timeout_us, timeout)

    def on_reply(self, rep: ClientReply) -> None:
        c = self.clients[rep.client - 100]
        if c.request is None or c.seq != rep.seq:
            return  # an answer to an earlier attempt of a finished op
        if rep.kind == "ok":
            c.leader_hint = rep.leader
            c.done(self.now, rep.output, self.rng)
            self.hist.ops[c.kind] += 1
            c.request = None
            self.at(self.rng.randint(0, 20 * MS), self.client_next, c)
            return
        c.leader_hint = rep.leader if rep.kind == "not_leader" else NONE
        backoff = 2 * MS if rep.leader else 20 * MS
        self.at(backoff, self._retry, c, rep.seq, c.attempt)

    def _retry(self, c: SimClient, seq: int, attempt: int) -> None:
        if c.request is not None and c.seq == seq and c.attempt == attempt:
            self.client_send(c)

    def check_histories(self, res: SimResult) -> None:
        """Counts the operations, then (if no invariant broke meanwhile) checks every client
        history; sets `res.failure` on the first violation."""
        h = self.hist
        for c in self.clients:
            if isinstance(c, KvClient):
                op = c.unknown()
                if op is not None:
                    h.kv.append(op)
                    res.ops_unknown += 1
            elif c.request is not None:
                res.ops_unknown += 1
        res.ops_by_kind = dict(h.ops)
        self.stats["leases_lost"] = len(h.gone_seen_us)
        if not res.ok:
            return
        res.ops = sum(h.ops.values()) + res.ops_unknown
        problem = check_lease_lives(h.safe_until_us, h.gone_seen_us) or check_lease_lives(
            h.safe_until_us, h.expired_us, "expired"
        )
        if problem is not None:
            res.ok, res.failure = False, f"lease: {problem}"
            return
        problem = check_sequence(h.blocks)
        if problem is not None:
            res.ok, res.failure = False, f"sequence: {problem}"
            return
        for kind, names in ((LOCK, self.lock_names), (ELECTION, self.election_names)):
            for name in names:
                holds = [x for x in h.holds if x.kind == kind and x.name == name]
                problem = check_holds(holds, h.safe_until_us, h.gone_seen_us)
                if problem is not None:
                    res.ok, res.failure = False, f"{kind}: {problem}"
                    return
        verdict = lin.check(KvModel(), h.kv, max_states=2_000_000)
        res.histories = verdict.partitions
        res.lin_states = verdict.states_explored
        if verdict.ok is False:
            res.ok = False
            res.failure = f"linearizability: {verdict.explanation}"
        elif verdict.ok is None:
            res.ok = False
            res.failure = "linearizability: checker gave up (budget exhausted)"

    # --- phases --------------------------------------------------------------------------

    def heal(self) -> None:
        self.healing = True
        self.heal_at = self.now
        self.blocked.clear()
        self.trace("heal")
        for node in self.nodes.values():
            node.disk.latency_us = 0
            node.disk.tear_next_write = False
            if node.raw is None and not node.removed:
                self.restart(node)
        self.at(0, self.propose_marker)

    def propose_marker(self) -> None:
        if self.marker_done is not None:
            return
        leader = self.leader()
        if leader is not None and leader.core is not None:
            self.marker_seq += 1
            leader.core.propose(Envelope(0, self.marker_seq, leader.clock_ms(), Noop()).encode())
            leader.process()
        self.at(50 * MS, self.propose_marker)

    def run(self) -> SimResult:
        o = self.opts
        res = SimResult(seed=o.seed, options=o.describe(), ok=True)
        self.stop_clients_at = 1 << 62
        self.at(o.nemesis_every_us, self.nemesis)
        for c in self.clients:
            self.at(self.rng.randint(0, 50 * MS), self.client_next, c)
        self.at(o.fault_phase_us, self.heal)
        deadline = o.fault_phase_us + o.liveness_bound_us
        end = 1 << 62
        try:
            while self._queue:
                t, _, fn, fn_args = self._pop()
                self.now = t
                if self.marker_done is not None and self.stop_clients_at == 1 << 62:
                    self.stop_clients_at = self.now
                    end = self.now + o.drain_us
                if self.stop_clients_at != 1 << 62 and self.now > end:
                    break
                if self.now > deadline and self.marker_done is None:
                    leader = self.leader()
                    raise Violation(
                        f"liveness: no proposal committed within "
                        f"{o.liveness_bound_us // MS} ms of healing the cluster "
                        f"(leader: {leader.id if leader is not None else 'none'})"
                    )
                fn(*fn_args)
        except (Violation, AssertionError) as err:
            res.ok = False
            kind = "invariant" if isinstance(err, Violation) else "internal assertion"
            res.failure = f"{kind}: {err} (at t={self.now / MS:.1f} ms)"
        res.virtual_us = self.now
        res.steps = self.stats["steps"]
        res.faults = self.stats.get("faults", 0)
        res.checks = self.checker.checks
        res.elections_us = self.elections_us
        if self.marker_done is not None:
            res.heal_to_commit_us = self.marker_done - self.heal_at
        self.check_histories(res)
        res.trace_hash = self._hash.hexdigest()
        res.stats = dict(self.stats)
        return res


class _Transport:
    def __init__(self, sim: Simulator, node_id: int) -> None:
        self.sim = sim
        self.node_id = node_id

    def send(self, msg: Message) -> None:
        self.sim.send(msg)


if __name__ == "__main__":
    from .sim_run import main

    sys.exit(main())
