"""A joined member's first start, at the runtime level: an empty WAL with no configuration of
its own, added as a learner by a leader that has already compacted its log, must receive a
snapshot (which carries the configuration), catch up and be promotable. (The join flow
itself, and the case where the leader's log still starts at index 0: tests/server/test_join.py
and tests/process/test_process_join.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

from coordinator.fsm import Put
from coordinator.raft import ConfChange, ConfChangeType, RaftError
from coordinator.storage import DiskWal, KeyStore
from tests.runtime.test_grpc_transport import Cluster, Node, run, wait_for
from tests.server.harness import loop_changes


def test_an_empty_learner_gets_a_snapshot_from_a_compacted_leader_and_is_promoted(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        c = Cluster(tmp_path)  # 3 members that snapshot every 50 entries
        await c.start()
        joiner: Node | None = None
        try:
            for i in range(130):
                await c.propose(Put(b"k%d" % i, b"v%d" % i))
            leader = await c.leader()
            assert leader.loop is not None and leader.wal is not None
            await wait_for(lambda: leader.wal is not None and leader.wal.first_index() > 1)

            # What a joined member starts from when the leader has compacted: no snapshot,
            # no configuration.
            keys = KeyStore.create(tmp_path / "m4", autolock=False)
            DiskWal.create(keys).close()
            joiner = Node(tmp_path, 4)
            port = await joiner.start()
            addresses = {**c.addresses(), 4: f"127.0.0.1:{port}"}
            assert joiner.loop is not None
            assert joiner.loop.status().conf.voters == frozenset()
            joiner.run(addresses)  # it dials everyone: it is in no configuration yet
            for n in c.running():
                assert n.transport is not None
                n.transport.add_peer(4, addresses[4])

            async def change(kind: ConfChangeType) -> None:
                while True:
                    nodes = [*c.running(), joiner]
                    loops = [n.loop for n in nodes if n.loop is not None]
                    async with loop_changes(loops) as changed:
                        lead = await c.leader()
                        assert lead.loop is not None
                        try:
                            async with asyncio.timeout(5):
                                await lead.loop.change_membership(ConfChange(kind, 4))
                            return
                        except (RaftError, TimeoutError):
                            # Not caught up yet, or leadership moved: try again once a
                            # member (the learner among them) has moved on.
                            await asyncio.wait_for(changed.wait(), 10)

            await asyncio.wait_for(change(ConfChangeType.ADD_LEARNER), 30)
            learner = joiner.loop
            await wait_for(lambda: 4 in learner.status().conf.learners, 30)
            await wait_for(lambda: learner.fsm.get(b"k129") is not None, 30)
            assert joiner.wal is not None and joiner.wal.snapshot().meta.index > 0
            assert learner.status().conf.voters == frozenset({1, 2, 3})

            await asyncio.wait_for(change(ConfChangeType.PROMOTE), 30)
            await wait_for(lambda: 4 in learner.status().conf.voters, 30)
        finally:
            if joiner is not None and joiner.task is not None:
                await joiner.stop()
            await c.close()

    run(scenario())
