"""Autolock end to end through concordctl: a real member (in process, on loopback) that is
turned to autolock, restarted locked, refused bad keys, unlocked by key and by shares, and
turned back; per-member reports when one endpoint fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from coordinator.storage import KeyStore, WrongUnlockKeyError
from tests.cli.threaded import ThreadedMember, concordctl, free_port, member_config

KEY_RE = re.compile(r"CONCORD-UNLOCK-[A-Z2-7]+")
SHARE_RE = re.compile(r"CONCORD-SHARE-[0-9]+-[0-9]+-[A-Z2-7]+")


def _running(m: ThreadedMember) -> None:
    m.wait(lambda: m.phase == "running", "the member to run")


def test_autolock_on_restart_locked_unlock_and_off(tmp_path: Path) -> None:
    cfg = member_config(tmp_path / "data")
    m = ThreadedMember(cfg)
    try:
        _running(m)
        ep = m.endpoint
        assert concordctl(ep, "put", "a", "1").exit_code == 0

        st = concordctl(ep, "-o", "json", "cluster", "autolock", "status")
        assert st.exit_code == 0, st.output
        [row] = json.loads(st.stdout)
        assert row["member"] == 1 and row["phase"] == "running"
        assert row["autolock"] is False and row["locked"] is False

        # No key to rotate while autolock is off.
        res = concordctl(ep, "cluster", "rotate-unlock-key")
        assert res.exit_code == 1
        assert "FAILED_PRECONDITION: autolock is off on member 1" in res.stderr

        # On: the key is printed once, with a warning to store it.
        on = concordctl(ep, "cluster", "autolock", "on")
        assert on.exit_code == 0, on.output
        keys = KEY_RE.findall(on.stdout)
        assert len(keys) == 1
        assert "autolock is now on" in on.stdout
        assert "shown only this once" in on.stderr
        again = concordctl(ep, "cluster", "autolock", "on")
        assert again.exit_code == 0 and "already on; nothing changed" in again.stdout
        assert not KEY_RE.findall(again.output)

        # Rotate into shares: only the shares are printed; the old key is void.
        rot = concordctl(ep, "cluster", "rotate-unlock-key", "--shares", "2/3")
        assert rot.exit_code == 0, rot.output
        shares = SHARE_RE.findall(rot.stdout)
        assert len(shares) == 3 and not KEY_RE.findall(rot.output)
        with pytest.raises(WrongUnlockKeyError):
            KeyStore.open(cfg.data_dir, keys[0], read_only=True)
    finally:
        assert m.stop() == 0

    m = ThreadedMember(cfg)
    try:
        m.wait(lambda: m.phase == "locked", "the restarted member to lock")
        ep = m.endpoint
        # Every other service refuses at once, saying what to do.
        res = concordctl(ep, "get", "a")
        assert res.exit_code == 1
        assert "UNAVAILABLE: member is locked: run concordctl unlock" in res.stderr
        # What it still answers is named as commands a person can type, not as RPCs.
        assert "`concordctl cluster autolock status`" in res.stderr
        res = concordctl(ep, "cluster", "rotate-unlock-key")
        assert res.exit_code == 1 and "member is locked" in res.stderr
        res = concordctl(ep, "cluster", "rotate-data-key")
        assert res.exit_code == 1 and "member is locked" in res.stderr
        st = concordctl(ep, "-o", "json", "cluster", "autolock", "status")
        [row] = json.loads(st.stdout)
        assert row["phase"] == "locked" and row["locked"] and row["autolock"]

        # The key from before the rotation: well-formed, but wrong.
        res = concordctl(ep, "unlock", "--key", keys[0])
        assert res.exit_code == 1
        assert "PERMISSION_DENIED: wrong unlock key" in res.stderr
        assert "failed (PERMISSION_DENIED)" in res.stdout
        # Malformed input never leaves the machine: usage errors.
        res = concordctl(ep, "unlock", "--key", keys[0][:-3] + "AAA")
        assert res.exit_code == 2 and "checksum does not match" in res.stderr
        res = concordctl(ep, "unlock", "--share", shares[0])
        assert res.exit_code == 2 and "1 distinct share(s) given; this key needs 2" in res.stderr
        assert m.phase == "locked"

        ok = concordctl(ep, "unlock", "--share", shares[0], "--share", shares[2])
        assert ok.exit_code == 0, ok.output
        assert re.search(r"127\.0\.0\.1:\d+\s+1\s+unlocked", ok.stdout)
        _running(m)
        got = concordctl(ep, "get", "a")
        assert got.exit_code == 0 and "1" in got.stdout

        # Unlocking it again is not a failure: it is already unlocked, and is not sent the key.
        res = concordctl(ep, "-o", "json", "unlock", "--share", shares[1], "--share", shares[2])
        assert res.exit_code == 0, res.output
        [row] = json.loads(res.stdout)
        assert row["ok"] and row["member"] == 1
        assert row["result"] == "already unlocked (running); nothing to do"

        off = concordctl(ep, "cluster", "autolock", "off")
        assert off.exit_code == 0 and "autolock is now off" in off.stdout
    finally:
        assert m.stop() == 0

    m = ThreadedMember(cfg)  # autolock off: starts without any key
    try:
        _running(m)
        assert concordctl(m.endpoint, "get", "a").exit_code == 0
    finally:
        assert m.stop() == 0


def test_unlock_reads_the_key_from_stdin_and_reports_each_endpoint(tmp_path: Path) -> None:
    keys = KeyStore.create(tmp_path / "data", autolock=True)
    unlock_key = keys.unlock_key
    assert unlock_key is not None
    m = ThreadedMember(member_config(tmp_path / "data"))
    try:
        m.wait(lambda: m.phase == "locked", "the member to lock")
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        res = concordctl(
            [m.endpoint, dead], "--timeout", "1", "-o", "json", "unlock", input=unlock_key + "\n"
        )
        assert res.exit_code == 1, res.output
        first, second = json.loads(res.stdout)
        assert first == {
            "endpoint": m.endpoint,
            "member": 1,
            "ok": True,
            "result": "unlocked",
        }
        assert second["endpoint"] == dead and not second["ok"]
        assert second["error"]["code"] == "UNAVAILABLE"
        assert f"Error: {dead}: UNAVAILABLE" in res.stderr
        _running(m)
    finally:
        assert m.stop() == 0


def test_autolock_on_as_json_with_shares(tmp_path: Path) -> None:
    m = ThreadedMember(member_config(tmp_path / "data"))
    try:
        _running(m)
        res = concordctl(m.endpoint, "-o", "json", "cluster", "autolock", "on", "--shares", "3/5")
        assert res.exit_code == 0, res.output
        [row] = json.loads(res.stdout)
        assert row["ok"] and row["member"] == 1 and row["threshold"] == 3
        assert len(row["shares"]) == 5 and "unlock_key" not in row
        assert "shown only this once" in res.stderr
    finally:
        assert m.stop() == 0


def test_rotate_data_key_reencrypts_and_the_member_restarts_on_the_new_key_alone(
    tmp_path: Path,
) -> None:
    cfg = member_config(tmp_path / "data")
    m = ThreadedMember(cfg)
    try:
        _running(m)
        ep = m.endpoint
        for i in range(5):
            assert concordctl(ep, "put", f"k{i}", f"v{i}").exit_code == 0
        before = KeyStore.open(cfg.data_dir, read_only=True).key_ids
        res = concordctl(ep, "-o", "json", "cluster", "rotate-data-key")
        assert res.exit_code == 0, res.output
        [row] = json.loads(res.stdout)
        assert row["member"] == 1
        assert row["key_id"] not in before
        assert sorted(row["retired_key_ids"]) == sorted(before)
        assert row["snapshot_index"] >= 5
        assert KeyStore.open(cfg.data_dir, read_only=True).key_ids == (row["key_id"],)
        table = concordctl(ep, "cluster", "rotate-data-key")
        assert table.exit_code == 0 and "re-encrypted through the snapshot at index" in table.stdout
        assert concordctl(ep, "put", "after", "1").exit_code == 0
    finally:
        assert m.stop() == 0

    m = ThreadedMember(cfg)  # everything on disk reads under the newest key alone
    try:
        _running(m)
        got = concordctl(m.endpoint, "get", "k3")
        assert got.exit_code == 0 and "v3" in got.stdout
        assert concordctl(m.endpoint, "get", "after").exit_code == 0
    finally:
        assert m.stop() == 0
