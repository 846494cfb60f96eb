"""RaftLoop: one member, driven for real on an asyncio event loop: a thin shell over the
member core (`coordinator.core.MemberCore`), which decides everything; this module does the
waiting, the threads and the futures.

Task ownership. One task, `run()`, owns the core (and through it the `RawNode` and the
`StateMachine`): it alone steps it, so none of them needs a lock. Other tasks (gRPC handlers,
the peer transport) never touch them; they put requests on the inbox and await a future that
`run()` settles from the core's `Completed` records. The ticker is part of `run()` (a
deadline, not a second task), so a tick can never interleave with a Ready half-processed.

Batching. Each turn of the loop drains everything queued, hands all proposals to the core in
one batch, and then processes the resulting Ready: one fsync covers every proposal that
arrived while the previous fsync ran (group commit), and one APP per follower carries them
all. The write and fsync of new entries run on a dedicated disk thread while `run()` awaits
it (`ready.persist`, then the core's `finish` back on the loop): the core is not stepped
meanwhile, so the order of `core.ready` holds, but the event loop keeps accepting requests
and peer messages, which queue up for the next turn and share its fsync.

Retries. A retry of a session request whose entry is still undecided joins it rather than
proposing another (`proposals.RetryJoins`, which says why).

Snapshots. When the core's policy says so, the state machine's image is taken without
stopping the member: `StateMachine.snapshot_later` copies what it needs on the loop (fast),
a snapshot thread encodes the image (`SnapshotJob.run`) while the loop goes on, and once it
is ready `run()` writes it through the disk thread like a persist (the core's
`SnapshotWrite`), so the WAL is still touched by one thread at a time. Data key rotations'
steps (`KeySwitch`) go the same way.

Threads. The disk and snapshot threads come from the `threads` factory the loop is given
(`runtime.threads`; real threads unless a test on virtual time passes counted ones). The loop
owns both: it makes them when it is built and shuts them down, waiting for their jobs, when
`run()` ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from coordinator.core import (
    AppliedBatch,
    Completed,
    CoreConfig,
    DurableLog,
    KeyRotation,
    KeySwitch,
    LeaderChanged,
    MemberCore,
    ProposalLostError,
    ReadMode,
    Restored,
    SnapshotJob,
    StoppedError,
    Transport,
    persist,
    send_early,
)
from coordinator.fsm import Applied, Command, Effect, Envelope, Lessor, StateMachine
from coordinator.raft import ConfChange, ConfState, Message, RaftError, RawNode, Status

from .clock import Clock
from .heap import image_decode, release_free_heap
from .loop_observers import LoopEvents, LoopObserver
from .proposals import Proposal, RetryJoins
from .threads import ThreadFactory, one_thread
from .wake import Wake

__all__ = [
    "DurableLog",
    "KeyRotation",
    "LoopConfig",
    "LoopEvents",
    "LoopObserver",
    "ProposalLostError",
    "RaftLoop",
    "StoppedError",
]

log = logging.getLogger("concord.raft")
_T = TypeVar("_T")


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
    read_mode: ReadMode = ReadMode.BARRIER
    """ReadIndex barriers, or leader-lease reads (`core/lease_reads.py`)."""

    def core_config(self) -> CoreConfig:
        return CoreConfig(
            id=self.id,
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            snapshot_every_entries=self.snapshot_every_entries,
            snapshot_keep_entries=self.snapshot_keep_entries,
            lease_check_s=self.lease_check_s,
            commit_flush_s=self.commit_flush_s,
            read_mode=self.read_mode,
            tick_s=self.tick_s,
        )


@runtime_checkable
class FlushesNow(Protocol):
    """A transport that can write at once what `send` queued for the end of the turn."""

    def flush_now(self) -> None: ...


def _complete(fut: asyncio.Future[Any] | None, done: Completed) -> None:
    if fut is None or fut.done():
        return  # the caller gave up
    if done.error is not None:
        fut.set_exception(done.error)
    else:
        fut.set_result(done.value)


def _on_leader(leader: int) -> Callable[[LoopObserver], None]:
    return lambda observer: observer.on_leader(leader)


@dataclass(slots=True)
class _Inbox:
    messages: list[Message] = field(default_factory=list)
    proposals: list[Proposal] = field(default_factory=list)
    calls: list[tuple[asyncio.Future[Any], Callable[[], None]]] = field(default_factory=list)
    """Work for `run()` and the future its caller awaits (failed if the loop stops first)."""
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
        threads: ThreadFactory = one_thread,
    ) -> None:
        self.cfg = cfg
        self.events = events
        self.storage = storage
        self.transport = transport
        self._flush_now = transport.flush_now if isinstance(transport, FlushesNow) else None
        self.fsm = fsm
        self.clock = clock
        self.on_effects = on_effects
        self.core = MemberCore(
            cfg.core_config(),
            storage,
            fsm,
            rng or random.Random(),
            logger=log,
            image_decode=image_decode,
            now_s=clock.monotonic_s(),
        )
        self._inbox = _Inbox()
        self._wake = Wake()
        self._futures: dict[int, asyncio.Future[Any]] = {}
        """Core request id -> the future its `Completed` record settles."""
        self._joins = RetryJoins()
        self._stopped = False
        self._observers: list[LoopObserver] = []
        self._heard_s: dict[int, float] = {}
        """peer id -> monotonic time its latest message arrived (any type)."""
        self._encoding: tuple[SnapshotJob, asyncio.Future[None]] | None = None
        """The image being encoded on the snapshot thread."""
        self._snapper = threads(f"snapshot-{cfg.id}")
        self._disk = threads(f"wal-{cfg.id}")

    @property
    def node(self) -> RawNode:
        return self.core.node

    @property
    def leader_changes(self) -> int:
        return self.core.leader_changes

    @property
    def lease_reads_served(self) -> int:
        """Reads this member served on its leader lease, without a round trip (0 with
        ReadIndex barriers)."""
        return self.core.lease_reads_served

    @property
    def lessor(self) -> Lessor:
        """The leader's lease deadlines (`coordinator.fsm.lessor`), kept by the core; the
        server renews and reads through it, on this loop between two turns."""
        return self.core.lessor

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
        retry = (client_id, seq, command) if client_id else None
        self._inbox.proposals.append(Proposal(env.encode(), fut, retry))
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
        self._call(fut, lambda: self._ask(fut, self.core.read))
        return fut

    async def conf_change(self, cc: ConfChange) -> int:
        return await self._run_in_loop(lambda: self.node.propose_conf_change(cc)[0])

    async def change_membership(self, cc: ConfChange) -> Applied:
        """Propose a membership change and wait until it applies, like `propose` (same
        errors; the change took effect iff this returns)."""
        self._check_running()
        fut: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self._track(fut)
        self._call(fut, lambda: self._ask(fut, lambda: self.core.propose_conf_change(cc)))
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
        self._call(done, lambda: self._ask(done, self.core.rotate_data_key))
        return await done

    async def transfer_leader(self, target: int) -> None:
        await self._run_in_loop(lambda: self.node.transfer_leader(target))

    async def campaign(self) -> None:
        await self._run_in_loop(self.node.campaign)

    def status(self) -> Status:
        return self.core.status()

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
        """Own the core until `stop()`: ticks, inputs, Ready processing, background work."""
        core = self.core
        next_tick = self.clock.monotonic_s() + self.cfg.tick_s
        try:
            while not self._stopped:
                flush_at = core.flush_at
                wake_at = next_tick if flush_at is None else min(next_tick, flush_at)
                if not self._has_input():
                    await self._wake.wait(max(0.0, wake_at - self.clock.monotonic_s()))
                self._wake.clear()
                now = self.clock.monotonic_s()
                while now >= next_tick:
                    core.tick()
                    next_tick += self.cfg.tick_s
                    if now - next_tick > 10 * self.cfg.tick_s:
                        next_tick = now + self.cfg.tick_s  # we were stalled: do not burst
                self._drain_inbox()
                core.flush_commit(now)
                # A fresh reading, not the turn's `now`: a lease read is decided on it, and a
                # reading older than the decision would make the lease look younger.
                core.leader_duties(self.clock.monotonic_s(), self.clock.wall_ms())
                while await self._handle_ready():
                    self._drain_inbox()
                if core.rotating:
                    await self._advance_rotations()
                await self._snapshot_step()
                core.observe_leader(self.clock.monotonic_s())
                self._deliver()
                core.schedule_flush(now)
        finally:
            self._stopped = True
            self._snapper.shutdown(wait=True)
            self._disk.shutdown(wait=True)
            self._fail_all(StoppedError("member stopping"))
            self._notify(lambda o: o.on_stop())

    async def _handle_ready(self) -> bool:
        """The core's Ready in `core.ready`'s order, with the disk write of new entries or a
        snapshot on the disk thread (see the module doc). False if there was nothing to do."""
        core = self.core
        if not core.has_ready():
            return False
        rd = core.ready()
        send_early(self.transport, rd)
        if rd.entries or rd.snapshot is not None:
            if self._flush_now is not None:
                # The appends on the wire before the disk thread takes the GIL to seal them.
                self._flush_now()
            await self._on_disk(lambda: persist(self.storage, rd))
        else:
            persist(self.storage, rd)  # at most a hard state: no fsync, or a rare vote's
        started_s = self.clock.monotonic_s() if rd.committed_entries else 0.0
        core.finish(rd, self.transport, self._flush_now)
        self._deliver()
        if rd.committed_entries and self.events is not None:
            try:
                duration_s = self.clock.monotonic_s() - started_s
                self.events.applied_batch(len(rd.committed_entries), duration_s)
            except Exception:
                log.exception("loop events %r failed; ignoring", self.events)
        self._start_snapshot()
        return True

    async def _on_disk(self, write: Callable[[], _T]) -> _T:
        """Run `write` on the disk thread and wait for it; nothing steps the core meanwhile."""
        done = self._disk.submit(write)
        try:
            return await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            # Never leave the WAL in the middle of a write (the member closes it next).
            concurrent.futures.wait([done])
            raise

    async def _advance_rotations(self) -> None:
        """Run the rotations' disk steps the core asks for, on the disk thread."""
        while (work := self.core.next_disk_work()) is not None:
            if isinstance(work, KeySwitch):
                asked = self._futures.get(work.rotation)
                if asked is None or asked.done():
                    self._futures.pop(work.rotation, None)
                    continue  # the caller gave up before the switch: switch nothing
            await self._on_disk(work.run)
            self.core.disk_done(work)
        self._deliver()
        self._start_snapshot()

    def _start_snapshot(self) -> None:
        """Encode the image the core asks for on the snapshot thread."""
        job = self.core.snapshot_to_encode()
        if job is None:
            return
        encoding = asyncio.get_running_loop().run_in_executor(self._snapper, job.run)
        encoding.add_done_callback(lambda _: self._wake.set())
        self._encoding = (job, encoding)

    async def _snapshot_step(self) -> None:
        """Write an encoded image through the disk thread (unless a snapshot received from
        the leader overtook it)."""
        if self._encoding is None or not self._encoding[1].done():
            return
        (job, encoding), self._encoding = self._encoding, None
        encoding.result()  # an encoding failure is a bug: let it stop the member
        write = self.core.snapshot_encoded(job)
        del job, encoding  # the image: freed before the trim below
        if write is not None:
            await self._on_disk(write.run)
            self.core.disk_done(write)
            self._deliver()
            # The entries compaction dropped and the encoder's buffers are freed by now; give
            # their pages back (6-17 ms at a million keys, on the disk thread, GIL released).
            del write
            await self._on_disk(release_free_heap)

    def _has_input(self) -> bool:
        ib = self._inbox
        return bool(ib.messages or ib.proposals or ib.calls or ib.lost)

    def _drain_inbox(self) -> None:
        ib, core = self._inbox, self.core
        lost, ib.lost = ib.lost, []
        for peer in lost:
            core.report_unreachable(peer)
        msgs, ib.messages = ib.messages, []
        for m in msgs:
            core.step(m)
        calls, ib.calls = ib.calls, []
        for _, call in calls:
            call()
        while ib.proposals:
            batch = ib.proposals[: self.cfg.max_batch]
            del ib.proposals[: self.cfg.max_batch]
            for pid, p in self._joins.propose(batch, core.propose_batch):
                self._futures[pid] = p.future
        self._deliver()

    def _ask(self, fut: asyncio.Future[Any], request: Callable[[], int]) -> None:
        """Hand a request to the core (inside `run()`), unless its caller gave up already."""
        if fut.done():
            return  # the caller gave up (timed out, cancelled) before this turn: ask nothing
        self._futures[request()] = fut
        self._deliver()

    def _deliver(self) -> None:
        """Settle the futures of the core's completed requests and tell observers what it
        did, in order."""
        for done in self.core.completions():
            self._settle(done)
        for notice in self.core.notices():
            if isinstance(notice, AppliedBatch):
                self._applied(notice.applied)
            elif isinstance(notice, Restored):
                self._notify(lambda o: o.on_restored())
            elif isinstance(notice, LeaderChanged):
                self._notify(_on_leader(notice.leader))

    def _settle(self, done: Completed) -> None:
        _complete(self._futures.pop(done.id, None), done)
        for joined in self._joins.settled(done.id):
            _complete(joined, done)

    def _applied(self, batch: Sequence[Applied]) -> None:
        if self.on_effects is not None:
            effects = [e for applied in batch for e in applied.effects]
            if effects:
                self.on_effects(effects)
        if self._observers:
            self._notify(lambda o: o.on_applied(batch))

    def _notify(self, event: Callable[[LoopObserver], None]) -> None:
        for observer in list(self._observers):
            try:
                event(observer)
            except Exception:
                log.exception("observer %r failed; ignoring", observer)

    def _call(self, fut: asyncio.Future[Any], fn: Callable[[], None]) -> None:
        self._inbox.calls.append((fut, fn))
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

        self._call(fut, call)
        return await fut

    def _check_running(self) -> None:
        if self._stopped:
            raise StoppedError("member stopping")

    def _fail_all(self, err: StoppedError) -> None:
        self.core.fail_all(err)
        self._deliver()
        for fut in [*self._futures.values(), *self._joins.drop_all()]:
            if not fut.done():
                fut.set_exception(err)
        self._futures.clear()
        queued = [p.future for p in self._inbox.proposals] + [f for f, _ in self._inbox.calls]
        for fut in queued:
            if not fut.done():
                fut.set_exception(err)

    # --- introspection -----------------------------------------------------------------------

    @property
    def applied_conf(self) -> ConfState:
        """The configuration as of the state machine's applied index (what a snapshot taken
        now records; `status().conf` is the newest one in the log, committed or not)."""
        return self.core.applied_conf

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
        return self.core.is_leader

    @property
    def leader(self) -> int:
        return self.core.leader

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
        since = self.core.leaderless_since_s
        return 0.0 if since is None else max(0.0, self.clock.monotonic_s() - since)
