"""Three RaftLoops on one event loop, over the real encrypted WAL on disk.

These run on virtual time (coordinator.testing.virtual_time): ticks of 10 ms of the event
loop's clock, which jumps to the next timer whenever nothing else can run; the disk and
snapshot threads' work is real, on counted threads (`counted_thread`), and stops the virtual
clock while it runs. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from coordinator.fsm import (
    ErrorCode,
    FsmError,
    LeaseGrant,
    LockAcquire,
    Put,
    SequenceCreate,
    SequenceNext,
    StateMachine,
)
from coordinator.raft import ConfState, NotLeaderError, Snapshot, SnapshotMeta
from coordinator.runtime.loop import LoopConfig, RaftLoop
from coordinator.runtime.transport import LoopbackTransport
from coordinator.storage import DiskWal, KeyStore
from coordinator.testing.virtual_time import LoopClock, counted_thread, run_virtual, until


def open_member(root: Path, member: int, net: LoopbackTransport, create: bool) -> RaftLoop:
    data = root / f"m{member}"
    if create:
        keys = KeyStore.create(data, autolock=False)
        wal = DiskWal.create(keys)
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1, 2, 3})))))
    else:
        wal = DiskWal.open(KeyStore.open(data))
    loop = RaftLoop(
        LoopConfig(id=member, tick_s=0.01, election_ticks=10, snapshot_every_entries=20),
        wal,
        net,
        StateMachine(),
        LoopClock(),
        rng=random.Random(member),
        threads=counted_thread,
    )
    net.register(member, loop.receive)
    return loop


async def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    await until(cond, timeout_s)  # members expose no change notifications: virtual polls


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.net = LoopbackTransport()
        self.members = {i: open_member(root, i, self.net, create=True) for i in (1, 2, 3)}
        self.tasks = {i: asyncio.create_task(m.run()) for i, m in self.members.items()}

    def running(self) -> list[RaftLoop]:
        return [m for i, m in self.members.items() if i in self.tasks]

    async def leader(self) -> RaftLoop:
        # Looked for again after the wait, which resumes this coroutine a loop turn after its
        # check: time enough on a loaded machine for that leader to step down.
        while True:
            await wait_for(lambda: any(m.is_leader for m in self.running()))
            leader = next((m for m in self.running() if m.is_leader), None)
            if leader is not None:
                return leader

    async def stop(self, member: int) -> None:
        self.members[member].stop()
        await self.tasks.pop(member)
        self.members[member].storage.close()  # type: ignore[attr-defined]
        self.net.members.pop(member)

    async def restart(self, member: int) -> None:
        self.members[member] = open_member(self.root, member, self.net, create=False)
        self.tasks[member] = asyncio.create_task(self.members[member].run())

    async def close(self) -> None:
        for member in list(self.tasks):
            await self.stop(member)


def run(coro: Coroutine[Any, Any, None]) -> None:
    run_virtual(coro)


def test_writes_commit_survive_a_leader_crash_and_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = Cluster(tmp_path)
        try:
            leader = await c.leader()
            await leader.propose(SequenceCreate("orders", start=1, increment=1), 7, 1)
            got = []
            for seq in range(2, 40):
                applied = await leader.propose(SequenceNext("orders", 1), 7, seq)
                assert not isinstance(applied.result, FsmError)
                got.append(applied.result.first)  # type: ignore[union-attr]
            assert got == list(range(1, 39))
            old = next(i for i, m in c.members.items() if m is leader)
            await c.stop(old)
            new = await c.leader()
            applied = await new.propose(SequenceNext("orders", 1), 7, 40)
            assert applied.result.first == 39  # type: ignore[union-attr]
            await c.restart(old)
            back = c.members[old]
            await wait_for(lambda: back.fsm.applied_index >= new.fsm.applied_index)
            assert back.fsm.sequence_current("orders") == new.fsm.sequence_current("orders")
            # Snapshots were taken every 20 entries and the log compacted behind them.
            assert new.storage.snapshot().meta.index > 0
        finally:
            await c.close()

    run(scenario())


def test_followers_refuse_proposals_and_name_the_leader(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = Cluster(tmp_path)
        try:
            leader = await c.leader()
            await leader.propose(Put(b"k", b"v"))
            follower = next(m for m in c.members.values() if m is not leader)
            await wait_for(lambda: follower.leader != 0)
            with pytest.raises(NotLeaderError) as err:
                await follower.propose(Put(b"k", b"w"))
            assert err.value.leader == leader.cfg.id
            # A linearizable read through a follower sees the acknowledged write.
            await follower.read_barrier()
            kv = follower.fsm.get(b"k")
            assert kv is not None and kv.value == b"v"
        finally:
            await c.close()

    run(scenario())


def test_state_machine_errors_come_back_as_values(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = Cluster(tmp_path)
        try:
            leader = await c.leader()
            applied = await leader.propose(LockAcquire("jobs", 999, waiter_id=1))
            assert isinstance(applied.result, FsmError)
            assert applied.result.code is ErrorCode.NOT_FOUND
            lease = await leader.propose(LeaseGrant(ttl_ms=5_000))
            assert not isinstance(lease.result, FsmError)
        finally:
            await c.close()

    run(scenario())


def test_proposals_of_a_deposed_leader_fail_as_unknown_not_hang(tmp_path: Path) -> None:
    """An isolated leader appends proposals it can never commit; once it hears of the new
    leader, every one of them fails with ProposalLostError (outcome unknown: retry with the
    same session), even those at indexes no one writes again."""
    from coordinator.runtime.loop import ProposalLostError

    async def scenario() -> None:
        c = Cluster(tmp_path)
        try:
            old = await c.leader()
            await old.propose(Put(b"warm", b"up"))
            c.net.isolate(old.cfg.id)
            stuck = [asyncio.ensure_future(old.propose(Put(b"k%d" % i, b"v"))) for i in range(5)]
            await wait_for(lambda: any(m.is_leader for m in c.running() if m is not old))
            c.net.heal()
            results = await asyncio.wait_for(
                asyncio.gather(*stuck, return_exceptions=True), timeout=10
            )
            assert all(isinstance(r, ProposalLostError) for r in results), results
        finally:
            await c.close()

    run(scenario())


def test_a_caller_that_gives_up_does_not_stop_the_loop(tmp_path: Path) -> None:
    """Requests queued for the loop whose callers were cancelled (a client deadline) before
    the loop's turn: settling their futures must not raise inside run()."""

    async def scenario() -> None:
        c = Cluster(tmp_path)
        try:
            leader = await c.leader()
            follower = next(m for m in c.members.values() if m is not leader)
            gave_up = [
                asyncio.ensure_future(leader.transfer_leader(99)),  # refused: not a member
                asyncio.ensure_future(follower.campaign()),
                asyncio.ensure_future(leader.read_barrier()),
            ]
            await asyncio.sleep(0)  # queued on the loops' inboxes
            for f in gave_up:
                f.cancel()
            # A call queued after the abandoned ones and answered at once (refused): once each
            # loop answered it, it has settled them.
            await asyncio.wait_for(
                asyncio.gather(
                    leader.transfer_leader(99), follower.transfer_leader(99), return_exceptions=True
                ),
                10,
            )
            assert all(not t.done() for t in c.tasks.values()), "a Raft loop stopped"
            leader = await c.leader()
            await leader.propose(Put(b"still", b"running"))
        finally:
            await c.close()

    run(scenario())


def test_a_retry_joins_its_first_attempt_while_that_entry_is_undecided(tmp_path: Path) -> None:
    """A client whose attempt timed out retries with the same session seq while the entry is
    still waiting for a quorum: the retry waits for that entry, and no second one is made;
    the same seq with another command, or another seq, is proposed as before."""

    async def scenario() -> None:
        c = Cluster(tmp_path)
        try:
            leader = await c.leader()
            await leader.propose(Put(b"warm", b"up"), 9, 1)
            followers = [i for i, m in c.members.items() if m is not leader]
            for i in followers:
                await c.stop(i)  # no quorum: what the leader proposes now stays undecided
            before = leader.status().last_index
            first = leader.submit(Put(b"k", b"v"), 9, 2)
            same_turn = leader.submit(Put(b"k", b"v"), 9, 2)
            first.cancel()  # the first attempt's caller gave up, as a timed-out RPC does
            # Both were queued before the loop's turn, so they reach the core together.
            await wait_for(lambda: leader.status().last_index > before)
            assert leader.status().last_index == before + 1  # one entry for both
            later_turn = leader.submit(Put(b"k", b"v"), 9, 2)
            other_command = leader.submit(Put(b"k", b"other"), 9, 2)
            next_seq = leader.submit(Put(b"k2", b"v"), 9, 3)
            await wait_for(lambda: leader.status().last_index > before + 1)
            assert leader.status().last_index == before + 3  # the retry made none
            for i in followers:
                await c.restart(i)
            a, b = await asyncio.wait_for(asyncio.gather(same_turn, later_turn), 10)
            assert a is b and not a.duplicate and a.index == before + 1
            d = await asyncio.wait_for(other_command, 10)
            assert d.duplicate and d.index == before + 2  # answered from the session, as before
            e = await asyncio.wait_for(next_seq, 10)
            assert not e.duplicate and e.index == before + 3
            kv = leader.fsm.get(b"k")
            assert kv is not None and kv.value == b"v"
        finally:
            await c.close()

    run(scenario())


def test_a_data_key_rotation_reencrypts_through_a_snapshot_and_retires_the_old_key(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        c = Cluster(tmp_path)
        try:
            leader = await c.leader()
            for i in range(30):
                await leader.propose(Put(b"k%d" % i, b"v%d" % i))
            wal = leader.storage
            assert isinstance(wal, DiskWal)
            before = wal.key_ids_in_use()
            rotation = await asyncio.wait_for(leader.rotate_data_key(), 10)
            assert rotation.key_id not in before
            assert set(rotation.retired) == before
            assert rotation.snapshot_index >= 30
            # Nothing on disk is sealed under an older key: the log was compacted to the
            # snapshot taken under the new one (the usual 1,000-entry tail would keep them).
            assert wal.key_ids_in_use() == {rotation.key_id}
            assert wal.first_index() > rotation.snapshot_index - 1

            # It goes on under the new key, and reopens from disk holding that key alone.
            await leader.propose(Put(b"after", b"1"))
            me = next(i for i, m in c.members.items() if m is leader)
            await c.stop(me)
            await c.restart(me)
            back = c.members[me]
            # "after" is committed; the restarted member has it (from its own log, under
            # the new key) once a leader tells it the commit index.
            await wait_for(lambda: back.fsm.get(b"after") is not None)
            kv = back.fsm.get(b"k7")
            assert kv is not None and kv.value == b"v7"
            reopened = back.storage
            assert isinstance(reopened, DiskWal)
            assert reopened.key_ids_in_use() == {rotation.key_id}
        finally:
            await c.close()

    run(scenario())


def test_a_rotation_waits_for_the_entries_before_its_switch_to_apply(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = Cluster(tmp_path)
        try:
            leader = await c.leader()
            await leader.propose(Put(b"a", b"1"))
            wal = leader.storage
            assert isinstance(wal, DiskWal)
            before = wal.key_ids_in_use()
            followers = [i for i, m in c.members.items() if m is not leader]
            for i in followers:
                await c.stop(i)
            # An entry the leader logs but cannot commit: no quorum.
            stuck = asyncio.ensure_future(leader.propose(Put(b"b", b"2")))
            await wait_for(lambda: wal.last_index() > leader.fsm.applied_index)
            rotation = asyncio.ensure_future(leader.rotate_data_key())
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(rotation), 0.5)
            # Switched (new records use the new key), but the old key still seals that entry.
            assert len(wal.key_ids_in_use()) == len(before) + 1
            for i in followers:
                await c.restart(i)
            # Once a quorum is back, the entry is committed (or overwritten by a new leader's)
            # and applied, and the rotation completes.
            done = await asyncio.wait_for(rotation, 10)
            assert set(done.retired) == before
            assert wal.key_ids_in_use() == {done.key_id}
            stuck.cancel()  # committed or overwritten: not what this test is about
        finally:
            await c.close()

    run(scenario())
