"""`concordctl rafttool dump` decrypts a data directory with its keys, and only with them."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from coordinator.cli.main import cli
from coordinator.raft import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from coordinator.storage import DiskWal, KeyStore

SECRET = b"hunter2-correct-horse"


def make_data_dir(path: Path, autolock: bool) -> str | None:
    keys = KeyStore.create(path, autolock=autolock)
    unlock = keys.unlock_key
    wal = DiskWal.create(keys)
    wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1})))))
    wal.save([Entry(1, 1, data=SECRET)], HardState(1, 1, 1))
    wal.close()
    return unlock


def test_dump_shows_the_decrypted_log(tmp_path: Path) -> None:
    make_data_dir(tmp_path / "m1", autolock=False)
    res = CliRunner().invoke(cli, ["rafttool", "dump", "--data-dir", str(tmp_path / "m1")])
    assert res.exit_code == 0, res.output
    assert SECRET.decode() in res.output
    assert "ENTRY" in res.output


def test_dump_of_a_locked_member_needs_the_unlock_key(tmp_path: Path) -> None:
    unlock = make_data_dir(tmp_path / "m1", autolock=True)
    assert unlock is not None
    res = CliRunner().invoke(cli, ["rafttool", "dump", "--data-dir", str(tmp_path / "m1")])
    assert res.exit_code == 1
    assert "unlock" in res.output.lower()
    assert SECRET.decode() not in res.output
    ok = CliRunner().invoke(
        cli,
        [
            "-o",
            "json",
            "rafttool",
            "dump",
            "--data-dir",
            str(tmp_path / "m1"),
            "--unlock-key",
            unlock,
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert SECRET.decode() in ok.output
