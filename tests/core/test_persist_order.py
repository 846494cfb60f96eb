"""Persist before you speak, checked on the production `RaftLoop` over the real encrypted WAL.

A recorder wraps each member's WAL and transport and notes, in one timeline, every write as
it becomes durable and every message as it is sent. Then, for every message a member sent,
what the message claims must already have been on that member's disk:

- a granted vote: the hard state with that term and that vote;
- an accepted append: the entries up to the index it acknowledges;
- any message but a PreVote's: the term it carries (a leader's appends, which may go before
  the write of their own entries, carry a term the leader persisted when it campaigned).

A loop that sends a batch's messages before persisting it fails this; the mutant below does
exactly that, so the check is shown to bite.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.core import ProposalLostError, persist
from coordinator.fsm import Put, StateMachine
from coordinator.raft import (
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    Ready,
    Snapshot,
    SnapshotMeta,
)
from coordinator.runtime.clock import SystemClock
from coordinator.runtime.loop import LoopConfig, RaftLoop
from coordinator.runtime.transport import LoopbackTransport
from coordinator.storage import DiskWal, KeyStore


@dataclass
class Disk:
    """What one member has made durable so far."""

    term: int = 0
    vote: int = 0
    last_index: int = 0


@dataclass
class Timeline:
    disks: dict[int, Disk] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def persisted(self, member: int, entries: Sequence[Entry], hs: HardState | None) -> None:
        with self.lock:
            disk = self.disks[member]
            if entries:
                disk.last_index = entries[-1].index
            if hs is not None:
                disk.term, disk.vote = hs.term, hs.vote

    def snapshot_persisted(self, member: int, snap: Snapshot) -> None:
        with self.lock:
            disk = self.disks[member]
            disk.last_index = max(disk.last_index, snap.meta.index)

    def sending(self, msg: Message) -> None:
        with self.lock:
            self.sent += 1
            disk = self.disks[msg.frm]
            t = msg.type
            granted = t is MessageType.VOTE_RESP and not msg.reject
            if granted and (disk.term, disk.vote) != (msg.term, msg.to):
                self.violations.append(
                    f"{msg.frm} granted {msg.to} its vote in term {msg.term} with "
                    f"term {disk.term} vote {disk.vote} on disk"
                )
            if t is MessageType.APP_RESP and not msg.reject and msg.index > disk.last_index:
                self.violations.append(
                    f"{msg.frm} acknowledged entries up to {msg.index} with "
                    f"{disk.last_index} on disk"
                )
            if t not in (MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP) and msg.term > disk.term:
                self.violations.append(
                    f"{msg.frm} sent {t.value} in term {msg.term} with term {disk.term} on disk"
                )


class RecordingWal:
    """A `DiskWal` whose durable writes are noted in the timeline once they returned."""

    def __init__(self, inner: DiskWal, member: int, timeline: Timeline) -> None:
        self.inner, self.member, self.timeline = inner, member, timeline
        hs, _ = inner.initial_state()
        timeline.disks[member] = Disk(hs.term, hs.vote, inner.last_index())

    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        self.inner.save(entries, hard_state)
        self.timeline.persisted(self.member, entries, hard_state)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.inner.save_snapshot(snapshot)
        self.timeline.snapshot_persisted(self.member, snapshot)

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.inner.initial_state()

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        return self.inner.entries(lo, hi, max_bytes)

    def term(self, index: int) -> int:
        return self.inner.term(index)

    def first_index(self) -> int:
        return self.inner.first_index()

    def last_index(self) -> int:
        return self.inner.last_index()

    def snapshot(self) -> Snapshot:
        return self.inner.snapshot()

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        return self.inner.create_snapshot(index, conf, data)

    def compact(self, index: int) -> int:
        return self.inner.compact(index)

    def rotate_dek(self) -> int:
        return self.inner.rotate_dek()

    def retire_keys(self) -> list[int]:
        return self.inner.retire_keys()


class RecordingTransport:
    def __init__(self, net: LoopbackTransport, timeline: Timeline) -> None:
        self.net, self.timeline = net, timeline

    def send(self, msg: Message) -> None:
        self.timeline.sending(msg)
        self.net.send(msg)


class _Mute:
    def send(self, msg: Message) -> None:
        pass


class SpeaksBeforePersisting(RaftLoop):
    """Broken: sends every message of a Ready before its entries and hard state are durable."""

    async def _handle_ready(self) -> bool:
        core = self.core
        if not core.has_ready():
            return False
        rd: Ready = core.ready()
        for msg in rd.messages:
            self.transport.send(msg)
        await self._on_disk(lambda: persist(self.storage, rd))
        core.finish(rd, _Mute())
        self._deliver()
        return True


async def until(cond: Callable[[], bool]) -> None:
    # Members expose no change notifications; a short poll (the caller bounds it).
    while not cond():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def propose(loops: dict[int, RaftLoop], key: bytes, value: bytes, seq: int) -> None:
    """Commit one write through whoever leads, again (same session) if leadership moves
    meanwhile: on a loaded machine a 100 ms election timeout may pass; what the test checks
    is the order of every member's disk writes and messages, whoever leads."""
    while True:
        await until(lambda: any(m.is_leader for m in loops.values()))
        leader = next(m for m in loops.values() if m.is_leader)
        try:
            await leader.propose(Put(key, value), client_id=7, seq=seq)
            return
        except (ProposalLostError, NotLeaderError, ProposalDroppedError):
            await asyncio.sleep(0.01)


async def run_cluster(tmp_path: Path, loop_class: type[RaftLoop]) -> Timeline:
    timeline = Timeline()
    net = LoopbackTransport()
    wals: list[DiskWal] = []
    loops: dict[int, RaftLoop] = {}
    for i in (1, 2, 3):
        wal = DiskWal.create(KeyStore.create(tmp_path / f"m{i}", autolock=False))
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1, 2, 3})))))
        wals.append(wal)
        loops[i] = loop_class(
            LoopConfig(id=i, tick_s=0.01, election_ticks=10, snapshot_every_entries=15),
            RecordingWal(wal, i, timeline),
            RecordingTransport(net, timeline),
            StateMachine(),
            SystemClock(),
            rng=random.Random(i),
        )
        net.register(i, loops[i].receive)
    tasks = [asyncio.create_task(m.run()) for m in loops.values()]
    try:
        async with asyncio.timeout(30):
            for seq in range(1, 31):
                await propose(loops, b"k", b"%d" % seq, seq)
            # A leader change: votes are granted (and must be persisted) once more.
            leader = next(m for m in loops.values() if m.is_leader)
            follower = next(i for i, m in loops.items() if not m.is_leader)
            await leader.transfer_leader(follower)
            await until(lambda: any(m.is_leader and m is not leader for m in loops.values()))
            await propose(loops, b"k", b"last", 31)
    finally:
        for m in loops.values():
            m.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for wal in wals:
            wal.close()
    return timeline


def test_the_production_loop_persists_before_it_speaks(tmp_path: Path) -> None:
    timeline = asyncio.run(run_cluster(tmp_path, RaftLoop))
    assert timeline.sent > 100
    assert timeline.violations == []


def test_the_recorder_catches_a_loop_that_speaks_first(tmp_path: Path) -> None:
    timeline = asyncio.run(run_cluster(tmp_path, SpeaksBeforePersisting))
    assert any("acknowledged entries" in v for v in timeline.violations), timeline.violations
