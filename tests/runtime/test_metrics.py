"""The member's metrics: the scrape-time ones read the state they describe (the sealing-key
age moves with the member's wall clock and resets when a newer key is committed), and every
family a member exports moves in a scenario of three real members."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.client import Client, prefix_end
from coordinator.core import ReadMode
from coordinator.daemon.member import Member, MemberConfig
from coordinator.fsm import Envelope, Put, SealingKeyAdd, StateMachine
from coordinator.raft import ConfState, Entry, EntryKind, NotLeaderError, Snapshot, SnapshotMeta
from coordinator.runtime.clock import ManualClock
from coordinator.runtime.loop import LoopConfig, RaftLoop
from coordinator.runtime.metrics import MemberMetrics
from coordinator.runtime.transport import LoopbackTransport
from coordinator.server import ServiceConfig
from coordinator.server import server as server_module
from coordinator.storage import DiskWal, KeyStore
from coordinator.testing.ports import free_ports
from coordinator.testing.virtual_time import LoopClock, counted_thread, run_virtual, until


def _loop(tmp_path: Path, clock: ManualClock) -> RaftLoop:
    wal = DiskWal.create(KeyStore.create(tmp_path / "data", autolock=False))
    wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1})))))
    return RaftLoop(
        LoopConfig(id=1, tick_s=0.01, election_ticks=10),
        wal,
        LoopbackTransport(),
        StateMachine(),
        clock,
        rng=random.Random(1),
    )


def _samples(metrics: MemberMetrics) -> dict[str, list[float]]:
    text = generate_latest(metrics.registry).decode()
    return {
        family.name: [s.value for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def _add_key(loop: RaftLoop, index: int, n: int, created_ms: int, after: bytes) -> None:
    add = SealingKeyAdd(bytes([n]) * 8, created_ms, b"der", b"pem", after)
    loop.fsm.apply(Entry(index, 1, EntryKind.NORMAL, Envelope(1, index, created_ms, add).encode()))


def test_sealing_key_age_follows_the_wall_clock_and_resets_on_renewal(tmp_path: Path) -> None:
    clock = ManualClock()
    loop = _loop(tmp_path, clock)
    metrics = MemberMetrics()
    metrics.attach(loop)
    try:
        # No key yet: the family is there (its HELP/TYPE lines) with no sample, so an alert
        # on it cannot fire for a cluster that seals nothing.
        before = _samples(metrics)
        assert before["concord_sealing_keys"] == [0.0]
        assert before["concord_sealing_key_age_seconds"] == []

        _add_key(loop, 1, 1, clock.wall_ms() - 5_000, b"")
        assert _samples(metrics)["concord_sealing_key_age_seconds"] == [5.0]
        clock.advance(86_400)
        assert _samples(metrics)["concord_sealing_key_age_seconds"] == [86_405.0]

        # A renewal: the newest key's age starts again; the old key is still counted.
        _add_key(loop, 2, 2, clock.wall_ms(), b"\1" * 8)
        after = _samples(metrics)
        assert after["concord_sealing_key_age_seconds"] == [0.0]
        assert after["concord_sealing_keys"] == [2.0]

        # A proposer whose clock ran ahead of this member's: clamped, never negative.
        _add_key(loop, 3, 3, clock.wall_ms() + 60_000, b"\2" * 8)
        assert _samples(metrics)["concord_sealing_key_age_seconds"] == [0.0]
    finally:
        loop.storage.close()  # type: ignore[attr-defined]


def test_lease_reads_are_counted(tmp_path: Path) -> None:
    """A leader in `--read-mode lease` answers read barriers from its lease, and
    `concord_lease_reads_served` counts them (the barrier-mode scenario below never can)."""

    async def scenario() -> None:
        wal = DiskWal.create(KeyStore.create(tmp_path / "data", autolock=False))
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1})))))
        loop = RaftLoop(
            LoopConfig(id=1, tick_s=0.01, election_ticks=10, read_mode=ReadMode.LEASE),
            wal,
            LoopbackTransport(),
            StateMachine(),
            LoopClock(),
            rng=random.Random(1),
            threads=counted_thread,
        )
        metrics = MemberMetrics()
        metrics.attach(loop)
        task = asyncio.create_task(loop.run())
        try:
            await until(lambda: loop.is_leader, 10)
            await loop.propose(Put(b"k", b"v"))  # an entry of its own term: leases may serve
            assert _samples(metrics)["concord_lease_reads_served"] == [0.0]
            for _ in range(3):
                await loop.read_barrier()
            assert _samples(metrics)["concord_lease_reads_served"] == [3.0]
        finally:
            loop.stop()
            await task
            wal.close()

    run_virtual(scenario())


# --- every exported family moves -----------------------------------------------------------------

# Families a three-member in-process scenario cannot move, each with why and where it is tested.
RARE_FAMILIES = {
    # 1 only while a member waits for its unlock key (autolock); this scenario's members have
    # none. Moves in tests/runtime/test_member.py (a locked member).
    "concord_member_locked",
    # Counts refusals on the workload port, which needs TLS and a TokenReview API server.
    # tests/server/test_workload.py counts them through the same `on_denied` callback.
    "concord_workload_denied",
    # Counts reads served on the leader lease, which this scenario's members (ReadIndex
    # barriers, the default) never do: test_lease_reads_are_counted below moves it.
    "concord_lease_reads_served",
}

Scrape = dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]


def _scrape(metrics: MemberMetrics) -> Scrape:
    """family -> (sample name, labels) -> value, as the member's /metrics page shows them
    (without the `_created` timestamps, which the member process turns off)."""
    out: Scrape = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        if family.name.endswith("_created"):
            continue
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class _Tracker:
    """Which families differ, in any sample, from the first scrape of each member (a sample
    that appears counts: a labelled counter's first sample is its first event)."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = list(members)
        self.baseline = {id(m): _scrape(m.metrics) for m in members}
        self.moved: set[str] = set()

    def look(self) -> None:
        for m in self.members:
            base = self.baseline[id(m)]
            for family, samples in _scrape(m.metrics).items():
                if samples != base.get(family, {}):
                    self.moved.add(family)

    def families(self) -> set[str]:
        return {f for m in self.members for f in _scrape(m.metrics)} | set(
            f for base in self.baseline.values() for f in base
        )


def test_every_exported_metric_moves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three real members (in one process, on loopback) through writes, leases (renewed and
    expired), a queued
    lock, watches (one ended as a slow consumer), a sealing key, a data key rotation (a
    snapshot), a refused proposal, a leader transfer, a member stopped and removed: every
    family any member exports must move at least once, except `RARE_FAMILIES`. A metric
    that silently stops counting (it once did: the proposal counters hooked a `propose` the
    server no longer called) fails here."""
    # A watch queue of one event: two revisions applied in one batch end the watch as a
    # slow consumer (the real check, reached without thousands of unread events).
    monkeypatch.setattr(
        server_module, "ServiceConfig", functools.partial(ServiceConfig, watch_queue_events_max=1)
    )
    ports = free_ports(9)
    peers = {i: f"127.0.0.1:{ports[3 * (i - 1)]}" for i in (1, 2, 3)}

    def config(i: int) -> MemberConfig:
        return MemberConfig(
            id=i,
            name=f"m{i}",
            data_dir=tmp_path / f"m{i}",
            client_listen=f"127.0.0.1:{ports[3 * (i - 1) + 1]}",
            peer_listen=peers[i],
            metrics_listen=f"127.0.0.1:{ports[3 * (i - 1) + 2]}",
            initial_cluster=peers,
            cluster_id="metrics",
            tls_dir=None,
            insecure=True,
            unlock_key_file=None,
            tick_ms=20,
            election_ticks=10,
        )

    async def scenario() -> set[str]:
        members = [Member(config(i)) for i in (1, 2, 3)]
        tasks = [asyncio.create_task(m.run()) for m in members]
        stopped: set[int] = set()
        try:
            await _until(lambda: all(m.loop is not None and m.loop.leader for m in members))
            seen = _Tracker(members)
            endpoints = [f"127.0.0.1:{m.client_port}" for m in members]
            async with Client(endpoints) as client:
                leader = _leader(members)
                follower = next(m for m in members if m is not leader)
                assert leader.loop is not None and follower.loop is not None

                # Pending: counted from the moment the loop takes the proposal.
                pending = leader.loop.submit(Put(b"pending", b"1"))
                seen.look()
                await pending

                # Refused: a follower's loop will not propose (NotLeaderError). `submit`, as
                # the server calls it (not `propose`, which the old subclass counted).
                with pytest.raises(NotLeaderError):
                    await follower.loop.submit(Put(b"refused", b"1"))

                # Leases: one renewed by the lessor in memory, one left to expire.
                kept_id = await client.lease_grant(3_000)
                kept = client.keep_alive(kept_id, 3_000)
                await client.lease_grant(1_000)
                await _until(lambda: kept.renewals >= 1)
                await _until(lambda: _sample(leader, "concord_lease_expiries") >= 1.0)
                seen.look()
                kept.stop()

                # Writes through the server, a lease, a lock with a waiter, a watch.
                await client.put(b"k", b"v")
                lease = await client.lease_grant(60_000)
                held = await client.acquire("L", lease)
                other = await client.lease_grant(60_000)
                waiter = asyncio.create_task(client.acquire("L", other))
                watched: list[bytes] = []
                opened = await client.put(b"w/open", b"x")

                async def watch() -> None:
                    w = client.watch(b"w/", prefix_end(b"w/"), start_revision=opened)
                    async for event in w:
                        watched.append(event.kv.key)

                watching = asyncio.create_task(watch())
                await _until(lambda: _sample(leader, "concord_lock_waiters") == 1.0)
                await _until(lambda: bool(watched))  # the watch is open: look now
                seen.look()
                await client.release(held)
                await waiter
                # Many revisions in one applied batch: more than the one-event queue holds.
                await asyncio.gather(*(client.put(b"w/%d" % i, b"x") for i in range(20)))
                await _until(lambda: len(set(watched)) == 21)  # resumed after the slow end
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
                await client.sealing_certificate()
                await client.rotate_data_key(f"127.0.0.1:{leader.client_port}")
                seen.look()

                # A new leader: term, role, leader and leader changes move everywhere.
                await client.transfer_leader(follower.cfg.id)
                await _until(lambda: _leader(members) is follower)
                seen.look()

                # A member stopped (its peers lose the stream and drop what they send it),
                # then removed (fewer voters).
                gone = next(m for m in members if m is not follower)
                gone.request_stop("test: stopped")
                stopped.add(gone.cfg.id)
                assert await asyncio.wait_for(tasks[members.index(gone)], 10) == 0
                await _until(lambda: _sample(follower, "concord_peer_reachable") < 2.0)
                await client.member_remove(gone.cfg.id)
                await client.put(b"after", b"1")
                seen.look()
            # The allow-list names families that exist (a renamed one must leave it).
            assert seen.families() >= RARE_FAMILIES
            # The chart's Grafana dashboard reads only families members export (the deploy
            # test checks the same against a live release, with its alerts).
            unknown = _dashboard_series() - seen.families()
            assert not unknown, f"the dashboard reads series no member exports: {unknown}"
            return seen.families() - seen.moved
        finally:
            for m, t in zip(members, tasks, strict=True):
                if m.cfg.id not in stopped:
                    m.request_stop("test over")
                    assert await asyncio.wait_for(t, 10) == 0

    still = asyncio.run(scenario())
    assert still - RARE_FAMILIES == set(), f"never moved: {sorted(still - RARE_FAMILIES)}"


def _dashboard_series() -> set[str]:
    """The metric families the chart's Grafana dashboard reads (suffixes stripped)."""
    path = Path(__file__).resolve().parents[2] / "charts" / "concord" / "files" / "dashboard.json"
    panels = json.loads(path.read_text())["panels"]
    exprs = " ".join(t["expr"] for panel in panels for t in panel["targets"])
    return {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for name in re.findall(r"\bconcord_[a-z_]+", exprs)
    }


def _leader(members: Sequence[Member]) -> Member:
    leaders = [m for m in members if m.loop is not None and m.loop.is_leader]
    assert len(leaders) <= 1
    if not leaders:
        raise LookupError("no leader")
    return leaders[0]


def _sample(member: Member, family: str) -> float:
    """The sum of `family`'s samples on `member`."""
    return sum(_scrape(member.metrics).get(family, {}).values())


async def _until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while True:
            with contextlib.suppress(LookupError):
                if cond():
                    return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)
