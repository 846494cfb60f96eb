"""MemberCore: everything one member decides, with no I/O, no clock and no thread of its own.

It owns the `RawNode`, the state machine and the durable log, and keeps the books a member
keeps around them: which proposal waits for which log index, which read waits for which
read index, when to snapshot and compact, when the leader proposes lease expiry, the steps of
a data key rotation, the configuration as of the applied index, and the leader it knows of.

Drivers. The asyncio runtime (`runtime/loop.py`) and the simulator step it the same way:

    core.step(msg) / core.tick() / core.propose(data) -> id / core.read() -> id ...
    core.handle_ready(transport)            # or ready() + send_early/persist + finish(rd, ...)
    job = core.snapshot_to_encode(); job.run(); write = core.snapshot_encoded(job)
    work = core.next_disk_work(); work.run(); core.disk_done(work)
    core.completions(), core.notices()      # outcomes by id, and what observers are told

Time arrives as arguments (`now_s`, `wall_ms`) and ticks; randomness from the injected
`rng`. Nothing here awaits or blocks: a driver that runs `DiskWork.run` or `SnapshotJob.run`
on a thread must not step the core while a `DiskWork` runs (a `SnapshotJob` may overlap).

Outcomes. A proposal is identified by the (index, term) the node gave it. When the entry at
that index applies, the proposal succeeded iff the entry's term matches; otherwise another
leader overwrote it and the request completes with `ProposalLostError` (retrying with the same
session sequence is safe: the state machine answers a duplicate from its session table).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from coordinator.fsm import Applied, Envelope, Lessor, Renewal
from coordinator.raft import (
    NONE,
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryKind,
    Logger,
    Message,
    NotLeaderError,
    NullLogger,
    RaftError,
    RandomSource,
    RawNode,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotData,
    Status,
)

from .lease_reads import LeaseReads, ReadMode
from .reads import ReadBook
from .ready import Transport, finish, handle_ready
from .records import (
    AppliedBatch,
    Completed,
    CoreConfig,
    DiskWork,
    DurableLog,
    KeyRotation,
    KeySwitch,
    LeaderChanged,
    Machine,
    Notice,
    ProposalLostError,
    Restored,
    SnapshotJob,
    SnapshotWrite,
)


class MemberCore:
    def __init__(
        self,
        cfg: CoreConfig,
        storage: DurableLog,
        fsm: Machine,
        rng: RandomSource,
        *,
        logger: Logger | None = None,
        image_decode: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        node_factory: Callable[[Config, DurableLog], RawNode] = RawNode,
        now_s: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.storage = storage
        self.fsm = fsm
        self._rng = rng
        self._log: Logger = logger or NullLogger()
        self._image_decode = image_decode
        self.node = node_factory(
            Config(
                id=cfg.id,
                rng=rng,
                election_timeout_ticks=cfg.election_ticks,
                heartbeat_ticks=cfg.heartbeat_ticks,
                lazy_commit=cfg.commit_flush_s is not None,
                logger=self._log,
            ),
            storage,
        )
        snap = storage.snapshot()
        if snap.data:
            with image_decode():
                fsm.restore(snap.data)
        self._applied_conf = snap.meta.conf
        self._ids = itertools.count(1)
        self._completed: list[Completed] = []
        self._notices: list[Notice] = []
        self._pending: dict[int, tuple[int, int]] = {}
        """log index -> (term, proposal id)."""
        self._reads = ReadBook()
        self._lease_reads = (
            LeaseReads(cfg.id, cfg.election_ticks, cfg.tick_s)
            if cfg.read_mode is ReadMode.LEASE
            else None
        )
        """With lease reads on: when a quorum last heard from this leader, and whether this
        member must refuse a vote (`core/lease_reads.py`). None with ReadIndex barriers."""
        self._lease_pending: list[int] = []
        """Read ids that arrived while leading with lease reads on, decided at the next
        `leader_duties` (on a fresh clock reading): served on the lease, or a barrier."""
        self.lease_reads_served = 0
        """Reads served on the lease, without a round trip (metrics)."""
        self.leader_changes = 0
        self._last_leader = 0
        self.leaderless_since_s: float | None = now_s
        """When this member last lost track of a leader (driver's time); None while it knows
        one."""
        self._next_lease_check_s = 0.0
        self.lessor = Lessor(fsm)
        """The leader's lease deadlines (renewals stay in its memory; `fsm/lessor.py`): fed
        every applied batch and restore, stepped and asked for expiries by the lease duty."""
        self.flush_at: float | None = None
        """When the leader sends its followers the commit index if no append has (see
        `CoreConfig.commit_flush_s`)."""
        self._snapshot_gap = self._draw_snapshot_gap()
        self._snapshot_job: SnapshotJob | None = None
        self._snapshot_handed_out = False
        self._rotations: list[int] = []
        """Data key rotations asked for, the log not yet switched to their new key."""
        self._sealed_before: dict[int, tuple[int, int]] = {}
        """Switched rotations waiting for a snapshot: the new key id and the last index
        sealed under older keys."""

    # --- requests: each returns an id whose outcome comes back as one `Completed` ---------------

    def propose(self, data: bytes) -> int:
        return self.propose_batch([data])[0]

    def propose_batch(self, data: Sequence[bytes]) -> list[int]:
        """Append `data` as consecutive entries (one fsync and one append per follower)."""
        ids = [next(self._ids) for _ in data]
        try:
            first, term = self.node.propose_batch(list(data))
        except RaftError as err:
            self._completed.extend(Completed(i, error=err) for i in ids)
            return ids
        for offset, pid in enumerate(ids):
            self._track(first + offset, term, pid)
        return ids

    def propose_conf_change(self, cc: ConfChange) -> int:
        """A membership change, completed like a proposal once it applies."""
        pid = next(self._ids)
        try:
            index, term = self.node.propose_conf_change(cc)
        except RaftError as err:
            self._completed.append(Completed(pid, error=err))
            return pid
        self._track(index, term, pid)
        return pid

    def read(self) -> int:
        """A read barrier: completes with the read index once a quorum confirmed this member
        still leads (ReadIndex) and the state machine applied up to that index."""
        rid = next(self._ids)
        if self._lease_reads is not None and self.node.role is Role.LEADER:
            self._lease_pending.append(rid)  # decided by `leader_duties`, on its clock
            return rid
        self._read_barrier(rid)
        return rid

    def _read_barrier(self, rid: int) -> None:
        self._reads.add(rid)  # asked at the driver's next `has_ready`/`ready`

    def _decide_lease_reads(self, lease: LeaseReads, now_ms: float) -> None:
        """Serve the reads waiting for a decision at the commit index if the lease holds now
        (`core/lease_reads.py`), else send them through the ReadIndex barrier."""
        node = self.node
        if node.role is Role.LEADER and lease.renewal_due(now_ms, node.term):
            # A barrier of our own: its heartbeat's answers renew the lease (its outcome is
            # nobody's read: `read_states` passes over an id it did not hand out).
            node.read_index(next(self._ids))
        pending, self._lease_pending = self._lease_pending, []
        if not pending:
            return
        if node.role is Role.LEADER:
            st = node.status()
            own_term = node.term_at(st.commit) == st.term and st.lead_transferee == NONE
            if lease.valid(now_ms, st.term, node.conf.voters, own_term):
                self.lease_reads_served += len(pending)
                self._reads.at(st.commit, pending)
                self._serve_reads()
                return
        for rid in pending:
            self._read_barrier(rid)

    def rotate_data_key(self) -> int:
        """A data key rotation (the steps: `next_disk_work`); completes with `KeyRotation`."""
        rid = next(self._ids)
        self._rotations.append(rid)
        return rid

    def _track(self, index: int, term: int, pid: int) -> None:
        """Wait for the entry at `index` to apply before answering `pid`."""
        self._pending[index] = (term, pid)

    def _ask_read_index(self) -> None:
        """Ask the node to confirm leadership with a quorum, once for every read asked since
        the last Ready. One heartbeat round (a follower: one request to the leader) for the
        lot, not one per read: reads that arrive together, as a pipelined batch of them does,
        cost the leader one round. Safe because the request is made after each of them
        arrived: its read index is at least the commit index each could have seen."""
        rids = self._reads.take_next()
        if not rids:
            return
        context = next(self._ids)
        try:
            self.node.read_index(context)
        except RaftError as err:
            self._completed.extend(Completed(rid, error=err) for rid in rids)
            return
        self._reads.asked(context, (self.node.term, self.node.leader), rids)

    # --- other inputs ----------------------------------------------------------------------------

    def step(self, msg: Message) -> None:
        """A message from a peer; a malformed one is logged and dropped."""
        lease = self._lease_reads
        if lease is not None:
            term = self.node.term
            if lease.refuses_vote(msg, term):
                return
            lease.received(msg, term, self.node.role is Role.LEADER)
        try:
            self.node.step(msg)
        except ValueError as err:
            self._log.warning("dropping bad message from %d: %s", msg.frm, err)

    def tick(self) -> None:
        if self._lease_reads is not None:
            self._lease_reads.tick()
        self.node.tick()

    def report_unreachable(self, peer: int) -> None:
        self.node.report_unreachable(peer)

    def leader_duties(self, now_s: float, wall_ms: int) -> None:
        """What a leader does on its own, on the driver's clock."""
        lease = self._lease_reads
        if lease is not None:
            lease.clock(now_s * 1000)
            self._decide_lease_reads(lease, now_s * 1000)
        self._maybe_expire_leases(now_s, wall_ms)

    def _maybe_expire_leases(self, now_s: float, wall_ms: int) -> None:
        """The leader's lessor keeps the lease deadlines in memory (renewals write nothing);
        expiry is proposed naming the leases it found due, and every member applies the same.
        All the rules live in `coordinator.fsm.lessor`."""
        leading = self.node.role is Role.LEADER
        now_ms = int(now_s * 1000)
        self.lessor.step(now_ms, self.node.term if leading else 0)
        if not leading or now_s < self._next_lease_check_s:
            return
        self._next_lease_check_s = now_s + self.cfg.lease_check_s
        expiry = self.lessor.expiry(now_ms)
        if expiry is None:
            return
        try:
            self.node.propose(Envelope(0, 0, wall_ms, expiry).encode())
        except RaftError:
            self.lessor.expiry_refused(expiry)

    def renew_leases(self, asks: Sequence[tuple[Sequence[int], int]]) -> list[Renewal] | None:
        """Lease renewals (lease ids that arrived together, their arrival ms on the driver's
        clock) that a read barrier requested after every one of them arrived has just
        confirmed: the lessor's verdicts, one per lease id in order (`fsm/lessor.py`, rule
        b), or None if this member no longer leads (the renewals are to be retried where the
        leader is)."""
        term = self.node.term if self.is_leader else 0
        if not term:
            return None
        return self.lessor.renew(asks, term)

    def flush_commit(self, now_s: float) -> None:
        """Send the commit index now if its deadline (`flush_at`) passed."""
        if self.flush_at is not None and now_s >= self.flush_at:
            self.node.flush_commit()

    def schedule_flush(self, now_s: float) -> None:
        delay = self.cfg.commit_flush_s
        if delay is None or not self.node.commit_unsent:
            self.flush_at = None
        elif self.flush_at is None or self.flush_at <= now_s:
            self.flush_at = now_s + delay

    def observe_leader(self, now_s: float) -> None:
        """Fail proposals a new leader makes unknowable and reads whose ReadIndex request Raft
        dropped with a change of term or leader, and note a change of leader."""
        if self._pending and self.node.leader not in (0, self.cfg.id):
            # Another member leads now: our proposals may or may not commit under it, and if
            # no one writes at their indexes again they would wait forever. Their outcome is
            # unknown; a retry with the same session is answered exactly once either way.
            # (With no leader known they keep waiting: the caller's deadline or quorum-loss
            # detection decides, and a returning quorum may still commit them.)
            err = ProposalLostError(
                "leadership changed before the outcome was known; retry with the same session"
            )
            self._completed.extend(Completed(pid, error=err) for _, pid in self._pending.values())
            self._pending.clear()
        leader = self.node.leader
        dropped = self._reads.dropped((self.node.term, leader))
        if dropped:
            lost = NotLeaderError(leader, "a read")  # the caller looks for the leader again
            self._completed.extend(Completed(rid, error=lost) for rid in dropped)
        if leader != self._last_leader:
            if leader:
                self.leader_changes += 1
                self.leaderless_since_s = None
            else:
                self.leaderless_since_s = now_s
            self._last_leader = leader
            self._notices.append(LeaderChanged(leader))

    # --- the Ready cycle -------------------------------------------------------------------------

    def has_ready(self) -> bool:
        self._ask_read_index()
        return self.node.has_ready()

    def ready(self) -> Ready:
        self._ask_read_index()
        rd = self.node.ready()
        self._sent(rd)
        return rd

    def _sent(self, rd: Ready | None) -> None:
        lease = self._lease_reads
        if lease is not None and rd is not None and self.node.role is Role.LEADER:
            lease.sent(rd.messages, self.node.term)

    def finish(
        self, rd: Ready, transport: Transport, sent: Callable[[], None] | None = None
    ) -> None:
        """Send, apply and advance, once `ready.persist(storage, rd)` has returned (`sent`:
        see `ready.finish`)."""
        finish(self.node, transport, self, rd, sent)

    def handle_ready(self, transport: Transport) -> bool:
        """One whole Ready in the one order (`ready.handle_ready`); False if there was none."""
        self._ask_read_index()
        rd = handle_ready(self.node, self.storage, transport, self)
        self._sent(rd)
        return rd is not None

    # Applier (called by `finish`)

    def restore(self, snapshot: Snapshot) -> None:
        with self._image_decode():
            self.fsm.restore(snapshot.data)
        self._applied_conf = snapshot.meta.conf
        err = ProposalLostError("outcome unknown (replaced by a snapshot); retry")
        for index in [i for i in self._pending if i <= snapshot.meta.index]:
            _, pid = self._pending.pop(index)
            self._completed.append(Completed(pid, error=err))
        self.lessor.on_restored()
        self._notices.append(Restored())

    def apply(self, entries: Sequence[Entry]) -> None:
        batch: list[Applied] = []
        for e in entries:
            applied = self.fsm.apply(e)
            batch.append(applied)
            if e.kind is EntryKind.CONF:
                self._applied_conf = ConfState.decode(e.data)
            self._answer(e, applied)
        self.lessor.on_applied(batch)
        self._notices.append(AppliedBatch(tuple(batch)))
        self._serve_reads()
        self._maybe_snapshot()

    def _answer(self, entry: Entry, applied: Applied) -> None:
        """Complete the proposal waiting for `entry`'s index, if any: it applied."""
        waiting = self._pending.pop(entry.index, None)
        if waiting is None:
            return
        term, pid = waiting
        if term == entry.term:
            self._completed.append(Completed(pid, applied))
        else:
            err = ProposalLostError("a new leader overwrote this proposal; retry")
            self._completed.append(Completed(pid, error=err))

    def read_states(self, states: Sequence[ReadState]) -> None:
        self._reads.confirmed(states)
        self._serve_reads()

    def _serve_reads(self) -> None:
        served = self._reads.served(self.fsm.applied_index)
        self._completed.extend(Completed(rid, index) for rid, index in served)

    # --- snapshots, compaction and key rotation --------------------------------------------------

    def _maybe_snapshot(self, *, now: bool = False) -> None:
        """Start a snapshot when the log has grown by the drawn gap (or `now`)."""
        applied = self.fsm.applied_index
        snap_index = self.storage.snapshot().meta.index
        if self._snapshot_job is not None or applied <= snap_index:
            return
        if applied - snap_index < self._snapshot_gap and not now:
            return
        self._snapshot_job = SnapshotJob(applied, self._applied_conf, self.fsm.snapshot_later())
        self._snapshot_handed_out = False

    def snapshot_to_encode(self) -> SnapshotJob | None:
        """The image to encode, once per snapshot (None: none due, or handed out already)."""
        if self._snapshot_job is None or self._snapshot_handed_out:
            return None
        self._snapshot_handed_out = True
        return self._snapshot_job

    def snapshot_encoded(self, job: SnapshotJob) -> SnapshotWrite | None:
        """The disk write that installs `job`'s image (None: a snapshot received from the
        leader overtook it). An encoding failure is a bug: `job.data` None raises."""
        assert job is self._snapshot_job and job.data is not None
        self._snapshot_job = None
        self._snapshot_gap = self._draw_snapshot_gap()
        current = self.storage.snapshot().meta.index
        return self._settle_snapshot(current, job.index, (job.conf, job.data))

    def next_disk_work(self) -> DiskWork | None:
        """The next step of the data key rotations asked for: switch the log to a new key
        (between two Readys, after the last write under the old key), then, once what came
        before the switch is applied, a snapshot under the new key that completes them."""
        if self._rotations:
            return KeySwitch(self.storage, self._rotations.pop(0))
        waiting = [last for _, last in self._sealed_before.values()]
        if not waiting or self._snapshot_job is not None:
            return None
        current = self.storage.snapshot().meta.index
        if current >= min(waiting):  # a snapshot from the leader covers them already
            return self._settle_snapshot(current, current, None)
        if self.fsm.applied_index >= min(waiting):
            self._maybe_snapshot(now=True)
        return None

    def disk_done(self, work: DiskWork) -> None:
        """`work.run()` has returned."""
        if isinstance(work, KeySwitch):
            self._sealed_before[work.rotation] = (work.key_id, work.last)
            self._log.warning(
                "data key rotated: key %d seals everything from index %d on; re-encrypting "
                "through a snapshot",
                work.key_id,
                work.last + 1,
            )
        elif isinstance(work, SnapshotWrite):
            if work.retired:
                self._log.info(
                    "data key(s) %s retired: nothing on disk is sealed under them", work.retired
                )
            top = max(work.index, work.current)
            for rid in work.rotations:
                key_id, _ = self._sealed_before.pop(rid)
                self._completed.append(
                    Completed(rid, KeyRotation(key_id, top, tuple(work.retired)))
                )

    def _settle_snapshot(
        self, current: int, index: int, image: tuple[ConfState, SnapshotData] | None
    ) -> SnapshotWrite | None:
        """Write `image` as the snapshot at `index` if that is newer than the `current` one,
        compact and retire keys. Rotations whose entries under older keys the newest snapshot
        covers complete with it: for them the log is compacted all the way, so those keys
        can go."""
        top = max(index, current)
        rotated = [r for r, (_, last) in self._sealed_before.items() if last <= top]
        if index <= current and not rotated:
            return None  # a snapshot received from the leader overtook this one
        keep = 0 if rotated else self.cfg.snapshot_keep_entries
        return SnapshotWrite(self.storage, current, index, image, max(current, top - keep), rotated)

    def _draw_snapshot_gap(self) -> int:
        """Entries between two snapshots: the configured count plus up to half again, drawn
        anew each time, so that members do not all encode and write their images at once
        (about 1.3 s of CPU and disk per 500,000 keys, measured)."""
        every = self.cfg.snapshot_every_entries
        return every + self._rng.randrange(0, every // 2 + 1)

    def run_background(self) -> None:
        """Run every snapshot and disk step due, inline: for drivers without threads."""
        while True:
            job = self.snapshot_to_encode()
            if job is not None:
                job.run()
                write = self.snapshot_encoded(job)
                if write is not None:
                    write.run()
                    self.disk_done(write)
                continue
            work = self.next_disk_work()
            if work is None:
                if self._snapshot_job is not None and not self._snapshot_handed_out:
                    continue  # the rotation asked for a snapshot now
                return
            work.run()
            self.disk_done(work)

    # --- outputs ---------------------------------------------------------------------------------

    def completions(self) -> list[Completed]:
        """Outcomes since the last call, in the order they became final."""
        done, self._completed = self._completed, []
        return done

    def notices(self) -> list[Notice]:
        """What observers are to be told since the last call, in order."""
        out, self._notices = self._notices, []
        return out

    def fail_all(self, err: RaftError) -> None:
        """Complete every request still waiting with `err` (the member is stopping)."""
        ids = [
            *self._rotations,
            *self._sealed_before,
            *(pid for _, pid in self._pending.values()),
            *self._reads.take_all(),
            *self._lease_pending,
        ]
        self._lease_pending.clear()
        self._rotations.clear()
        self._sealed_before.clear()
        self._pending.clear()
        self._completed.extend(Completed(i, error=err) for i in ids)

    # --- introspection ---------------------------------------------------------------------------

    @property
    def applied_conf(self) -> ConfState:
        """The configuration as of the state machine's applied index."""
        return self._applied_conf

    @property
    def snapshot_gap(self) -> int:
        """Entries applied past the newest snapshot before the next one is taken (drawn)."""
        return self._snapshot_gap

    @property
    def rotating(self) -> bool:
        return bool(self._rotations or self._sealed_before)

    @property
    def is_leader(self) -> bool:
        return self.node.role is Role.LEADER

    @property
    def leader(self) -> int:
        return self.node.leader

    def status(self) -> Status:
        return self.node.status()
