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
   slows disks, changes membership and transfers leadership;
2. heal: every fault stops and crashed members restart; a leader must be elected and a
   proposal committed within a bounded time (liveness), which is measured;
3. drain: KV and sequence clients finish (lock and election clients go on, so leases run
   out under a stable leader), and every history is checked: the KV's for linearizability,
   the others by `primitive_checks.py`.

The members run the real `RawNode` through the real `handle_ready` driver and apply into the
real replicated state machine (`fsm.StateMachine`); only the disk, the network and the
clocks are simulated. Each leader stamps its proposals with its own host's clock and proposes
`ExpireLeases` now and then, as the runtime's loop does. Safety checkers (`checkers.py`, and
the lease invariant of `primitive_checks.py`) run at every step.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import multiprocessing
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from coordinator.fsm import (
    Applied,
    Campaign,
    Command,
    Envelope,
    ExpireLeases,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    Noop,
    Resign,
    StateMachine,
)
from coordinator.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MessageType,
    RaftError,
    RawNode,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
)
from coordinator.raft import LogStorage as Storage
from coordinator.runtime.driver import handle_ready

from . import linearizability as lin
from .checkers import SafetyChecker, Violation
from .disk import SimCrash, SimDisk, SimWal
from .mutants import MUTANTS
from .primitive_checks import check_holds, check_leases_held, check_sequence
from .sim_clients import (
    ELECTION,
    LOCK,
    Histories,
    HoldClient,
    KvClient,
    Read,
    Request,
    SequenceClient,
    SimClient,
)

MS = 1000  # microseconds per millisecond
NodeFactory = Callable[[Config, Storage], RawNode]


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SimOptions:
    """Everything a seed decides; printed with the seed so a run can be understood."""

    seed: int
    voters: int
    spares: int
    tick_us: int
    election_ticks: int
    heartbeat_ticks: int
    delay_min_us: int
    delay_max_us: int
    long_delay_p: float
    drop_p: float
    dup_p: float
    fault_phase_us: int
    nemesis_every_us: int
    faults: tuple[str, ...]
    clients: int
    keys: int
    get_p: float
    cas_p: float
    follower_reads_p: float
    snapshot_every: int
    snapshot_keep: int
    chunk_bytes: int
    max_msg_bytes: int
    max_inflight: int
    client_timeout_us: int
    liveness_bound_us: int = 10_000 * MS
    drain_us: int = 1_500 * MS
    lazy_commit: bool = False
    """Leaders announce commits lazily (`Config.lazy_commit`), flushed a random 0-5 ms
    after a turn leaves one unsent, as the asyncio runtime does after 2 ms."""
    seq_clients: int = 0
    lock_clients: int = 0
    elect_clients: int = 0
    lease_ttl_ms: int = 1000
    stall_p: float = 0.0
    """Per keep-alive due, the chance that a lock or election client pauses past its TTL."""
    lease_check_us: int = 500 * MS
    """How often the leader proposes `ExpireLeases` (the runtime's `lease_check_s`)."""

    @staticmethod
    def from_seed(seed: int, voters: int | None = None) -> SimOptions:
        r = random.Random(seed)
        n = voters if voters is not None else r.choice((3, 3, 5, 5, 7))
        all_faults = (
            "crash",
            "partition",
            "oneway",
            "flap",
            "isolate_leader",
            "torn",
            "slow_disk",
            "membership",
            "transfer",
            "hint",
        )
        # Swarm testing: each seed turns on a random subset of faults, so that rarely-hit
        # combinations are not drowned out by the common ones.
        faults = tuple(f for f in all_faults if r.random() < 0.6) or (r.choice(all_faults),)
        lo = r.choice((200, 500, 1000, 2000))
        return SimOptions(
            seed=seed,
            voters=n,
            spares=2,
            tick_us=10 * MS,
            election_ticks=15,  # randomized timeout 150-300 ms, as in the Raft paper
            heartbeat_ticks=r.choice((2, 3, 5)),
            delay_min_us=lo,
            delay_max_us=lo + r.choice((2, 5, 10, 20)) * MS,
            long_delay_p=r.choice((0.0, 0.01, 0.05)),
            drop_p=r.choice((0.0, 0.01, 0.05, 0.15)),
            dup_p=r.choice((0.0, 0.01, 0.05)),
            fault_phase_us=r.randrange(1500, 4000) * MS,
            nemesis_every_us=r.randrange(80, 400) * MS,
            faults=faults,
            clients=r.randrange(1, 4),
            keys=r.randrange(1, 4),
            get_p=r.choice((0.2, 0.4, 0.7)),
            cas_p=r.choice((0.2, 0.4)),
            follower_reads_p=r.choice((0.0, 0.3)),
            snapshot_every=r.choice((15, 40, 150, 1_000_000)),
            snapshot_keep=r.choice((0, 5, 20)),
            chunk_bytes=r.choice((64, 256, 4096)),
            max_msg_bytes=r.choice((200, 4096, 1 << 20)),
            max_inflight=r.choice((1, 4, 64)),
            client_timeout_us=r.choice((60, 150, 400)) * MS,
            lazy_commit=r.random() < 0.5,  # drawn last: earlier draws stay as they were
            seq_clients=r.randrange(0, 2),
            lock_clients=r.randrange(0, 3),
            elect_clients=r.choice((0, 0, 2)),
            lease_ttl_ms=r.choice((1000, 1500)),
            stall_p=r.choice((0.25, 0.4)),
            lease_check_us=r.choice((100, 250, 500)) * MS,
        )

    def describe(self) -> str:
        d = asdict(self)
        return " ".join(f"{k}={v}" for k, v in d.items())


# ---------------------------------------------------------------------------------- members


@dataclass
class ClientReply:
    client: int
    seq: int
    kind: str  # "ok" | "not_leader" | "retry"
    output: object = None
    leader: int = NONE


class SimNode:
    """One member: the real RawNode over a SimDisk, applying into the real StateMachine.

    Its face towards the state machine is narrow on purpose: `apply`, `snapshot`, `restore`,
    `applied_index`, `leases` (for the lease duty) and `get` (for reads). What it still does
    that the runtime's loop also does (answering proposals by index and term, ReadIndex
    waits, the snapshot policy, the lease duty) is kept to the minimum a client needs."""

    def __init__(self, sim: Simulator, node_id: int, conf: ConfState | None) -> None:
        self.sim = sim
        self.id = node_id
        self.disk = SimDisk()
        if conf is not None:
            self.disk.snapshot = Snapshot(SnapshotMeta(0, 0, conf))
        self.alive = False
        self.removed = False
        self.raw: RawNode | None = None
        # Each host's monotonic clock has its own epoch, which survives a restart of the
        # member: the replicated clock must not care (fsm/machine.py re-pins per term).
        self.epoch_ms = sim.rng.randrange(0, 1 << 30)
        self.start()

    def start(self) -> None:
        sim = self.sim
        self.storage = self.disk.load()
        self.fsm = sim.fsm_factory()
        snap = self.disk.snapshot
        if snap.data:
            self.fsm.restore(snap.data)
        self.applied_conf = snap.meta.conf
        sim.checker.on_restart(self.id, snap.meta.index)
        opts = sim.opts
        cfg = Config(
            id=self.id,
            rng=random.Random(sim.rng.getrandbits(64)),
            election_timeout_ticks=opts.election_ticks,
            heartbeat_ticks=opts.heartbeat_ticks,
            max_msg_bytes=opts.max_msg_bytes,
            max_inflight_msgs=opts.max_inflight,
            snapshot_chunk_bytes=opts.chunk_bytes,
            lazy_commit=opts.lazy_commit,
        )
        self.raw = sim.node_factory(cfg, self.storage)
        self.flush_due = False
        self.next_lease_check_us = 0
        self.wal = SimWal(self.disk, self.storage, sim.rng, self._on_persist)
        self.pending_props: dict[int, tuple[int, int, int]] = {}
        self.pending_reads: dict[int, tuple[int, int, str]] = {}
        self.waiting_reads: list[tuple[int, int, int, str]] = []
        self.alive = True

    def clock_ms(self) -> int:
        """This host's monotonic clock, which a leader stamps on what it proposes."""
        return self.epoch_ms + self.sim.now // MS

    def crash(self, reason: str) -> None:
        self.alive = False
        self.raw = None
        self.sim.stats["crashes"] += 1
        self.sim.trace("crash", self.id, reason)

    # --- driving ---------------------------------------------------------------------------

    def process(self) -> None:
        raw = self.raw
        if raw is None:
            return
        try:
            while True:
                rd = handle_ready(raw, self.wal, self.sim.transport_for(self), self)
                if rd is None:
                    break
                ss = rd.soft_state
                if ss is not None and ss.role is Role.LEADER:
                    self.sim.on_new_leader(self, raw)
        except SimCrash as crash:
            self.crash(str(crash))
            return
        if self.sim.opts.lazy_commit and not self.flush_due and raw.commit_unsent:
            self.flush_due = True
            self.sim.at(self.sim.rng.randint(0, 5 * MS), self.flush_commit, raw)

    def flush_commit(self, raw: RawNode) -> None:
        """The runtime's delayed commit announcement (see `SimOptions.lazy_commit`); a node
        that crashed or restarted meanwhile is a new RawNode and has nothing to flush."""
        self.flush_due = False
        if self.raw is raw:
            raw.flush_commit()
            self.process()

    def propose(self, client: int, seq: int, command: Command) -> int:
        """Propose `command` stamped with this member's clock; returns its index. Raises
        RaftError if this member cannot (not the leader, or a transfer is under way)."""
        assert self.raw is not None
        env = Envelope(client, seq, self.clock_ms(), command)
        index, _term = self.raw.propose(env.encode())
        return int(index)

    def _on_persist(self, entries: Sequence[Entry]) -> None:
        raw = self.raw
        assert raw is not None
        leader_term = raw.term if raw.role is Role.LEADER else None
        self.sim.checker.on_persist(self.id, entries, self._durable_term, leader_term)

    def _durable_term(self, index: int) -> int:
        try:
            return self.storage.term(index)
        except LookupError:
            return 0

    # --- Applier -----------------------------------------------------------------------------

    def restore(self, snapshot: Snapshot) -> None:
        self.sim.checker.on_restore(self.id, snapshot.meta)
        self.fsm.restore(snapshot.data)
        self.applied_conf = snapshot.meta.conf
        for index in [i for i in self.pending_props if i <= snapshot.meta.index]:
            del self.pending_props[index]  # outcome unknown; the client will retry
        self.sim.on_conf_applied(self, snapshot.meta.conf)

    def apply(self, entries: Sequence[Entry]) -> None:
        sim = self.sim
        for e in entries:
            sim.checker.on_apply(self.id, e, self.raw.term if self.raw is not None else 0)
            sim.stats["applied"] += 1
            sim.hash_event("apply", self.id, e.index, e.term)
            applied = self.fsm.apply(e)
            if e.kind is EntryKind.CONF:
                self.applied_conf = ConfState.decode(e.data)
                sim.on_conf_applied(self, self.applied_conf)
            pending = self.pending_props.pop(e.index, None)
            if pending is not None:
                term, client, seq = pending
                if term == e.term and applied.result is not None:
                    sim.reply(self, ClientReply(client, seq, "ok", applied.result))
                else:
                    sim.reply(self, ClientReply(client, seq, "retry"))
            sim.on_applied(self, applied)
        self._serve_reads()
        self._maybe_snapshot()

    def read_states(self, states: Sequence[ReadState]) -> None:
        for rs in states:
            pending = self.pending_reads.pop(rs.context, None)
            if pending is not None:
                client, seq, key = pending
                self.waiting_reads.append((rs.index, client, seq, key))
        self._serve_reads()

    def _serve_reads(self) -> None:
        if not self.waiting_reads:
            return
        keep = []
        for index, client, seq, key in self.waiting_reads:
            if index <= self.fsm.applied_index:
                kv = self.fsm.get(key.encode())
                value = None if kv is None else kv.value.decode()
                self.sim.reply(self, ClientReply(client, seq, "ok", value))
            else:
                keep.append((index, client, seq, key))
        self.waiting_reads = keep

    def _maybe_snapshot(self) -> None:
        opts = self.sim.opts
        applied = self.fsm.applied_index
        if applied - self.storage.snapshot().meta.index < opts.snapshot_every:
            return
        image = self.fsm.snapshot()
        self.sim.checker.on_snapshot(self.id, applied, image)
        snap = self.storage.create_snapshot(applied, self.applied_conf, image)
        self.disk.snapshot = snap
        self.disk.fsyncs += 1
        keep_from = max(applied - opts.snapshot_keep, self.storage.first_index() - 1)
        self.storage.compact(keep_from)
        self.disk.compact(keep_from)
        self.sim.stats["snapshots"] += 1

    # --- client requests -----------------------------------------------------------------

    def on_request(self, client: int, seq: int, request: Request) -> None:
        raw = self.raw
        if raw is None:
            return
        sim = self.sim
        try:
            if isinstance(request, Read):
                ctx = sim.next_ctx()
                raw.read_index(ctx)
                self.pending_reads[ctx] = (client, seq, request.key)
            else:
                index = self.propose(client, seq, request)
                self.pending_props[index] = (raw.term, client, seq)
        except RaftError:
            sim.reply(self, ClientReply(client, seq, "not_leader", leader=raw.leader))
            return
        self.process()


def expire_leases_duty(node: SimNode, every_us: int) -> None:
    """The leader's lease duty, as the runtime's `RaftLoop._maybe_expire_leases`: expiry is
    decided by proposing `ExpireLeases` now and then, never by a member's own clock."""
    raw = node.raw
    now = node.sim.now
    if raw is None or raw.role is not Role.LEADER or now < node.next_lease_check_us:
        return
    node.next_lease_check_us = now + every_us
    if not node.fsm.leases():
        return
    try:
        node.propose(0, 0, ExpireLeases())
    except RaftError:
        return
    node.process()


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


class Simulator:
    def __init__(
        self,
        opts: SimOptions,
        node_factory: NodeFactory = RawNode,
        fsm_factory: Callable[[], StateMachine] = StateMachine,
    ) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed ^ 0x5EED)
        self.node_factory = node_factory
        self.fsm_factory = fsm_factory
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
        if node is None or node.raw is None or node.removed:
            return
        self.stats["steps"] += 1
        if msg.type is MessageType.SNAP:
            self.stats["snapshot_chunks"] += 1
        self.hash_event("msg", msg.type.value, msg.frm, msg.to, msg.term, msg.index)
        node.raw.step(msg)
        node.process()

    def reply(self, node: SimNode, rep: ClientReply) -> None:
        if rep.kind == "ok":
            rep.leader = node.id  # clients stick to whoever answered
        self.at(self.delay(), self.on_reply, rep)

    # --- ticks ---------------------------------------------------------------------------

    def tick_all(self) -> None:
        for node in self.nodes.values():
            raw = node.raw
            if raw is not None and not node.removed:
                self.stats["steps"] += 1
                raw.tick()
                node.process()
                expire_leases_duty(node, self.opts.lease_check_us)
        self.at(self.opts.tick_us, self.tick_all)

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
                    gone.raw = None
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
            cmd, (ExpireLeases, LeaseRevoke, LockAcquire, LockRelease, Campaign, Resign)
        ):
            self.checker.checks += 1
            check_leases_held(node.fsm, self.lock_names, self.election_names)

    # --- the nemesis ---------------------------------------------------------------------

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
        if node is None or node.raw is None or self.healing:
            return
        self.stats["hints"] += 1
        self.trace("unreachable", node_id, peer)
        node.raw.report_unreachable(peer)
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
            raw.propose_conf_change(cc)
        except RaftError:
            return
        self.stats["conf_changes"] += 1
        self.trace("conf", cc.type.value, cc.node_id)
        if cc.type is ConfChangeType.ADD_LEARNER:
            self.nodes[cc.node_id] = SimNode(self, cc.node_id, None)
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
            if node is not None and node.raw is not None and not node.removed:
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
        verdict = lin.check(lin.KvModel(), h.kv, max_states=2_000_000)
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
        if leader is not None and leader.raw is not None:
            self.marker_seq += 1
            try:
                leader.propose(0, self.marker_seq, Noop())
                leader.process()
            except RaftError:
                pass
        self.at(50 * MS, self.propose_marker)

    def run(self) -> SimResult:
        o = self.opts
        res = SimResult(seed=o.seed, options=o.describe(), ok=True)
        self.stop_clients_at = 1 << 62
        self.at(self.rng.randint(0, o.tick_us), self.tick_all)
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


# ---------------------------------------------------------------------------------- running


def run_seed(
    seed: int,
    voters: int | None = None,
    mutant: str | None = None,
) -> SimResult:
    opts = SimOptions.from_seed(seed, voters)
    if mutant is None:
        return Simulator(opts).run()
    m = MUTANTS[mutant]
    return Simulator(opts, m.node_factory, m.fsm_factory).run()


def repro_command(seed: int, voters: int | None, mutant: str | None) -> str:
    cmd = f"python -m coordinator.testing.sim --seed {seed}"
    if voters is not None:
        cmd += f" --voters {voters}"
    if mutant is not None:
        cmd += f" --mutant {mutant}"
    return cmd


def _run_one(args: tuple[int, int | None, str | None]) -> SimResult:
    return run_seed(*args)


def percentiles(values: Sequence[int], ps: Sequence[float]) -> list[float]:
    if not values:
        return [float("nan")] * len(ps)
    s = sorted(values)
    return [s[min(len(s) - 1, int(p * len(s)))] / MS for p in ps]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m coordinator.testing.sim",
        description="Deterministic Raft simulation under injected faults, by seed.",
    )
    ap.add_argument("--seed", type=int, help="run one seed, verbosely (reproduces a failure)")
    ap.add_argument("--seeds", type=int, default=200, help="run seeds 1..N (or from --first)")
    ap.add_argument("--first", type=int, default=1, help="first seed of a --seeds run")
    ap.add_argument("--voters", type=int, choices=(3, 5, 7), help="force the cluster size")
    ap.add_argument("--mutant", help="run a deliberately broken variant (see mutants.py)")
    ap.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    ap.add_argument("--json", help="write per-seed results as JSON lines to this file")
    ap.add_argument(
        "--progress-s",
        type=float,
        default=5.0,
        help="print seeds done / total and violations so far this often (0: never)",
    )
    args = ap.parse_args(argv)

    if args.seed is not None:
        res = run_seed(args.seed, args.voters, args.mutant)
        print(f"seed {res.seed}: {res.options}")
        print(json.dumps({k: v for k, v in asdict(res).items() if k != "options"}, indent=1))
        if not res.ok:
            print(f"FAILED: {res.failure}")
            return 1
        print("ok")
        return 0

    seeds = [(s, args.voters, args.mutant) for s in range(args.first, args.first + args.seeds)]
    workers = args.workers or multiprocessing.cpu_count()
    last = args.first + args.seeds - 1
    print(f"sim: seeds {args.first}..{last} on {workers} workers", flush=True)
    if args.mutant is not None:
        print(
            f"sim: mutant {args.mutant} is broken on purpose: its violations are expected "
            "catches (the simulator working), not bugs",
            flush=True,
        )
    started = time.perf_counter()
    shown = started
    results: list[SimResult] = []
    out = open(args.json, "w") if args.json else None  # noqa: SIM115
    try:
        with multiprocessing.Pool(workers) as pool:
            for res in pool.imap_unordered(_run_one, seeds, chunksize=4):
                results.append(res)
                if out is not None:
                    out.write(json.dumps(asdict(res)) + "\n")
                if not res.ok:
                    what = "FAIL" if args.mutant is None else "expected catch of the mutant:"
                    print(f"{what} seed {res.seed}: {res.failure}", flush=True)
                    print(f"  options: {res.options}", flush=True)
                    print(f"  reproduce: {repro_command(res.seed, args.voters, args.mutant)}")
                # Thousands of seeds take minutes: say how far along it is, so that a long
                # run is visibly alive and a violation is seen before the summary.
                now = time.perf_counter()
                if args.progress_s > 0 and now - shown >= args.progress_s:
                    shown = now
                    print(progress_line(results, len(seeds), now - started), flush=True)
    finally:
        if out is not None:
            out.close()
    elapsed = time.perf_counter() - started
    print_summary(results, elapsed, workers)
    return 0 if all(r.ok for r in results) else 1


def progress_line(results: Sequence[SimResult], total: int, elapsed_s: float) -> str:
    done = len(results)
    violations = sum(not r.ok for r in results)
    left_s = elapsed_s / done * (total - done) if done else 0.0
    return (
        f"sim progress: {done}/{total} seeds, violations={violations}, "
        f"{elapsed_s:.0f} s, ~{left_s:.0f} s left"
    )


def print_summary(results: list[SimResult], elapsed_s: float, workers: int) -> None:
    steps = sum(r.steps for r in results)
    faults = sum(r.faults for r in results)
    ops = sum(r.ops for r in results)
    histories = sum(r.histories for r in results)
    failed = [r for r in results if not r.ok]
    elections = [e for r in results for e in r.elections_us]
    heal = [r.heal_to_commit_us for r in results if r.heal_to_commit_us is not None]
    by_size: dict[str, int] = {}
    for r in results:
        size = r.options.split(" voters=")[1].split(" ")[0]
        by_size[size] = by_size.get(size, 0) + 1
    ps = (0.5, 0.9, 0.99, 1.0)
    e = percentiles(elections, ps)
    h = percentiles(heal, ps)
    print(
        f"elections: {len(elections)} measured, ms p50/p90/p99/max = "
        f"{e[0]:.0f}/{e[1]:.0f}/{e[2]:.0f}/{e[3]:.0f}"
    )
    print(f"heal-to-commit: ms p50/p90/p99/max = {h[0]:.0f}/{h[1]:.0f}/{h[2]:.0f}/{h[3]:.0f}")
    print(f"cluster sizes: {', '.join(f'{k} members x{v}' for k, v in sorted(by_size.items()))}")
    kinds: dict[str, int] = {}
    for r in results:
        for k, v in r.ops_by_kind.items():
            kinds[k] = kinds.get(k, 0) + v
    print(f"ops {' '.join(f'{k}={v}' for k, v in kinds.items())}")
    print(
        f"sim summary: seeds={len(results)} steps={steps} faults={faults} ops={ops} "
        f"histories={histories} violations={len(failed)} "
        f"wall={elapsed_s:.1f}s workers={workers} "
        f"seeds/s={len(results) / elapsed_s:.1f} steps/s={steps / elapsed_s:.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())
