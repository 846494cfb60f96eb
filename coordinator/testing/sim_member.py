"""One simulated member: the production member core driven turn by turn as the runtime's
loop drives it, with its disk, its clients' requests and the server's lease-renewal sequence,
and the state machine as the core sees it (watched by the checkers)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from coordinator.core import CoreConfig, MemberCore, ProposalLostError, ReadMode
from coordinator.core.ready import persist, send_early
from coordinator.fsm import Applied, Envelope, ErrorCode, FsmError, LeaseKeepAlive, Renewal
from coordinator.raft import (
    NONE,
    Config,
    ConfState,
    Entry,
    EntryKind,
    RaftError,
    RawNode,
    Role,
    Snapshot,
    SnapshotMeta,
)
from coordinator.raft import LogStorage as Storage

from .disk import SimCrash, SimDisk, SimLog
from .sim_clock import SimClock
from .sim_options import MS

if TYPE_CHECKING:
    from .sim import Simulator
from .sim_clients import Read, Request

# ---------------------------------------------------------------------------------- members


@dataclass
class ClientReply:
    client: int
    seq: int
    kind: str  # "ok" | "not_leader" | "retry"
    output: object = None
    leader: int = NONE


class SimNode:
    """One member: the production member core (`core.MemberCore`) over a SimDisk, driven
    the way the runtime's loop drives it, on this host's virtual clock.

    All a member decides (answers by index and term, read barriers, snapshots, the lease
    duty and the leader's lessor) is the core's; this adapter only turns virtual time into
    ticks and turns, messages into `step`, client requests into proposals, reads and lease
    renewals, and completions into replies. The state machine is watched on its way in
    (`_Watched`) so that the checkers see every apply and restore."""

    def __init__(self, sim: Simulator, node_id: int, conf: ConfState | None) -> None:
        self.sim = sim
        self.id = node_id
        self.disk = SimDisk()
        if conf is not None:
            self.disk.snapshot = Snapshot(SnapshotMeta(0, 0, conf))
        self.alive = False
        self.removed = False
        self.core: MemberCore | None = None
        self.raw: RawNode | None = None
        # Each host's monotonic clock has its own epoch, which survives a restart of the
        # member: the replicated clock must not care (fsm/machine.py re-pins per term).
        self.epoch_ms = sim.rng.randrange(0, 1 << 30)
        # Its rate, too, is its own (`sim_clock.py`): ticks, lease deadlines and the
        # leader's stamps are all measured on it; the clients and checkers use true time.
        self.clock = SimClock(sim.clock_rate(), sim.now)
        self.paused_until = 0
        """True time until which the process is paused (SIGSTOP, a long GC): it neither
        ticks nor hears anything, while its clock runs on."""
        self._tick_gen = 0
        self._next_tick_local_us = self.clock.local_us(sim.now) + sim.rng.randint(
            1, sim.opts.tick_us
        )
        self._schedule_tick()
        self.start()

    def start(self) -> None:
        sim = self.sim
        opts = sim.opts
        self.fsm = sim.fsm_factory()
        self.log = SimLog(self.disk, sim.rng, self._on_persist)
        sim.checker.on_restart(self.id, self.disk.snapshot.meta.index)
        cfg = CoreConfig(
            id=self.id,
            election_ticks=opts.election_ticks,
            heartbeat_ticks=opts.heartbeat_ticks,
            snapshot_every_entries=opts.snapshot_every,
            snapshot_keep_entries=opts.snapshot_keep,
            lease_check_s=opts.lease_check_us / 1e6,
            commit_flush_s=opts.commit_flush_us / 1e6 if opts.lazy_commit else None,
            read_mode=ReadMode.LEASE if opts.lease_reads else ReadMode.BARRIER,
            tick_s=opts.tick_us / 1e6,
        )
        watched = _Watched(self)
        self.core = sim.core_class(
            cfg,
            self.log,
            watched,
            random.Random(sim.rng.getrandbits(64)),
            node_factory=self._make_node,
            now_s=self.now_s(),
        )
        watched.live = True
        self.raw = self.core.node
        self.flush_due = False
        self.waiting: dict[int, _Waiting] = {}
        """Request id the core gave -> what answers it."""
        self.renewals: list[_Renewal] = []
        """Arrived, not yet covered by a read barrier."""
        self.alive = True

    def _make_node(self, cfg: Config, storage: Storage) -> RawNode:
        o = self.sim.opts
        cfg = replace(
            cfg,
            max_msg_bytes=o.max_msg_bytes,
            max_inflight_msgs=o.max_inflight,
            snapshot_chunk_bytes=o.chunk_bytes,
        )
        return self.sim.node_factory(cfg, storage)

    def clock_ms(self) -> int:
        """This host's monotonic clock, which a leader stamps on what it proposes."""
        return self.epoch_ms + self.clock.local_us(self.sim.now) // MS

    # --- this host's clock and ticks ----------------------------------------------------

    def set_clock_rate(self, rate: float) -> None:
        """The nemesis moves this host's clock rate (within the bound): the tick already
        scheduled at the old rate is replaced by one at the new."""
        self.clock.set_rate(self.sim.now, rate)
        self._tick_gen += 1
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        delay = self.clock.true_delay_us(self.sim.now, self._next_tick_local_us)
        self.sim.at(delay, self._on_tick, self._tick_gen)

    def _on_tick(self, gen: int) -> None:
        if gen != self._tick_gen or self.removed:
            return
        sim = self.sim
        tick_us = sim.opts.tick_us
        core = self.core
        if self.paused():
            # The runtime does not burst the ticks a stall missed (`runtime/loop.py`): the
            # first tick after the pause is the next one due on the clock.
            resume_local = self.clock.local_us(self.paused_until)
            while self._next_tick_local_us <= resume_local:
                self._next_tick_local_us += tick_us
        elif core is not None:
            sim.stats["steps"] += 1
            core.tick()
            self.process()
            self._next_tick_local_us += tick_us
        else:
            self._next_tick_local_us += tick_us
        self._schedule_tick()

    def paused(self) -> bool:
        return self.sim.now < self.paused_until

    def pause(self, true_us: int) -> None:
        self.paused_until = max(self.paused_until, self.sim.now + true_us)

    def now_s(self) -> float:
        return self.clock_ms() / 1000

    def crash(self, reason: str) -> None:
        self.alive = False
        self.core = None
        self.raw = None
        self.sim.stats["crashes"] += 1
        self.sim.trace("crash", self.id, reason)

    # --- driving: one turn of the runtime's loop ------------------------------------------

    def process(self) -> None:
        core = self.core
        if core is None:
            return
        sim = self.sim
        if self.paused():
            sim.at(self.paused_until - sim.now, self.process)
            return
        transport = sim.transport_for(self)
        now_s = self.now_s()
        try:
            served = core.lease_reads_served
            core.leader_duties(now_s, self.clock_ms())
            sim.stats["lease_reads"] += core.lease_reads_served - served
            while core.has_ready():
                rd = core.ready()
                send_early(transport, rd)
                persist(self.log, rd)
                core.finish(rd, transport)
                ss = rd.soft_state
                if ss is not None and ss.role is Role.LEADER:
                    sim.on_new_leader(self, core.node)
                self._background(core)
        except SimCrash as crash:
            self.crash(str(crash))
            return
        core.observe_leader(now_s)
        core.schedule_flush(now_s)
        core.notices()
        if core.flush_at is not None and not self.flush_due:
            self.flush_due = True
            delay_us = max(0, round((core.flush_at - now_s) * 1e6))
            sim.at(delay_us, self.flush_commit, core)
        self._deliver(core)

    def _background(self, core: MemberCore) -> None:
        """Snapshots (and disk steps) as they come due, inline, each image shown to the
        checker that compares members' states at one index."""
        while (job := core.snapshot_to_encode()) is not None:
            job.run()
            assert job.data is not None
            self.sim.checker.on_snapshot(self.id, job.index, job.data)
            write = core.snapshot_encoded(job)
            if write is not None:
                write.run()
                core.disk_done(write)
                self.sim.stats["snapshots"] += 1
        while (work := core.next_disk_work()) is not None:
            work.run()
            core.disk_done(work)

    def flush_commit(self, core: MemberCore) -> None:
        """The runtime's delayed commit announcement (`CoreConfig.commit_flush_s`); a node
        that crashed or restarted meanwhile is a new core and has nothing to flush."""
        self.flush_due = False
        if self.core is core:
            core.flush_commit(self.now_s())
            self.process()

    def _on_persist(self, entries: Sequence[Entry]) -> None:
        core = self.core
        assert core is not None
        leader_term = core.node.term if core.is_leader else None
        self.sim.checker.on_persist(self.id, entries, self._durable_term, leader_term)

    def _durable_term(self, index: int) -> int:
        try:
            return self.log.term(index)
        except LookupError:
            return 0

    # --- client requests -----------------------------------------------------------------

    def on_request(self, client: int, seq: int, request: Request) -> None:
        core = self.core
        if core is None:
            return
        if isinstance(request, LeaseKeepAlive):
            self._renewal_arrived(_Renewal(client, seq, request.id, self.clock_ms()))
            return
        if isinstance(request, Read):
            self.waiting[core.read()] = _Waiting(client, seq, request.key)
        else:
            env = Envelope(client, seq, self.clock_ms(), request)
            self.waiting[core.propose(env.encode())] = _Waiting(client, seq)
        self.process()

    def _deliver(self, core: MemberCore) -> None:
        sim = self.sim
        for done in core.completions():
            w = self.waiting.pop(done.id, None)
            if w is None:
                continue
            if w.renewals:
                self._barrier_done(core, w.renewals, done.error)
                continue
            err = done.error
            if err is not None:
                if isinstance(err, ProposalLostError):
                    sim.reply(self, ClientReply(w.client, w.seq, "retry"))
                else:
                    sim.reply(self, ClientReply(w.client, w.seq, "not_leader", leader=core.leader))
            elif w.key is not None:
                kv = self.fsm.get(w.key.encode())
                value = None if kv is None else kv.value.decode()
                sim.reply(self, ClientReply(w.client, w.seq, "ok", value))
            else:
                # Whatever the core answered goes to the client, which checks it as the
                # server would (a client proposal always applies with a result).
                assert isinstance(done.value, Applied)
                sim.reply(self, ClientReply(w.client, w.seq, "ok", done.value.result))

    # --- lease renewals: the server's sequence (`server/_renewals.py`) ---------------------

    def _renewal_arrived(self, ask: _Renewal) -> None:
        """Renewals gather for a moment, then share one read barrier requested after all
        of them arrived; only once it confirmed this member leads does the lessor decide."""
        self.renewals.append(ask)
        if len(self.renewals) == 1:
            self.sim.at(RENEWAL_GATHER_US, self._ask_barrier, self.core)

    def _ask_barrier(self, core: MemberCore) -> None:
        batch, self.renewals = self.renewals, []
        if self.core is not core or not batch:
            return
        leader = core.leader
        if leader not in (0, self.id):
            for a in batch:  # a follower that knows the leader sends the stream there
                self.sim.reply(self, ClientReply(a.client, a.seq, "not_leader", leader=leader))
            return
        self.waiting[core.read()] = _Waiting(0, 0, renewals=tuple(batch))
        self.process()

    def _barrier_done(
        self, core: MemberCore, batch: tuple[_Renewal, ...], err: RaftError | None
    ) -> None:
        if err is not None:
            for a in batch:
                self.sim.reply(self, ClientReply(a.client, a.seq, "not_leader", leader=core.leader))
            return
        self._renew(core, batch, 0)

    def _renew(self, core: MemberCore, batch: tuple[_Renewal, ...], tries: int) -> None:
        if self.core is not core:
            return
        verdicts = core.renew_leases([((a.lease,), a.arrived_ms) for a in batch])
        if verdicts is None:
            for a in batch:  # leadership moved while renewing
                self.sim.reply(self, ClientReply(a.client, a.seq, "retry"))
            return
        if verdicts[0] is Renewal.NOT_SERVING:
            # Leading, but the lessor starts at the next turn: only the lessor is awaited.
            if tries < 50:
                self.sim.at(RENEWAL_POLL_US, self._renew, core, batch, tries + 1)
            return
        for a, verdict in zip(batch, verdicts, strict=True):
            if verdict is Renewal.RENEWED:
                self.sim.reply(self, ClientReply(a.client, a.seq, "ok", None))
            elif verdict is Renewal.UNKNOWN:
                self.sim.reply(self, ClientReply(a.client, a.seq, "ok", _gone(a.lease)))
            else:
                self._after_expiry(core, a, 0)

    def _after_expiry(self, core: MemberCore, a: _Renewal, tries: int) -> None:
        """The renewal lost the race to an expiry on its way: NOT_FOUND once it applied; if
        leadership moved first (the lease may live on), the client retries."""
        if self.core is not core:
            return
        if core.lessor.expiring(a.lease):
            if tries < 100:
                self.sim.at(RENEWAL_POLL_US, self._after_expiry, core, a, tries + 1)
            return
        if a.lease in self.fsm.leases():
            self.sim.reply(self, ClientReply(a.client, a.seq, "retry"))
        else:
            self.sim.reply(self, ClientReply(a.client, a.seq, "ok", _gone(a.lease)))


def opts_tick(sim: Simulator) -> int:
    return sim.opts.tick_us


RENEWAL_GATHER_US = 0
"""As the server (`_renewals.py`): a batch of renewals takes what arrived at the same time,
then asks for its barrier."""
RENEWAL_POLL_US = 20 * MS
"""As the server's `_NOT_SERVING_WAIT_S`."""


def _gone(lease: int) -> FsmError:
    return FsmError(ErrorCode.NOT_FOUND, f"lease {lease} not found")


@dataclass(frozen=True, slots=True)
class _Renewal:
    client: int
    seq: int
    lease: int
    arrived_ms: int


@dataclass(frozen=True, slots=True)
class _Waiting:
    """What a request id of the core answers: a client's proposal, a client's read of
    `key`, or a batch of lease renewals waiting for their barrier."""

    client: int
    seq: int
    key: str | None = None
    renewals: tuple[_Renewal, ...] = ()


class _Watched:
    """The member's state machine as the core sees it, with the checkers and the simulator
    told of every apply and restore on the way in."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.fsm = node.fsm
        self.live = False
        """False while the core restores its disk's snapshot at start (not news)."""

    @property
    def applied_index(self) -> int:
        return self.fsm.applied_index

    @property
    def applied_term(self) -> int:
        return self.fsm.applied_term

    def apply(self, entry: Entry) -> Applied:
        node, sim = self.node, self.node.sim
        core = node.core
        sim.checker.on_apply(node.id, entry, core.node.term if core is not None else 0)
        sim.stats["applied"] += 1
        sim.hash_event("apply", node.id, entry.index, entry.term)
        applied = self.fsm.apply(entry)
        if entry.kind is EntryKind.CONF:
            sim.on_conf_applied(node, ConfState.decode(entry.data))
        sim.on_applied(node, applied)
        return applied

    def restore(self, data: bytes | memoryview) -> None:
        meta = self.node.log.snapshot().meta  # persisted before the restore (`core.ready`)
        if self.live:
            self.node.sim.checker.on_restore(self.node.id, meta)
        self.fsm.restore(data)
        if self.live:
            self.node.sim.on_conf_applied(self.node, meta.conf)

    def snapshot_later(self) -> Callable[[], memoryview]:
        return self.fsm.snapshot_later()

    def leases(self) -> tuple[int, ...]:
        return self.fsm.leases()

    def lease_ttls(self) -> list[tuple[int, int]]:
        return self.fsm.lease_ttls()

    def lock_delays_pending(self) -> bool:
        return self.fsm.lock_delays_pending()
