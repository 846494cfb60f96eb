"""Process tests: disaster recovery with real member processes over mutual TLS.

- A backup (`concordctl snapshot save`) of a running 3-member cluster, restored
  (`snapshot restore`, once per member) into a NEW 3-member cluster on other ports with its own
  CA: every key is there, the lock and its fencing token survive, and the sequence continues
  without reissuing a value.
- Two of three members SIGKILLed: `concordctl cluster recover --endpoints` picks the survivor,
  which restarted with `--force-new-cluster` serves writes alone, with every acknowledged
  write present; a new member then joins it with a join token and becomes a voter, and a
  `--force-new-cluster` left on by mistake is refused at the next restart.

Every wait is bounded and waits for a condition (the harness polls /readyz and /metrics).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from coordinator.cli.main import cli
from coordinator.testing.process_cluster import MakeCluster, ProcessCluster, run
from tests.process.test_process_join import JoinableCluster, roles

pytestmark = pytest.mark.process

BACKUP_KEY_RE = re.compile(r"CONCORD-BACKUP-[A-Z2-7]+")
LEASE_TTL_MS = 120_000


def client_tls(cluster: ProcessCluster) -> Path:
    """The cluster's client certificate as `concordctl --tls-dir` reads it."""
    directory = cluster.root / "client-tls"
    directory.mkdir(exist_ok=True)
    (directory / "ca.pem").write_bytes(cluster.ca.cert_pem)
    (directory / "client.pem").write_bytes(cluster.client_cert.cert_pem)
    (directory / "client-key.pem").write_bytes(cluster.client_cert.key_pem)
    return directory


def ctl(cluster: ProcessCluster, *args: str, endpoints: list[str] | None = None) -> Result:
    eps = ",".join(endpoints if endpoints is not None else cluster.endpoints())
    argv = ["--endpoints", eps, "--tls-dir", str(client_tls(cluster)), "--timeout", "30", *args]
    return CliRunner().invoke(cli, argv)


def test_backup_restored_into_a_new_cluster(make_cluster: MakeCluster, tmp_path: Path) -> None:
    old = make_cluster(3)
    run(old.wait_ready(), 60)

    async def write() -> tuple[list[int], int, int]:
        async with old.client() as c:
            for i in range(20):
                await c.put(f"key/{i}".encode(), f"value-{i}".encode())
            await c.sequence_create("orders")
            issued = await c.sequence_next("orders", 5)
            lease = await c.lease_grant(LEASE_TTL_MS)
            held = await c.acquire("jobs", lease)
            await c.put(b"owned", b"by-the-lease", lease)
            return issued, lease, held.fencing_token

    issued, lease, token = run(write(), 60)
    backup = tmp_path / "cluster.bak"
    saved = ctl(old, "snapshot", "save", str(backup))
    assert saved.exit_code == 0, saved.output
    [key] = BACKUP_KEY_RE.findall(saved.stdout)
    assert "shown only this once" in saved.stderr
    status = ctl(old, "-o", "json", "snapshot", "status", str(backup), "--backup-key", key)
    assert status.exit_code == 0, status.output
    header = json.loads(status.stdout)
    assert header["checksum"].startswith("verified") and header["image"] == "decodes"
    assert header["cluster_id"] == old.cluster_id and header["members"] == 3

    new = ProcessCluster(tmp_path / "new", 3, cluster_id="restored", tick_ms=50)
    try:
        for m in new.members.values():
            restored = ctl(
                new,
                "snapshot",
                "restore",
                str(backup),
                "--backup-key",
                key,
                "--data-dir",
                str(m.data_dir),
                "--id",
                str(m.id),
                "--initial-cluster",
                new.initial_cluster,
            )
            assert restored.exit_code == 0, restored.output
            assert "concord-coordinator --id" in restored.stdout
        new.start_all()
        run(new.wait_ready(timeout_s=60), 90)

        async def check() -> None:
            async with new.client() as c:
                for i in range(20):
                    kv = await c.get(f"key/{i}".encode())
                    assert kv is not None and kv.value == f"value-{i}".encode()
                owned = await c.get(b"owned")
                assert owned is not None and owned.lease == lease
                more = await c.sequence_next("orders", 3)
                assert min(more) > max(issued), (issued, more)  # never reissued
                assert await c.check_fence("jobs", token)
                info = await c.lease_time_to_live(lease)
                assert info.remaining_ms > LEASE_TTL_MS // 2  # a full TTL again
                members = await c.members()
                peers = {m.id: m.peer_url for m in members.members}
                assert set(peers) == {1, 2, 3}
                for m in new.members.values():
                    assert peers[m.id].endswith(m.peer_address)
                await c.put(b"written", b"after-restore")
                kv = await c.get(b"written")
                assert kv is not None

        run(check(), 90)
    finally:
        new.close()


def test_two_of_three_lost_recover_picks_the_survivor_and_forces_a_new_cluster(
    tmp_path: Path,
) -> None:
    cluster = JoinableCluster(tmp_path / "cluster", 3, tick_ms=50)
    try:
        cluster.start_all()
        _lose_two_and_recover(cluster)
    except BaseException:
        print(f"member logs:{cluster.log_tails(chars=6000)}")
        raise
    finally:
        cluster.close()


def _lose_two_and_recover(cluster: JoinableCluster) -> None:
    run(cluster.wait_ready(), 60)
    acked: dict[bytes, bytes] = {}

    async def write() -> list[int]:
        async with cluster.client() as c:
            for i in range(40):
                key, value = f"acked/{i}".encode(), f"{i}".encode()
                await c.put(key, value)
                acked[key] = value  # acknowledged
            await c.sequence_create("ids")
            return await c.sequence_next("ids", 4)

    issued = run(write(), 60)

    async def caught_up() -> int:
        """Wait until every member applied what the leader committed; the survivor then
        holds every acknowledged write (a member that lags behind a lost majority cannot)."""
        leader = await cluster.leader()
        commit = (await cluster.status_of(leader)).commit

        async def all_applied() -> bool:
            states = [await cluster.status_of(i) for i in cluster.members]
            return all(s.applied >= commit for s in states)

        await cluster.wait(all_applied, 30, f"every member to apply up to {commit}")
        return leader

    leader = run(caught_up(), 60)
    survivor = next(i for i in cluster.members if i != leader)
    for lost in list(cluster.members):
        if lost != survivor:
            cluster.kill(lost)

    async def stepped_down() -> None:
        """Leadership may have moved to the survivor just before the kills: a leader that
        lost its quorum says so only once CheckQuorum steps it down (one election timeout),
        and until then `cluster recover` rightly refuses to pick it."""

        async def not_leading() -> bool:
            return (await cluster.status_of(survivor)).leader != survivor

        await cluster.wait(not_leading, 30, f"member {survivor} not to lead alone")

    run(stepped_down(), 60)
    report = ctl(cluster, "-o", "json", "cluster", "recover", "--member-timeout", "2")
    assert report.exit_code == 0, report.output
    out = json.loads(report.stdout)
    states = {s["where"]: s["state"] for s in out["survivors"]}
    survivor_ep = cluster.members[survivor].client_address
    assert states.pop(survivor_ep) == "reachable"
    assert set(states.values()) == {"unreachable"}
    assert out["pick"]["member"] == survivor and not out["quorum_reachable"]
    assert f"--id {survivor}" in out["command"] and "--force-new-cluster" in out["command"]

    # Restart it alone, as the command says.
    assert cluster.terminate(survivor) == 0
    m = cluster.members[survivor]
    usual = list(m.extra_args)
    m.extra_args = [*usual, "--force-new-cluster"]
    cluster.start(survivor)
    run(cluster.wait_ready([survivor], timeout_s=60), 90)
    log = m.current_log()
    assert "FORCE-NEW-CLUSTER: old configuration: voters {1, 2, 3}" in log
    assert f"new configuration: voters {survivor} (this member only)" in log

    async def serves_alone() -> None:
        async with cluster.client([survivor]) as c:
            for key, value in acked.items():
                kv = await c.get(key)
                assert kv is not None and kv.value == value, key
            await c.put(b"after", b"force")
            more = await c.sequence_next("ids", 2)
            assert min(more) > max(issued)
            members = await c.members()
            assert [x.id for x in members.members] == [survivor]

    run(serves_alone(), 60)

    # Members are added back by joining it (here a fresh one, with a join token).
    made = ctl(cluster, "-o", "json", "join-token", "create", endpoints=[survivor_ep])
    assert made.exit_code == 0, made.output
    token = json.loads(made.stdout)["token"]
    joiner = cluster.add_joiner(4, f"127.0.0.1:{cluster.join_ports[survivor]}", token)
    cluster.start(4)

    async def rejoined() -> None:
        await cluster.wait_ready([4], timeout_s=60)
        async with cluster.client([survivor]) as c:

            async def two_voters() -> bool:
                return sorted(roles(await c.members()).values()) == ["voter", "voter"]

            await cluster.wait(two_voters, 60, "the joined member promoted to voter")
            # The force dropped the other old ids as removed: the joiner gets a new one, never
            # the id of a lost member whose stale process might come back.
            ids = sorted(x.id for x in (await c.members()).members)
            assert ids == [survivor, 4], ids
        async with cluster.client([4]) as c:
            kv = await c.get(b"acked/39")  # linearizable, through the new pair
            assert kv is not None and kv.value == b"39"

    run(rejoined(), 120)

    # The flag left on by mistake: the next restart refuses instead of throwing the new
    # member out again. Without it, the member rejoins its two-member cluster.
    assert cluster.terminate(survivor) == 0
    cluster.start(survivor)
    assert m.popen is not None and m.popen.wait(60) == 1
    m.expected_running = False
    assert "left on by mistake" in m.current_log()
    m.extra_args = usual
    cluster.start(survivor)

    async def both_serve() -> None:
        await cluster.wait_ready([survivor, joiner.id], timeout_s=60)
        async with cluster.client([survivor, joiner.id]) as c:
            await c.put(b"after-restart", b"ok")
            kv = await c.get(b"after")
            assert kv is not None and kv.value == b"force"

    run(both_serve(), 120)
