"""DiskWal under the real Raft core and the real `handle_ready`, as the runtime will use it:
one object as the node's LogStorage and as its Wal.

Three members on real disks exchange messages through an in-test queue (no event loop, no
clock: ticks are explicit). One member is cut off while the leader snapshots and compacts,
so it catches up through InstallSnapshot; members restart from disk along the way."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from coordinator.raft import (
    Config,
    ConfState,
    Entry,
    EntryKind,
    Message,
    RawNode,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
)
from coordinator.runtime.driver import Applier, Transport, Wal, handle_ready
from coordinator.storage import DiskWal, KeyStore

VOTERS = frozenset({1, 2, 3})


class _Outbox:
    def __init__(self) -> None:
        self.queue: list[Message] = []
        self.down: set[int] = set()

    def send(self, msg: Message) -> None:
        if msg.to not in self.down and msg.frm not in self.down:
            self.queue.append(msg)


class _Machine:
    """A list of applied values; the snapshot is their join."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.applied = 0

    def restore(self, snapshot: Snapshot) -> None:
        self.values = [v for v in bytes(snapshot.data).split(b",") if v]
        self.applied = snapshot.meta.index

    def apply(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.kind is EntryKind.NORMAL and e.data:
                self.values.append(e.data)
            self.applied = e.index

    def read_states(self, states: Sequence[ReadState]) -> None:
        pass


class _Member:
    def __init__(self, node_id: int, data_dir: Path, outbox: _Outbox) -> None:
        self.id = node_id
        self.data_dir = data_dir
        self.outbox = outbox
        keys = KeyStore.create(data_dir, autolock=True)
        self.unlock_key = keys.unlock_key
        with DiskWal.create(keys) as wal:
            wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(VOTERS))))
        self.start()

    def start(self) -> None:
        self.wal = DiskWal.open(KeyStore.open(self.data_dir, self.unlock_key))
        self.app = _Machine()
        snap = self.wal.snapshot()
        if not snap.empty:
            self.app.restore(snap)
        cfg = Config(id=self.id, rng=random.Random(self.id), pre_vote=False)
        self.node = RawNode(cfg, self.wal)

    def restart(self) -> None:
        self.wal.close()
        self.start()

    def pump(self) -> bool:
        wal: Wal = self.wal
        transport: Transport = self.outbox
        app: Applier = self.app
        return handle_ready(self.node, wal, transport, app) is not None


def _settle(members: dict[int, _Member], outbox: _Outbox) -> None:
    for _ in range(10_000):
        progressed = any([m.pump() for m in members.values()])
        if outbox.queue:
            msg = outbox.queue.pop(0)
            members[msg.to].node.step(msg)
        elif not progressed:
            return
    raise AssertionError("cluster did not settle")


def test_a_cluster_on_disk_replicates_snapshots_and_restarts(tmp_path: Path) -> None:
    outbox = _Outbox()
    members = {i: _Member(i, tmp_path / f"m{i}", outbox) for i in sorted(VOTERS)}
    members[1].node.campaign()
    _settle(members, outbox)
    leader = members[1]
    assert leader.node.role is Role.LEADER

    for i in range(10):
        leader.node.propose(b"v%d" % i)
        _settle(members, outbox)
    assert all(m.app.values == [b"v%d" % i for i in range(10)] for m in members.values())

    members[2].restart()  # a follower restarts from its disk and rejoins
    outbox.down.add(3)  # member 3 misses the next stretch entirely
    for i in range(10, 30):
        leader.node.propose(b"v%d" % i)
        _settle(members, outbox)
    applied = leader.app.applied
    leader.wal.create_snapshot(applied, ConfState(VOTERS), b",".join(leader.app.values))
    leader.wal.compact(applied)
    assert leader.wal.first_index() == applied + 1

    outbox.down.clear()
    leader.node.propose(b"v30")
    for _ in range(3):
        leader.node.tick()
        _settle(members, outbox)
    expected = [b"v%d" % i for i in range(31)]
    assert members[3].wal.snapshot().meta.index == applied, "3 caught up by InstallSnapshot"
    assert all(m.app.values == expected for m in members.values())

    # Everyone restarts from disk alone: the snapshot restores the machine, and the committed
    # entries after it are applied again from the WAL.
    for m in members.values():
        m.restart()
    _settle(members, outbox)
    for m in members.values():
        assert m.app.values == expected, f"member {m.id}"
        m.wal.close()
