"""RaftLoop: one member's Raft core, driven for real on an asyncio event loop.

Task ownership. One task, `run()`, owns the `RawNode` and the `StateMachine`: it alone calls
`tick`, `step`, `propose`, `read_index` and `handle_ready`, so neither needs a lock. Other
tasks (gRPC handlers, the peer transport) never touch them; they put requests on the inbox
and await a future that `run()` settles. The ticker is part of `run()` (a deadline, not a
second task), so a tick can never interleave with a Ready half-processed.

Batching. Each turn of the loop drains everything queued, hands all proposals to the core in
one `propose_batch`, and then processes the resulting Ready: one fsync covers every proposal
that arrived while the previous fsync ran (group commit), and one APP per follower carries
them all. The write and fsync of new entries run on a dedicated disk thread while `run()`
awaits it (`driver.persist`, then `driver.finish` back on the loop): the node is not stepped
meanwhile, so the ordering of `handle_ready` holds, but the event loop keeps accepting
requests and peer messages, which queue up for the next turn and share its fsync.

Snapshots. Every so many applied entries the state machine's image is taken without
stopping the member: `StateMachine.snapshot_later` copies what it needs on the loop (fast),
a snapshot thread encodes the image while the loop goes on, and once it is ready `run()`
writes it through the disk thread like a persist (`DurableLog.create_snapshot`, then
`compact`), so the WAL is still touched by one thread at a time.

Outcomes. A proposal is identified by the (index, term) the core gave it. When the entry at
that index applies, the proposal succeeded iff the entry's term matches; otherwise another
leader overwrote it and the caller gets `ProposalLostError` (retrying with the same session
sequence is safe: the state machine answers a duplicate from its session table).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from coordinator.fsm import Applied, Command, Effect, Envelope, ExpireLeases, StateMachine
from coordinator.raft import (
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryKind,
    LogStorage,
    Message,
    RaftError,
    RawNode,
    ReadState,
    Role,
    Snapshot,
    Status,
)

from .clock import Clock
from .driver import Transport, Wal, finish, persist, send_early
from .heap import image_decode

log = logging.getLogger("concord.raft")
_T = TypeVar("_T")


class DurableLog(Wal, LogStorage, Protocol):
    """The member's log: durable writes (`Wal`) and Raft's read side (`LogStorage`) in one."""

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot: ...

    def compact(self, index: int) -> int: ...

    def rotate_dek(self) -> int: ...

    def retire_keys(self) -> list[int]: ...


class LoopObserver(Protocol):
    """Told what the member did, from inside `run()`: between two applies, so it may read the
    state machine, and it must neither block nor raise (an exception is logged and dropped).
    The client-facing server uses this to wake blocked requests and watch streams."""

    def on_applied(self, batch: Sequence[Applied]) -> None:
        """Entries just applied, in log order (the state machine already reflects them)."""
        ...

    def on_restored(self) -> None:
        """The state machine was replaced by a snapshot: everything may have changed at once,
        and the effects of the entries it covers were never reported."""
        ...

    def on_leader(self, leader: int) -> None:
        """The leader this member knows of changed (0: none known)."""
        ...

    def on_stop(self) -> None:
        """`run()` is ending; nothing more will be reported."""
        ...


class LoopEvents(Protocol):
    """Told of each proposal's life and of each applied batch, for metrics (which observe
    the loop instead of overriding its methods, so no call path can bypass the count). Called
    on the event loop; must neither block nor raise (an exception is logged and dropped)."""

    def proposal_started(self) -> None:
        """A proposal was accepted for replication (`submit`, `change_membership`)."""
        ...

    def proposal_settled(self, error: BaseException | None) -> None:
        """A started proposal's caller has its outcome: None (committed and applied, even if
        the state machine answered with an error result), the exception it got
        (NotLeaderError, ProposalLostError, StoppedError...), or CancelledError if the
        caller stopped waiting first (its proposal may still commit)."""
        ...

    def applied_batch(self, entries: int, duration_s: float) -> None:
        """A batch of committed entries was applied, taking `duration_s` (any snapshot the
        batch triggered included)."""
        ...


class ProposalLostError(RaftError):
    """The proposal's fate is not ours to report: another leader overwrote it, or we lost
    leadership before it applied. Retrying with the same session is always safe."""


class StoppedError(RaftError):
    """The member is shutting down."""


@dataclass(frozen=True, slots=True)
class LoopConfig:
    id: int
    tick_s: float = 0.1
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_every_entries: int = 10_000
    """Snapshot after this many applied entries, plus up to half again (drawn per snapshot,
    so that members do not all snapshot at one index)."""
    snapshot_keep_entries: int = 1_000
    """Entries kept below a snapshot so slightly lagging followers need no snapshot."""
    lease_check_s: float = 0.5
    max_batch: int = 1024
    commit_flush_s: float | None = 0.002
    """A leader tells its followers a new commit index with its next append (under load one
    is due well within this), or after this long without one (see `Config.lazy_commit`): a
    message and an answer per follower and commit fewer. None: at once, with an append of
    its own."""


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """What `RaftLoop.rotate_data_key` did."""

    key_id: int
    """The new data key's id: everything written from the rotation on is sealed under it."""
    snapshot_index: int
    """The snapshot sealed under the new key, up to which the log was compacted."""
    retired: tuple[int, ...]
    """Key ids dropped from the ring (nothing on disk needs them any more)."""


@dataclass(slots=True)
class _Proposal:
    data: bytes
    future: asyncio.Future[Applied]


@dataclass(slots=True)
class _Pending:
    term: int
    future: asyncio.Future[Applied]


class _Wake:
    """asyncio.Event for the loop's one waiter, with a timeout but without the task that
    `asyncio.wait_for` creates per wait: the loop waits once per batch of input, on the
    latency path of every request."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self, timeout_s: float) -> None:
        """Until `set` (or already set) or `timeout_s` passes."""
        if self._flag:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(slots=True)
class _Inbox:
    messages: list[Message] = field(default_factory=list)
    proposals: list[_Proposal] = field(default_factory=list)
    calls: list[Callable[[], None]] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    """Peers whose connection broke. Stepped before messages: a PreVote from a fellow follower
    of a crashed leader often arrives together with our own news of the crash, and must not
    be refused as if the leader were still there."""


class RaftLoop:
    def __init__(
        self,
        cfg: LoopConfig,
        storage: DurableLog,
        transport: Transport,
        fsm: StateMachine,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        on_effects: Callable[[Sequence[Effect]], None] | None = None,
        events: LoopEvents | None = None,
    ) -> None:
        self.cfg = cfg
        self.events = events
        self.storage = storage
        self.transport = transport
        self.fsm = fsm
        self.clock = clock
        self.on_effects = on_effects
        self._rng = rng or random.Random()
        self.node = RawNode(
            Config(
                id=cfg.id,
                rng=self._rng,
                election_timeout_ticks=cfg.election_ticks,
                heartbeat_ticks=cfg.heartbeat_ticks,
                lazy_commit=cfg.commit_flush_s is not None,
                logger=log,
            ),
            storage,
        )
        snap = storage.snapshot()
        if snap.data:
            with image_decode():
                fsm.restore(snap.data)
        self._applied_conf = snap.meta.conf
        self._inbox = _Inbox()
        self._wake = _Wake()
        self._pending: dict[int, _Pending] = {}
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._waiting_reads: list[tuple[int, asyncio.Future[int]]] = []
        self._ctx = itertools.count(1)
        self._stopped = False
        self.leader_changes = 0
        self._last_leader = 0
        self._next_lease_check_s = 0.0
        self._observers: list[LoopObserver] = []
        self._heard_s: dict[int, float] = {}
        """peer id -> monotonic time its latest message arrived (any type)."""
        self._leaderless_since_s: float | None = clock.monotonic_s()
        """When this member last lost track of a leader; None while it knows one."""
        self._flush_at: float | None = None
        """When the leader sends its followers the commit index if no append has (see
        `LoopConfig.commit_flush_s`)."""
        self._snapshot_gap = self._draw_snapshot_gap()
        self._snapshot_job: tuple[asyncio.Future[bytes], int, ConfState] | None = None
        """The image being encoded, and the applied index and configuration it is of."""
        self._snapper = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"snapshot-{cfg.id}"
        )
        self._disk = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"wal-{cfg.id}"
        )
        self._rotations: list[asyncio.Future[KeyRotation]] = []
        """Data key rotations asked for, the WAL not yet switched to their new key."""
        self._sealed_before: dict[asyncio.Future[KeyRotation], tuple[int, int]] = {}
        """Switched rotations waiting for a snapshot: the new key id and the last index
        sealed under older keys."""

    # --- called from other tasks -------------------------------------------------------------

    def receive(self, msg: Message) -> None:
        """A message from a peer (the transport calls this)."""
        self._heard_s[msg.frm] = self.clock.monotonic_s()
        self._inbox.messages.append(msg)
        self._wake.set()

    def peer_unreachable(self, peer: int) -> None:
        """The transport lost its connection with `peer` (a hint the core weighs: a follower
        whose leader it was campaigns soon, see `RawNode.report_unreachable`)."""
        self._inbox.lost.append(peer)
        self._wake.set()

    async def propose(self, command: Command, client_id: int = 0, seq: int = 0) -> Applied:
        """Replicate one command; returns what applying it produced. Raises NotLeaderError
        (with the leader we know of) or ProposalLostError; both are safe to retry."""
        return await self.submit(command, client_id, seq)

    def submit(self, command: Command, client_id: int = 0, seq: int = 0) -> asyncio.Future[Applied]:
        """`propose` as a future (cancel it to stop waiting), so that a caller can await it
        directly: one less task between the apply and the answer."""
        self._check_running()
        env = Envelope(client_id, seq, self.clock.wall_ms(), command)
        fut: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self._inbox.proposals.append(_Proposal(env.encode(), fut))
        self._track(fut)
        self._wake.set()
        return fut

    async def read_barrier(self) -> int:
        """Wait until this member's state machine reflects every write acknowledged before
        the call (ReadIndex): a linearizable read may then be served locally."""
        return await self.read_barrier_future()

    def read_barrier_future(self) -> asyncio.Future[int]:
        """`read_barrier` as a future (cancel it to stop waiting)."""
        self._check_running()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        ctx = next(self._ctx)

        def ask() -> None:
            if fut.done():
                return  # the caller gave up (timed out, cancelled) before this turn
            try:
                self.node.read_index(ctx)
                self._reads[ctx] = fut
            except RaftError as err:
                fut.set_exception(err)

        self._call(ask)
        return fut

    async def conf_change(self, cc: ConfChange) -> int:
        return await self._run_in_loop(lambda: self.node.propose_conf_change(cc)[0])

    async def change_membership(self, cc: ConfChange) -> Applied:
        """Propose a membership change and wait until it applies, like `propose` (same
        errors; the change took effect iff this returns)."""
        self._check_running()
        fut: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()

        def call() -> None:
            if fut.done():
                return  # the caller gave up before this turn: propose nothing
            try:
                index, term = self.node.propose_conf_change(cc)
            except RaftError as err:
                fut.set_exception(err)
                return
            self._pending[index] = _Pending(term, fut)

        self._track(fut)
        self._call(call)
        return await fut

    async def rotate_data_key(self) -> KeyRotation:
        """Seal everything from now on under a new data key and re-encrypt what the member
        keeps through a snapshot: the WAL starts a new segment under the new key; once the
        entries before it are applied, a snapshot (sealed under the new key) is taken at
        once and the log compacted up to it, without the usual tail of entries kept for slow
        followers (they get the snapshot instead); then every key that no segment or snapshot
        needs is dropped from the ring. Waits for all of it; a member that cannot apply the
        entries before the switch (no quorum) waits until it can."""
        self._check_running()
        done: asyncio.Future[KeyRotation] = asyncio.get_running_loop().create_future()
        self._rotations.append(done)
        self._wake.set()
        return await done

    async def transfer_leader(self, target: int) -> None:
        await self._run_in_loop(lambda: self.node.transfer_leader(target))

    async def campaign(self) -> None:
        await self._run_in_loop(self.node.campaign)

    def status(self) -> Status:
        return self.node.status()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _track(self, fut: asyncio.Future[Applied]) -> None:
        """Report `fut`'s life to `events`. Its done callback sees every way a proposal ends
        (applied, overwritten, refused, dropped on a leader change or a snapshot, the member
        stopping, the caller giving up) without each of those places reporting it."""
        events = self.events
        if events is None:
            return
        events.proposal_started()
        fut.add_done_callback(self._settled)

    def _settled(self, fut: asyncio.Future[Applied]) -> None:
        events = self.events
        if events is None:
            return
        error = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        try:
            events.proposal_settled(error)
        except Exception:
            log.exception("loop events %r failed; ignoring", events)

    def add_observer(self, observer: LoopObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: LoopObserver) -> None:
        with contextlib.suppress(ValueError):
            self._observers.remove(observer)

    # --- the owner task ----------------------------------------------------------------------

    async def run(self) -> None:
        """Own the node until `stop()`: ticks, inputs, Ready processing."""
        next_tick = self.clock.monotonic_s() + self.cfg.tick_s
        try:
            while not self._stopped:
                wake_at = next_tick if self._flush_at is None else min(next_tick, self._flush_at)
                if not self._has_input():
                    await self._wake.wait(max(0.0, wake_at - self.clock.monotonic_s()))
                self._wake.clear()
                now = self.clock.monotonic_s()
                while now >= next_tick:
                    self.node.tick()
                    next_tick += self.cfg.tick_s
                    if now - next_tick > 10 * self.cfg.tick_s:
                        next_tick = now + self.cfg.tick_s  # we were stalled: do not burst
                self._drain_inbox()
                if self._flush_at is not None and now >= self._flush_at:
                    self.node.flush_commit()
                self._maybe_expire_leases(now)
                while await self._handle_ready():
                    self._drain_inbox()
                if self._rotations or self._sealed_before:
                    await self._advance_rotations()
                if self._snapshot_job is not None and self._snapshot_job[0].done():
                    await self._install_snapshot()
                self._observe_leader()
                self._schedule_flush(now)
        finally:
            self._stopped = True
            self._snapper.shutdown(wait=True)
            self._disk.shutdown(wait=True)
            self._fail_all(StoppedError("member stopping"))
            self._notify(lambda o: o.on_stop())

    def _schedule_flush(self, now_s: float) -> None:
        delay = self.cfg.commit_flush_s
        if delay is None or not self.node.commit_unsent:
            self._flush_at = None
        elif self._flush_at is None or self._flush_at <= now_s:
            self._flush_at = now_s + delay

    async def _handle_ready(self) -> bool:
        """`driver.handle_ready`, with the disk write of new entries or a snapshot on the disk
        thread (see the module doc). False if there was nothing to do."""
        node = self.node
        if not node.has_ready():
            return False
        rd = node.ready()
        send_early(self.transport, rd)
        if rd.entries or rd.snapshot is not None:
            await self._on_disk(lambda: persist(self.storage, rd))
        else:
            persist(self.storage, rd)  # at most a hard state: no fsync, or a rare vote's
        finish(node, self.transport, self, rd)
        return True

    async def _on_disk(self, write: Callable[[], _T]) -> _T:
        """Run `write` on the disk thread and wait for it; nothing steps the node meanwhile."""
        done = self._disk.submit(write)
        try:
            return await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            # Never leave the WAL in the middle of a write (the member closes it next).
            concurrent.futures.wait([done])
            raise

    async def _advance_rotations(self) -> None:
        """Switch the WAL to a new key for rotations that asked (between two Readys, so on
        the disk thread after the last write under the old key), and start the snapshot that
        completes them once what came before the switch is applied."""

        def switch() -> tuple[int, int]:
            key_id = self.storage.rotate_dek()
            return key_id, self.storage.last_index()

        asked, self._rotations = self._rotations, []
        for done in asked:
            if done.done():  # the caller gave up before the switch: switch nothing
                continue
            key_id, last = await self._on_disk(switch)
            self._sealed_before[done] = (key_id, last)
            log.warning(
                "data key rotated: key %d seals everything from index %d on; re-encrypting "
                "through a snapshot",
                key_id,
                last + 1,
            )
        waiting = [last for _, last in self._sealed_before.values()]
        if not waiting or self._snapshot_job is not None:
            return
        current = self.storage.snapshot().meta.index
        if current >= min(waiting):  # a snapshot from the leader covers them already
            await self._settle_snapshot(current, current, None)
        elif self.fsm.applied_index >= min(waiting):
            self._maybe_snapshot(now=True)

    def _has_input(self) -> bool:
        ib = self._inbox
        return bool(ib.messages or ib.proposals or ib.calls or ib.lost)

    def _drain_inbox(self) -> None:
        ib = self._inbox
        lost, ib.lost = ib.lost, []
        for peer in lost:
            self.node.report_unreachable(peer)
        msgs, ib.messages = ib.messages, []
        for m in msgs:
            try:
                self.node.step(m)
            except ValueError as err:
                log.warning("dropping bad message from %d: %s", m.frm, err)
        calls, ib.calls = ib.calls, []
        for call in calls:
            call()
        while ib.proposals:
            batch = ib.proposals[: self.cfg.max_batch]
            del ib.proposals[: self.cfg.max_batch]
            try:
                first, term = self.node.propose_batch([p.data for p in batch])
            except RaftError as err:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            for i, p in enumerate(batch):
                self._pending[first + i] = _Pending(term, p.future)

    def _maybe_expire_leases(self, now_s: float) -> None:
        """The leader decides lease expiry by proposing it; every member applies the same."""
        if self.node.role is not Role.LEADER or now_s < self._next_lease_check_s:
            return
        self._next_lease_check_s = now_s + self.cfg.lease_check_s
        if not self.fsm.leases():
            return
        env = Envelope(0, 0, self.clock.wall_ms(), ExpireLeases())
        with contextlib.suppress(RaftError):
            self.node.propose(env.encode())

    def _observe_leader(self) -> None:
        if self._pending and self.node.leader not in (0, self.cfg.id):
            # Another member leads now: our proposals may or may not commit under it, and if
            # no one writes at their indexes again they would wait forever. Their outcome is
            # unknown; a retry with the same session is answered exactly once either way.
            # (With no leader known they keep waiting: the caller's deadline or quorum-loss
            # detection decides, and a returning quorum may still commit them.)
            err = ProposalLostError(
                "leadership changed before the outcome was known; retry with the same session"
            )
            for p in self._pending.values():
                if not p.future.done():
                    p.future.set_exception(err)
            self._pending.clear()
        leader = self.node.leader
        if leader != self._last_leader:
            if leader:
                self.leader_changes += 1
                self._leaderless_since_s = None
            else:
                self._leaderless_since_s = self.clock.monotonic_s()
            self._last_leader = leader
            self._notify(lambda o: o.on_leader(leader))

    def _notify(self, event: Callable[[LoopObserver], None]) -> None:
        for observer in list(self._observers):
            try:
                event(observer)
            except Exception:
                log.exception("observer %r failed; ignoring", observer)

    def _call(self, fn: Callable[[], None]) -> None:
        self._inbox.calls.append(fn)
        self._wake.set()

    async def _run_in_loop(self, fn: Callable[[], _T]) -> _T:
        self._check_running()
        fut: asyncio.Future[_T] = asyncio.get_running_loop().create_future()

        def call() -> None:
            # A caller that gave up (cancelled future) must not stop the loop: settling a
            # cancelled future raises InvalidStateError, which would end run().
            try:
                result = fn()
            except RaftError as err:
                if not fut.done():
                    fut.set_exception(err)
                return
            if not fut.done():
                fut.set_result(result)

        self._call(call)
        return await fut

    def _check_running(self) -> None:
        if self._stopped:
            raise StoppedError("member stopping")

    def _fail_all(self, err: Exception) -> None:
        for done in [*self._rotations, *self._sealed_before]:
            if not done.done():
                done.set_exception(err)
        self._rotations.clear()
        self._sealed_before.clear()
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(err)
        self._pending.clear()
        for f in self._reads.values():
            if not f.done():
                f.set_exception(err)
        for _, f in self._waiting_reads:
            if not f.done():
                f.set_exception(err)
        for queued in self._inbox.proposals:
            if not queued.future.done():
                queued.future.set_exception(err)

    # --- Applier (called by handle_ready, inside run()) ----------------------------------------

    def restore(self, snapshot: Snapshot) -> None:
        with image_decode():
            self.fsm.restore(snapshot.data)
        self._applied_conf = snapshot.meta.conf
        for index in [i for i in self._pending if i <= snapshot.meta.index]:
            p = self._pending.pop(index)
            if not p.future.done():
                p.future.set_exception(
                    ProposalLostError("outcome unknown (replaced by a snapshot); retry")
                )
        self._notify(lambda o: o.on_restored())

    def apply(self, entries: Sequence[Entry]) -> None:
        started_s = self.clock.monotonic_s() if self.events is not None else 0.0
        self._apply(entries)
        if self.events is not None:
            try:
                self.events.applied_batch(len(entries), self.clock.monotonic_s() - started_s)
            except Exception:
                log.exception("loop events %r failed; ignoring", self.events)

    def _apply(self, entries: Sequence[Entry]) -> None:
        effects: list[Effect] = []
        batch: list[Applied] = []
        for e in entries:
            applied = self.fsm.apply(e)
            batch.append(applied)
            if e.kind is EntryKind.CONF:
                self._applied_conf = ConfState.decode(e.data)
            effects.extend(applied.effects)
            p = self._pending.pop(e.index, None)
            if p is not None and not p.future.done():
                if p.term == e.term:
                    p.future.set_result(applied)
                else:
                    p.future.set_exception(
                        ProposalLostError("a new leader overwrote this proposal; retry")
                    )
        if effects and self.on_effects is not None:
            self.on_effects(effects)
        if self._observers:
            self._notify(lambda o: o.on_applied(batch))
        self._serve_reads()
        self._maybe_snapshot()

    def read_states(self, states: Sequence[ReadState]) -> None:
        for rs in states:
            fut = self._reads.pop(rs.context, None)
            if fut is not None:
                self._waiting_reads.append((rs.index, fut))
        self._serve_reads()

    def _serve_reads(self) -> None:
        if not self._waiting_reads:
            return
        applied = self.fsm.applied_index
        keep: list[tuple[int, asyncio.Future[int]]] = []
        for index, fut in self._waiting_reads:
            if index <= applied:
                if not fut.done():
                    fut.set_result(index)
            else:
                keep.append((index, fut))
        self._waiting_reads = keep

    def _maybe_snapshot(self, *, now: bool = False) -> None:
        """Start encoding a snapshot when the log has grown by the drawn gap (or `now`)."""
        applied = self.fsm.applied_index
        snap_index = self.storage.snapshot().meta.index
        if self._snapshot_job is not None or applied <= snap_index:
            return
        if applied - snap_index < self._snapshot_gap and not now:
            return
        job = asyncio.get_running_loop().run_in_executor(self._snapper, self.fsm.snapshot_later())
        job.add_done_callback(lambda _: self._wake.set())
        self._snapshot_job = (job, applied, self._applied_conf)

    async def _install_snapshot(self) -> None:
        """Write the image the snapshot thread encoded (see the module doc), unless a snapshot
        received from the leader has overtaken it meanwhile."""
        assert self._snapshot_job is not None
        (job, index, conf), self._snapshot_job = self._snapshot_job, None
        data = job.result()  # an encoding failure is a bug: let it stop the member
        self._snapshot_gap = self._draw_snapshot_gap()
        current = self.storage.snapshot().meta.index
        await self._settle_snapshot(current, index, (conf, data))

    async def _settle_snapshot(
        self, current: int, index: int, image: tuple[ConfState, bytes] | None
    ) -> None:
        """Write `image` as the snapshot at `index` if that is newer than the `current` one,
        compact the log and retire the keys nothing needs any more. Rotations whose entries
        under older keys the newest snapshot covers are completed: for them the log is
        compacted all the way to it, so that those keys can go."""
        top = max(index, current)
        rotated = [d for d, (_, last) in self._sealed_before.items() if last <= top]
        if index <= current and not rotated:
            return  # a snapshot received from the leader overtook this one
        keep = 0 if rotated else self.cfg.snapshot_keep_entries

        def install() -> list[int]:
            if index > current and image is not None:
                self.storage.create_snapshot(index, *image)
            self.storage.compact(max(current, top - keep))
            return self.storage.retire_keys()

        retired = await self._on_disk(install)
        if retired:
            log.info("data key(s) %s retired: nothing on disk is sealed under them", retired)
        for done in rotated:
            key_id, _ = self._sealed_before.pop(done)
            if not done.done():
                done.set_result(KeyRotation(key_id, top, tuple(retired)))

    def _draw_snapshot_gap(self) -> int:
        """Entries between two snapshots: the configured count plus up to half again, drawn
        anew each time, so that members do not all encode and write their images at once
        (about 1.3 s of CPU and disk per 500,000 keys, measured)."""
        every = self.cfg.snapshot_every_entries
        return every + self._rng.randrange(every // 2 + 1)

    # --- introspection -----------------------------------------------------------------------

    @property
    def applied_conf(self) -> ConfState:
        """The configuration as of the state machine's applied index (what a snapshot taken
        now records; `status().conf` is the newest one in the log, committed or not)."""
        return self._applied_conf

    @property
    def term(self) -> int:
        return self.node.term

    @property
    def conf(self) -> ConfState:
        """The configuration in force: the newest one in the log, committed or not."""
        return self.node.conf

    def term_at(self, index: int) -> int:
        """The term of the log entry at `index` (0 if compacted away or past the end)."""
        return self.node.term_at(index)

    @property
    def is_leader(self) -> bool:
        return self.node.role is Role.LEADER

    @property
    def leader(self) -> int:
        return self.node.leader

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def election_timeout_s(self) -> float:
        """The base election timeout (a follower waits between this and twice this)."""
        return self.cfg.tick_s * self.cfg.election_ticks

    def last_heard_s(self, member: int) -> float | None:
        """Seconds since a message from `member` last arrived (None: never; 0 for ourself)."""
        if member == self.cfg.id:
            return 0.0
        at = self._heard_s.get(member)
        return None if at is None else max(0.0, self.clock.monotonic_s() - at)

    def leaderless_for_s(self) -> float:
        """How long this member has known no leader (0 while it knows one)."""
        since = self._leaderless_since_s
        return 0.0 if since is None else max(0.0, self.clock.monotonic_s() - since)
