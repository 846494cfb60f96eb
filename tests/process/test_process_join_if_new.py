"""Process test: the StatefulSet's one command line (`--join-if-new`) on real members.

- A first member that starts after the other two formed the cluster bootstraps all the same:
  it never ran, so its empty state is its true one (the leader had not listed it).
- A first member whose data dir was wiped after it ran does not start (exit 1, saying its
  data were lost and what to do): bootstrapping it again as a voter could lose committed
  writes. Once it is removed from the cluster it starts empty and waits; readmitted as a
  learner (what the operator does for a StatefulSet ordinal), it catches up and is promoted,
  and serves the data written before.
- A later member (beyond --initial-cluster, a scaled-up ordinal) starts empty and waits to
  be added; wiped while a voter, it does not start either, until removed and readmitted.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from coordinator.client import Client, ConcordError
from coordinator.testing.process_cluster import ProcessCluster, run

pytestmark = pytest.mark.process


def test_a_first_member_bootstraps_late_but_not_after_losing_its_data(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path / "cluster") as c:
        for m in c.members.values():
            m.extra_args.append("--join-if-new")
        c.start(2)
        c.start(3)
        try:
            run(_scenario(c), 240)
        except BaseException:
            print(c.log_tails(chars=6000))
            raise


async def _scenario(c: ProcessCluster) -> None:
    await c.leader()  # 2 of 3 formed the cluster without member 1
    c.start(1)
    await c.wait_ready(timeout_s=60)
    assert "new data dir of first member 1: bootstrap" in c.members[1].current_log()
    async with c.client() as cl:
        await cl.put(b"before", b"1")

        async def listed() -> bool:
            return any(m.id == 1 and m.name for m in (await cl.members()).members)

        await c.wait(listed, 30, "member 1 listed in the directory")
    leader = await c.leader()
    victim = next(i for i in (1, 2, 3) if i != leader)
    others = [i for i in (1, 2, 3) if i != victim]
    m = c.members[victim]
    c.terminate(victim)
    shutil.rmtree(m.data_dir)  # a lost claim

    c.start(victim)
    assert m.popen is not None
    code = await asyncio.to_thread(m.popen.wait, 60)
    m.expected_running = False
    assert code == 1, c.log_tails([victim])
    assert "its data were lost" in m.current_log()
    assert f"concordctl member remove {victim}" in m.current_log()

    async with c.client(others) as cl:
        await cl.member_remove(victim)
        c.start(victim)
        await c.wait(
            lambda: _logged(m.current_log(), "waiting to be added as a learner"),
            60,
            "the wiped member waiting to be added",
        )
        peer_url, client_url = f"https://{m.peer_address}", f"https://{m.client_address}"
        # The removed id, readmitted (the same member coming back), as the operator does.
        await cl.member_add_learner(victim, f"member-{victim}", peer_url, client_url, readmit=True)
        await c.wait(_promoted(cl, victim), 60, f"member {victim} promoted")
    await c.wait_ready(timeout_s=60)
    async with c.client([victim]) as cl:
        got = await cl.get(b"before")
        assert got is not None and got.value == b"1"


async def _logged(log: str, text: str) -> bool:
    return text in log


def test_a_later_member_waits_to_be_added_and_refuses_to_start_after_losing_its_data(
    tmp_path: Path,
) -> None:
    """Member 4, beyond --initial-cluster (a scaled-up ordinal): it starts empty and waits,
    is added and promoted; wiped while a voter, it does not start again until removed, then
    is readmitted and serves the data written before."""
    with ProcessCluster(tmp_path / "cluster", size=4) as c:
        first = [m for m in c.members.values() if m.id <= 3]
        c.initial_cluster = ",".join(f"{m.id}={m.peer_address}" for m in first)
        for m in c.members.values():
            m.extra_args.append("--join-if-new")
        for m in first:
            c.start(m.id)
        try:
            run(_later_member(c), 240)
        except BaseException:
            print(c.log_tails(chars=6000))
            raise


async def _later_member(c: ProcessCluster) -> None:
    m = c.members[4]
    peer_url, client_url = f"https://{m.peer_address}", f"https://{m.client_address}"
    await c.wait_ready([1, 2, 3], timeout_s=60)
    c.start(4)
    await c.wait(
        lambda: _logged(m.current_log(), "waiting to be added as a learner"),
        60,
        "member 4 waiting to be added",
    )
    assert "new data dir of member 4: wait" in m.current_log()
    async with c.client([1, 2, 3]) as cl:
        await cl.put(b"before", b"1")
        await cl.member_add_learner(4, "member-4", peer_url, client_url)
        await c.wait(_promoted(cl, 4), 60, "member 4 promoted")
        c.terminate(4)
        shutil.rmtree(m.data_dir)  # a lost claim, while a voter
        c.start(4)
        assert m.popen is not None
        code = await asyncio.to_thread(m.popen.wait, 60)
        m.expected_running = False
        assert code == 1, c.log_tails([4])
        assert "has this member as a voter: it ran before" in m.current_log()
        await cl.member_remove(4)
        c.start(4)
        await c.wait(
            lambda: _logged(m.current_log(), "waiting to be added as a learner"),
            60,
            "the wiped member 4 waiting to be added",
        )
        await cl.member_add_learner(4, "member-4", peer_url, client_url, readmit=True)
        await c.wait(_promoted(cl, 4), 60, "member 4 promoted again")
    await c.wait_ready(timeout_s=60)
    async with c.client([4]) as cl:
        got = await cl.get(b"before")
        assert got is not None and got.value == b"1"


def _promoted(cl: Client, member: int) -> Callable[[], Awaitable[bool]]:
    async def promoted() -> bool:
        try:
            await cl.member_promote(member)
        except ConcordError as err:
            if err.code == "FAILED_PRECONDITION":
                return False  # still catching up
            raise
        return True

    return promoted
