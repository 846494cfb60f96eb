"""concordctl's disaster recovery: `snapshot save|status|restore` against an in-process
cluster, `cluster recover` online and offline, and the survivor picker's ordering. Errors are
one line with exit 1 (refused) or 2 (bad input), never a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from coordinator.cli._recovery import Survivor, pick_most_up_to_date
from coordinator.raft import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from coordinator.storage import DiskWal, KeyStore, split_unlock_key
from tests.cli.threaded import ThreadedCluster, ThreadedMember, concordctl, member_config

BACKUP_KEY_RE = re.compile(r"CONCORD-BACKUP-[A-Z2-7]+")
SHARE_RE = re.compile(r"CONCORD-BACKUP-SHARE-[0-9]+-[0-9]+-[A-Z2-7]+")


# --- the picker ---------------------------------------------------------------------------------


def s(
    member: int | None, last_term: int, last_index: int, commit: int = 0, state: str = "reachable"
) -> Survivor:
    return Survivor(
        f"ep{member}", member, state, last_term=last_term, last_index=last_index, commit=commit
    )


def test_the_picker_follows_raft_up_to_date_order() -> None:
    # A higher last term beats a longer log (§5.4.1).
    assert pick_most_up_to_date([s(1, 3, 900), s(2, 4, 10), s(3, 4, 9)]).member == 2  # type: ignore[union-attr]
    # Same last term: the longer log.
    assert pick_most_up_to_date([s(1, 4, 10), s(2, 4, 12), s(3, 4, 11)]).member == 2  # type: ignore[union-attr]
    # A full tie: the higher commit, then the lower member id.
    assert pick_most_up_to_date([s(3, 4, 12, 9), s(2, 4, 12, 11), s(1, 4, 12, 10)]).member == 2  # type: ignore[union-attr]
    assert pick_most_up_to_date([s(3, 4, 12, 9), s(2, 4, 12, 9)]).member == 2  # type: ignore[union-attr]
    # Unreachable, locked and broken members never win, however far their last report was.
    rows = [s(1, 9, 99, state="unreachable"), s(2, 9, 99, state="locked"), s(3, 1, 1)]
    assert pick_most_up_to_date(rows).member == 3  # type: ignore[union-attr]
    assert pick_most_up_to_date([s(1, 9, 9, state="error")]) is None
    assert pick_most_up_to_date([]) is None
    # Offline rows without a known id rank after those with one on a full tie.
    assert (
        pick_most_up_to_date([s(None, 2, 5, state="readable"), s(4, 2, 5, state="readable")]).member
        == 4
    )  # type: ignore[union-attr]


# --- snapshot save / status / restore -----------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> ThreadedCluster:
    tc = ThreadedCluster(tmp_path / "cluster")
    yield tc  # type: ignore[misc]
    tc.shutdown()


def test_save_status_and_restore(cluster: ThreadedCluster, tmp_path: Path) -> None:
    eps = cluster.endpoints
    assert concordctl(eps, "put", "config", "v1").exit_code == 0
    assert concordctl(eps, "seq", "create", "orders").exit_code == 0
    assert concordctl(eps, "seq", "next", "orders", "-n", "3").exit_code == 0
    leader = cluster.leader_id()
    backup = tmp_path / "a.bak"

    # Through any endpoint the leader answers (a follower redirects).
    follower_first = sorted(eps, key=lambda e: e == eps[leader - 1])
    saved = concordctl(follower_first, "snapshot", "save", str(backup))
    assert saved.exit_code == 0, saved.output
    [key] = BACKUP_KEY_RE.findall(saved.stdout)
    assert "shown only this once" in saved.stderr
    assert re.search(rf"a\.bak\s+{leader}\s", saved.stdout)
    assert not (tmp_path / "a.bak.tmp").exists()

    again = concordctl(eps, "snapshot", "save", str(backup))
    assert again.exit_code == 2 and "--overwrite" in again.stderr

    status = concordctl(eps, "-o", "json", "snapshot", "status", str(backup))
    assert status.exit_code == 0, status.output
    header = json.loads(status.stdout)
    assert header["checksum"].startswith("not verified") and header["voters"] == "1,2,3"
    verified = concordctl(eps, "-o", "json", "snapshot", "status", str(backup), "--backup-key", key)
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["checksum"].startswith("verified")

    # A wrong key, a damaged file: one line each, exit 1.
    other_key = BACKUP_KEY_RE.findall(
        concordctl(eps, "snapshot", "save", str(tmp_path / "b.bak")).stdout
    )[0]
    wrong = concordctl(eps, "snapshot", "status", str(backup), "--backup-key", other_key)
    assert wrong.exit_code == 1 and "Error: wrong backup key" in wrong.stderr
    data = bytearray(backup.read_bytes())
    data[-40] ^= 0x01
    damaged = tmp_path / "damaged.bak"
    damaged.write_bytes(bytes(data))
    bad = concordctl(eps, "snapshot", "status", str(damaged), "--backup-key", key)
    assert bad.exit_code == 1 and isinstance(bad.exception, SystemExit)
    assert re.search(r"damaged at offset \d+: the final checksum record fails", bad.stderr)
    malformed = concordctl(
        eps, "snapshot", "status", str(backup), "--backup-key", "CONCORD-BACKUP-X"
    )
    assert malformed.exit_code == 2 and "--backup-key" in malformed.stderr

    # Restore: one member of a new two-member cluster; refusals first.
    peers = "1=127.0.0.1:7101,2=127.0.0.1:7102"
    target = tmp_path / "restored"
    base = ["snapshot", "restore", str(backup), "--initial-cluster", peers]
    res = concordctl(eps, *base, "--id", "3", "--data-dir", str(target), "--backup-key", key)
    assert res.exit_code == 2 and "--id 3 is not in --initial-cluster" in res.stderr
    res = concordctl(eps, *base, "--id", "1", "--data-dir", str(target), "--backup-key", other_key)
    assert res.exit_code == 1 and "wrong backup key" in res.stderr
    assert not target.exists()
    res = concordctl(eps, *base, "--id", "1", "--data-dir", str(target), "--backup-key", key)
    assert res.exit_code == 0, res.output
    assert "--peer-listen 127.0.0.1:7101" in res.stdout
    with DiskWal.open(KeyStore.open(target)) as wal:
        assert wal.snapshot().meta.conf == ConfState(frozenset({1, 2}))
    res = concordctl(eps, *base, "--id", "1", "--data-dir", str(target), "--backup-key", key)
    assert res.exit_code == 1 and "not an empty directory" in res.stderr


def test_save_with_shares_restore_with_shares_and_autolock(
    cluster: ThreadedCluster, tmp_path: Path
) -> None:
    eps = cluster.endpoints
    backup = tmp_path / "s.bak"
    saved = concordctl(eps, "snapshot", "save", str(backup), "--shares", "2/3")
    assert saved.exit_code == 0, saved.output
    shares = SHARE_RE.findall(saved.stdout)
    assert len(shares) == 3
    assert not BACKUP_KEY_RE.findall(SHARE_RE.sub("", saved.stdout))  # only the shares
    status = concordctl(eps, "-o", "json", "snapshot", "status", str(backup))
    assert json.loads(status.stdout)["backup_key"] == "2 of 3 shares"
    one = concordctl(eps, "snapshot", "status", str(backup), "--backup-share", shares[0])
    assert one.exit_code == 2 and "needs 2" in one.stderr
    res = concordctl(
        eps,
        "-o",
        "json",
        "snapshot",
        "restore",
        str(backup),
        "--backup-share",
        shares[2],
        "--backup-share",
        shares[0],
        "--data-dir",
        str(tmp_path / "d"),
        "--id",
        "1",
        "--initial-cluster",
        "1=127.0.0.1:7101",
        "--autolock",
    )
    assert res.exit_code == 0, res.output
    unlock_key = json.loads(res.stdout)["unlock_key"]
    KeyStore.open(tmp_path / "d", unlock_key, read_only=True)

    # A follower's own image, without a barrier: --endpoint --serializable.
    leader = cluster.leader_id()
    follower = next(e for i, e in enumerate(eps, 1) if i != leader)
    res = concordctl(
        eps,
        "-o",
        "json",
        "snapshot",
        "save",
        str(tmp_path / "f.bak"),
        "--endpoint",
        follower,
        "--serializable",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["member"] != leader and out["backup_key"].startswith("CONCORD-BACKUP-")
    res = concordctl(eps, "snapshot", "save", str(tmp_path / "g.bak"), "--serializable")
    assert res.exit_code == 2


# --- cluster recover ----------------------------------------------------------------------------


def test_recover_online_with_a_quorum_says_no_recovery_is_needed(cluster: ThreadedCluster) -> None:
    eps = [*cluster.endpoints, "127.0.0.1:1"]
    res = concordctl(eps, "-o", "json", "cluster", "recover", "--member-timeout", "1")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    states = [r["state"] for r in out["survivors"]]
    assert states == ["reachable", "reachable", "reachable", "unreachable"]
    assert out["quorum_reachable"] and out["command"] == ""
    for row in out["survivors"][:3]:
        assert row["last_term"] >= 1 and row["last_index"] >= row["commit"] >= 1
        assert row["voters"] == [1, 2, 3]
    assert any("says it is the leader" in w for w in out["warnings"])
    table = concordctl(eps, "cluster", "recover", "--member-timeout", "1")
    assert "no recovery is needed" in table.stdout and "--force-new-cluster" not in table.stdout


def _stopped_member(
    path: Path, last_term: int, last_index: int, autolock: bool = False
) -> str | None:
    keys = KeyStore.create(path, autolock=autolock)
    with DiskWal.create(keys) as wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1, 2, 3, 4})))))
        wal.save(
            [Entry(i, min(i, last_term)) for i in range(1, last_index + 1)],
            HardState(last_term, 0, 1),
        )
    return keys.unlock_key


def test_recover_offline_reads_data_dirs(tmp_path: Path) -> None:
    _stopped_member(tmp_path / "m1", last_term=3, last_index=9)
    _stopped_member(tmp_path / "m2", last_term=4, last_index=5)
    key = _stopped_member(tmp_path / "m3", last_term=5, last_index=5, autolock=True)
    assert key is not None
    (tmp_path / "m4").mkdir()
    dirs = [
        f"1={tmp_path / 'm1'}",
        f"2={tmp_path / 'm2'}",
        f"3={tmp_path / 'm3'}",
        str(tmp_path / "m4"),
    ]
    args = ["-o", "json", "cluster", "recover"]
    for d in dirs:
        args += ["--data-dir", d]
    res = concordctl("127.0.0.1:1", *args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    rows = {r["where"]: r for r in out["survivors"]}
    assert rows[str(tmp_path / "m3")]["state"] == "locked"
    assert "--unlock-key" in rows[str(tmp_path / "m3")]["detail"]
    assert rows[str(tmp_path / "m4")]["state"] == "error"
    assert (rows[str(tmp_path / "m2")]["last_term"], rows[str(tmp_path / "m2")]["last_index"]) == (
        4,
        5,
    )
    assert out["pick"]["member"] == 2  # term 4 beats member 1's longer log of term 3
    assert out["command"].startswith(f"concord-coordinator --id 2 --data-dir {tmp_path / 'm2'}")

    # With its unlock key the locked one is read, and wins on its higher last term.
    res = concordctl("127.0.0.1:1", *args, "--unlock-key", key)
    out = json.loads(res.stdout)
    assert out["pick"]["member"] == 3 and out["pick"]["last_term"] == 5
    res = concordctl("127.0.0.1:1", *args, "--unlock-key", "CONCORD-UNLOCK-NOPE")
    assert res.exit_code == 2
    res = concordctl("127.0.0.1:1", "cluster", "recover", "--data-dir", str(tmp_path / "m4"))
    assert res.exit_code == 1 and "no survivor could be read" in res.stderr


def test_recover_shows_a_locked_member_as_locked(tmp_path: Path) -> None:
    keys = KeyStore.create(tmp_path / "data")
    keys.enable_autolock()
    m = ThreadedMember(member_config(tmp_path / "data"))
    try:
        m.wait(lambda: m.phase == "locked", "the member to lock")
        res = concordctl(m.endpoint, "-o", "json", "cluster", "recover", "--member-timeout", "2")
        assert res.exit_code == 1
        [row] = json.loads(res.stdout)["survivors"]
        assert row["state"] == "locked" and row["member"] == 1
        assert "no survivor could be read" in res.stderr
        saved = concordctl(
            m.endpoint, "snapshot", "save", str(tmp_path / "x.bak"), "--endpoint", m.endpoint
        )
        assert saved.exit_code == 1 and "member is locked" in saved.stderr
        assert not (tmp_path / "x.bak").exists()
    finally:
        m.stop()


def test_recover_offline_opens_autolocked_data_dirs_with_shares_of_each_key(
    tmp_path: Path,
) -> None:
    key2 = _stopped_member(tmp_path / "m2", last_term=4, last_index=5, autolock=True)
    key3 = _stopped_member(tmp_path / "m3", last_term=5, last_index=5, autolock=True)
    assert key2 is not None and key3 is not None
    shares2, shares3 = split_unlock_key(key2, 2, 3), split_unlock_key(key3, 3, 5)
    args = ["-o", "json", "cluster", "recover"]
    args += ["--data-dir", f"2={tmp_path / 'm2'}", "--data-dir", f"3={tmp_path / 'm3'}"]
    # K shares of each member's key, mixed together: each key is rebuilt and tried on each.
    given = [shares3[4], shares2[0], shares3[0], shares2[2], shares3[1]]
    res = concordctl("127.0.0.1:1", *args, *[f"--share={s}" for s in given])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {r["state"] for r in out["survivors"]} == {"readable"}
    assert out["pick"]["member"] == 3 and out["pick"]["last_term"] == 5
    # Too few shares of one key: bad input, nothing read.
    res = concordctl("127.0.0.1:1", *args, f"--share={shares2[0]}", f"--share={shares3[0]}")
    assert res.exit_code == 2 and "needs" in res.stderr and "Traceback" not in res.output
    # Shares of only one key: the other member stays locked, and says how to open it.
    res = concordctl("127.0.0.1:1", *args, f"--share={shares2[0]}", f"--share={shares2[1]}")
    rows = {r["member"]: r for r in json.loads(res.stdout)["survivors"]}
    assert rows[2]["state"] == "readable" and rows[3]["state"] == "locked"
    assert "none of the unlock keys given opens it" in rows[3]["detail"]
