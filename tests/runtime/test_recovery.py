"""Disaster recovery on real disk (coordinator.runtime.recovery): a backup image restored into
new data dirs that a member opens with the state intact and the new configuration, and a
survivor's data dir forced into a one-member cluster that serves writes alone.

Members run in process (asyncio, insecure loopback, 10 ms ticks); every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from coordinator.client import Client
from coordinator.daemon.member import Member, MemberConfig
from coordinator.fsm import (
    Envelope,
    JoinTokenAdd,
    JoinTokenRevoke,
    LeaseGrant,
    LockAcquire,
    MemberUpsert,
    Noop,
    Put,
    SequenceCreate,
    SequenceNext,
    StateMachine,
)
from coordinator.raft import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from coordinator.runtime.recovery import (
    FORCED_MARKER,
    RecoveryError,
    check_force_target,
    force_new_cluster,
    restore_data_dir,
    restored_directory,
)
from coordinator.storage import DiskWal, KeyStore, LockedError
from coordinator.testing.ports import free_ports
from tests.fsm.support import Driver

T = TypeVar("T")
LEASE_TTL_MS = 60_000


def free_port() -> int:
    (port,) = free_ports(1)
    return port


# --- an image with something of everything ------------------------------------------------------


class Image:
    def __init__(self) -> None:
        d = Driver()
        d.time_ms = 1_000
        d.ok(Put(b"config", b"v1"))
        self.lease = d.ok(LeaseGrant(LEASE_TTL_MS)).id  # type: ignore[union-attr]
        d.ok(Put(b"session/alive", b"yes", lease=self.lease))
        self.token = d.ok(LockAcquire("jobs", self.lease)).token  # type: ignore[union-attr]
        d.ok(SequenceCreate("orders", 1, 1))
        d.ok(SequenceNext("orders", 5))  # 1..5 are issued
        d.ok(MemberUpsert(1, "alpha", "https://10.0.0.1:7071", "https://10.0.0.1:7070"))
        d.ok(MemberUpsert(9, "gone", "https://10.0.0.9:7071", "https://10.0.0.9:7070"))
        d.ok(JoinTokenAdd("old", b"o" * 32, 500))
        d.ok(JoinTokenRevoke("old", 700))
        d.ok(JoinTokenAdd("live", b"l" * 32, 900))  # valid when the backup was taken
        d.term = 4
        d.ok(Put(b"last", b"write"))
        self.data = d.m.snapshot()
        self.index, self.term = d.m.applied_index, d.m.applied_term


def config(data_dir: Path, member_id: int, peers: dict[int, str], **over: object) -> MemberConfig:
    fields: dict[str, object] = {
        "id": member_id,
        "name": f"m{member_id}",
        "data_dir": data_dir,
        "client_listen": "127.0.0.1:0",
        "peer_listen": peers[member_id],
        "metrics_listen": "127.0.0.1:0",
        "initial_cluster": peers,
        "cluster_id": "recovery-test",
        "tls_dir": None,
        "insecure": True,
        "unlock_key_file": None,
        "tick_ms": 10,
        "election_ticks": 10,
    }
    fields.update(over)
    return MemberConfig(**fields)  # type: ignore[arg-type]


async def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while not cond():  # noqa: ASYNC110 (another task's state; no event to wait on)
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def with_member(cfg: MemberConfig, scenario: Callable[[Member, Client], Awaitable[T]]) -> T:
    """Run a member in process until `scenario` (given a client of it) is done."""

    async def main() -> T:
        member = Member(cfg)
        task = asyncio.create_task(member.run())
        try:
            await wait_until(
                lambda: task.done() or (member.loop is not None and member.loop.is_leader),
                "the member to lead",
            )
            if task.done():
                raise AssertionError(f"the member stopped with status {task.result()}")
            endpoint = f"127.0.0.1:{member.client_port}"
            async with Client([endpoint], timeout_s=10) as client:
                return await scenario(member, client)
        finally:
            member.request_stop("test over")
            await asyncio.wait_for(task, 20)

    return asyncio.run(main())


# --- restore ------------------------------------------------------------------------------------


def test_restore_builds_a_data_dir_a_member_opens_with_the_state_intact(tmp_path: Path) -> None:
    img = Image()
    peers = {1: f"127.0.0.1:{free_port()}"}
    data_dir = tmp_path / "restored"
    restored = restore_data_dir(
        img.data, index=img.index, term=img.term, data_dir=data_dir, initial_cluster=peers
    )
    assert restored.voters == (1,) and restored.unlock_key is None
    assert restored.join_tokens_revoked == 1
    assert [(m.id, m.name, m.client_url) for m in restored.members] == [(1, "alpha", "")]
    assert restored.members[0].peer_url == f"https://{peers[1]}"
    with DiskWal.open(KeyStore.open(data_dir)) as wal:
        snap = wal.snapshot()
        assert (snap.meta.index, snap.meta.term) == (img.index, img.term)
        assert snap.meta.conf == ConfState(frozenset({1}))
        assert wal.hard_state == HardState(img.term, 0, img.index)
        assert wal.last_index() == img.index
    assert not list(tmp_path.glob(".*restoring"))

    async def check(member: Member, c: Client) -> None:
        kv = await c.get(b"config")
        assert kv is not None and kv.value == b"v1"
        assert (await c.get(b"last")) is not None
        assert (await c.get(b"session/alive")) is not None  # its lease lives on
        assert await c.sequence_next("orders") == [6]  # 1..5 were issued before the backup
        assert await c.check_fence("jobs", img.token)  # the lock and its token survive
        info = await c.lease_time_to_live(img.lease)
        assert info.ttl_ms == LEASE_TTL_MS and info.remaining_ms > LEASE_TTL_MS // 2
        members = await c.members()
        assert [(m.id, m.name) for m in members.members] == [(1, "alpha")]
        await c.put(b"after", b"restore")
        assert member.loop is not None
        assert member.loop.status().term > img.term

    with_member(config(data_dir, 1, peers), check)


def test_a_restored_member_lists_its_urls_and_keeps_its_restored_name_unless_named(
    tmp_path: Path,
) -> None:
    img = Image()
    port = free_port()
    peers = {1: f"127.0.0.1:{port}"}
    data_dir = tmp_path / "restored"
    restore_data_dir(
        img.data, index=img.index, term=img.term, data_dir=data_dir, initial_cluster=peers
    )
    urls = {"advertise_peer_url": f"http://{peers[1]}", "advertise_client_url": "http://c:1"}

    def listed(name: str) -> Callable[[Member, Client], Awaitable[None]]:
        async def check(member: Member, c: Client) -> None:
            assert member.loop is not None
            want = (1, name, f"http://{peers[1]}", "http://c:1")
            fsm = member.loop.fsm
            await wait_until(
                lambda: [(m.id, m.name, m.peer_url, m.client_url) for m in fsm.members()] == [want],
                f"the directory to list {want}",
            )

        return check

    # No --name: the backup's name stays, the URLs become the member's own.
    with_member(config(data_dir, 1, peers, name_given=False, **urls), listed("alpha"))
    # Started with --name: the member says who it is.
    with_member(config(data_dir, 1, peers, name="a1", **urls), listed("a1"))


def test_every_member_restored_from_one_image_gets_the_same_snapshot(tmp_path: Path) -> None:
    img = Image()
    peers = {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}
    snaps = []
    for i in (1, 2, 3):
        restore_data_dir(
            img.data,
            index=img.index,
            term=img.term,
            data_dir=tmp_path / f"d{i}",
            initial_cluster=peers,
        )
        with DiskWal.open(KeyStore.open(tmp_path / f"d{i}")) as wal:
            snaps.append(wal.snapshot())
    assert snaps[0] == snaps[1] == snaps[2]
    assert snaps[0].meta.conf == ConfState(frozenset(peers))
    rings = {(tmp_path / f"d{i}" / "keys" / "dek.ring").read_bytes() for i in (1, 2, 3)}
    assert len(rings) == 3  # each data dir has its own keys
    restored = StateMachine()
    restored.restore(snaps[0].data)
    assert [m.name for m in restored.members()] == ["alpha", "member-2", "member-3"]
    assert restored.sequence_current("orders").next_value == 6
    # A token valid in the backup is revoked, stamped with the image's own time (the same on
    # every member); one revoked before keeps its time.
    stamps = {t.id: t.revoked_ms for t in restored.join_tokens()}
    assert stamps == {"old": 700, "live": restored.now_ms}
    assert restored.now_ms >= 1_000


def test_restored_directory_is_deterministic_and_unique() -> None:
    from coordinator.fsm import Member as Dir

    old = [Dir(1, "member-2", "http://a:1", "http://a:2"), Dir(5, "e", "x://b", "x://c")]
    out = restored_directory(old, {2: "h:2", 1: "h:1", 5: "h:5"})
    assert [(m.id, m.name, m.peer_url) for m in out] == [
        (1, "member-2", "http://h:1"),
        (2, "member-2-restored", "https://h:2"),
        (5, "e", "x://h:5"),
    ]
    assert out == restored_directory(list(reversed(old)), {5: "h:5", 1: "h:1", 2: "h:2"})


def test_restore_refuses_and_leaves_nothing_behind(tmp_path: Path) -> None:
    img = Image()
    peers = {1: "127.0.0.1:7001"}
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    with pytest.raises(RecoveryError, match="not an empty directory"):
        restore_data_dir(
            img.data, index=img.index, term=img.term, data_dir=busy, initial_cluster=peers
        )
    target = tmp_path / "new"
    with pytest.raises(RecoveryError, match="header says index"):
        restore_data_dir(
            img.data, index=img.index + 1, term=img.term, data_dir=target, initial_cluster=peers
        )
    with pytest.raises(RecoveryError, match="does not decode"):
        restore_data_dir(b"garbage", index=1, term=1, data_dir=target, initial_cluster=peers)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    # An empty directory is fine (a mounted volume).
    empty = tmp_path / "empty"
    empty.mkdir()
    restore_data_dir(
        img.data, index=img.index, term=img.term, data_dir=empty, initial_cluster=peers
    )
    assert (empty / "FORMAT").exists()


def test_restore_with_autolock_prints_a_new_unlock_key(tmp_path: Path) -> None:
    img = Image()
    restored = restore_data_dir(
        img.data,
        index=img.index,
        term=img.term,
        data_dir=tmp_path / "d",
        initial_cluster={1: "127.0.0.1:7001"},
        autolock=True,
    )
    assert restored.unlock_key is not None
    with pytest.raises(LockedError):
        KeyStore.open(tmp_path / "d")
    KeyStore.open(tmp_path / "d", restored.unlock_key, read_only=True)


# --- force a new cluster ------------------------------------------------------------------------


def survivor_dir(
    path: Path,
    *,
    voters: frozenset[int] = frozenset({1, 2, 3}),
    conf: ConfState | None = None,
) -> None:
    """A member's data dir as a crash leaves it: entries 1..6, committed up to 4 only."""
    keys = KeyStore.create(path)
    with DiskWal.create(keys) as wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, conf or ConfState(voters))))

        def cmd(index: int, term: int, command: object) -> Entry:
            return Entry(index, term, EntryKind.NORMAL, Envelope(7, index, 1_000, command).encode())  # type: ignore[arg-type]

        wal.save(
            [
                Entry(1, 1),
                cmd(2, 1, Put(b"a", b"1")),
                cmd(3, 1, MemberUpsert(2, "bravo", "https://b:1", "https://b:2")),
                cmd(4, 1, MemberUpsert(3, "charlie", "https://c:1", "https://c:2")),
                Entry(5, 3),
                cmd(6, 3, Put(b"beyond-commit", b"kept")),
            ],
            HardState(3, 1, 4),
        )


def test_force_new_cluster_keeps_the_whole_log_and_shrinks_the_configuration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    survivor_dir(tmp_path / "d")
    with DiskWal.open(KeyStore.open(tmp_path / "d")) as wal:
        forced = force_new_cluster(wal, 2)
        assert forced.old_conf == ConfState(frozenset({1, 2, 3}))
        assert forced.new_conf == ConfState(frozenset({2}))
        assert (forced.index, forced.term, forced.old_commit) == (6, 3, 4)
        assert forced.uncommitted_kept == 2
        assert (forced.old_term, forced.new_term) == (3, 4)
    assert "FORCE-NEW-CLUSTER: old configuration: voters {1, 2, 3}" in caplog.text
    assert "new configuration: voters 2" in caplog.text
    with DiskWal.open(KeyStore.open(tmp_path / "d")) as wal:  # durable: it reads back
        snap = wal.snapshot()
        assert (snap.meta.index, snap.meta.term) == (6, 3)
        assert snap.meta.conf == ConfState(frozenset({2}))
        assert wal.hard_state == HardState(4, 0, 6)
        assert wal.last_index() == 6
    fsm = StateMachine()
    fsm.restore(snap.data)
    assert fsm.applied_index == 6
    kept = fsm.get(b"beyond-commit")
    assert kept is not None and kept.value == b"kept"
    assert [m.name for m in fsm.members()] == ["bravo"]
    assert "index 6" in (tmp_path / "d" / FORCED_MARKER).read_text()


def test_force_new_cluster_remembers_every_dropped_id_as_removed(tmp_path: Path) -> None:
    # Voters {1, 2, 3}, learner 5; the directory lists 2 and 3 (see survivor_dir). Forcing
    # member 2 drops 1, 3 and 5: none of them may ever be given to a joining member, or a
    # stale process of the old cluster would be taken for the new member.
    survivor_dir(tmp_path / "d", conf=ConfState(frozenset({1, 2, 3}), frozenset({5})))
    with DiskWal.open(KeyStore.open(tmp_path / "d")) as wal:
        force_new_cluster(wal, 2)
    with DiskWal.open(KeyStore.open(tmp_path / "d")) as wal:  # durable, in the snapshot
        snap = wal.snapshot()
    fsm = StateMachine()
    fsm.restore(snap.data)
    assert fsm.removed_member_ids() == frozenset({1, 3, 5})
    assert [m.id for m in fsm.members()] == [2]
    # The directory refuses them as it refuses an id MemberRemove took out.
    refused = fsm.apply(
        Entry(
            7,
            4,
            EntryKind.NORMAL,
            Envelope(7, 7, 2_000, MemberUpsert(3, "c", "https://c:1", "https://c:2")).encode(),
        )
    )
    assert "never reused" in str(refused.result)


def test_a_forced_member_serves_writes_alone(tmp_path: Path) -> None:
    survivor_dir(tmp_path / "d")
    peers = {1: "127.0.0.1:1", 2: f"127.0.0.1:{free_port()}", 3: "127.0.0.1:3"}

    async def check(member: Member, c: Client) -> None:
        assert member.loop is not None
        assert member.loop.status().conf == ConfState(frozenset({2}))
        for key, value in ((b"a", b"1"), (b"beyond-commit", b"kept")):
            kv = await c.get(key)
            assert kv is not None and kv.value == value
        await c.put(b"after", b"force")
        kv = await c.get(b"after")
        assert kv is not None and kv.value == b"force"

    with_member(config(tmp_path / "d", 2, peers, force_new_cluster=True), check)
    # Restarted without the flag, it is still the one-member cluster, with the new write.
    with_member(config(tmp_path / "d", 2, peers), check)


def test_force_new_cluster_refusals(tmp_path: Path) -> None:
    # A new data dir: refused before anything is created.
    with pytest.raises(RecoveryError, match="not an initialised data dir"):
        check_force_target(tmp_path / "new")
    peers = {1: f"127.0.0.1:{free_port()}"}

    async def start_fails() -> int:
        return await Member(config(tmp_path / "new", 1, peers, force_new_cluster=True)).run()

    assert asyncio.run(start_fails()) == 1
    assert not (tmp_path / "new").exists()

    # A member that is not in the configuration: a wrong --id. Nothing changes.
    survivor_dir(tmp_path / "d")
    with DiskWal.open(KeyStore.open(tmp_path / "d")) as wal:
        with pytest.raises(RecoveryError, match="member 7 is not in the configuration"):
            force_new_cluster(wal, 7)
        assert wal.snapshot().meta.index == 0 and wal.hard_state == HardState(3, 1, 4)

    # A log with no entries: nothing to recover.
    keys = KeyStore.create(tmp_path / "empty")
    with DiskWal.create(keys) as wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1})))))
        with pytest.raises(RecoveryError, match="no log entries"):
            force_new_cluster(wal, 1)

    # Forcing again while it is still alone is harmless; once members were added back, a
    # flag left on is refused.
    with DiskWal.open(KeyStore.open(tmp_path / "d")) as wal:
        force_new_cluster(wal, 2)
        again = force_new_cluster(wal, 2)
        assert again.old_conf == again.new_conf
        grown = ConfState(frozenset({2, 3})).encode()
        wal.save([Entry(7, 5, EntryKind.CONF, grown)], HardState(5, 0, 7))
        with pytest.raises(RecoveryError, match="left on by mistake"):
            force_new_cluster(wal, 2)
        assert wal.snapshot().meta.conf == ConfState(frozenset({2}))


def test_force_new_cluster_after_a_snapshot_and_compaction(tmp_path: Path) -> None:
    """The survivor's log may start at a snapshot: the image is the snapshot's plus the rest."""
    d = Driver()
    d.ok(Put(b"old", b"1"))
    d.ok(Noop())
    image = d.m.snapshot()
    keys = KeyStore.create(tmp_path / "d")
    with DiskWal.create(keys) as wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(2, 1, ConfState(frozenset({1, 2}))), image))
        put = Envelope(9, 1, 5, Put(b"new", b"2")).encode()
        wal.save([Entry(3, 2, EntryKind.NORMAL, put)], HardState(2, 0, 2))
        forced = force_new_cluster(wal, 1)
        assert (forced.index, forced.uncommitted_kept) == (3, 1)
        fsm = StateMachine()
        fsm.restore(wal.snapshot().data)
        assert fsm.get(b"old") is not None and fsm.get(b"new") is not None
