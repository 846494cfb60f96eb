"""rafttool dump: decrypted records with the keys, a clear refusal without them, and no
writes to the directory it reads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from coordinator.raft import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from coordinator.storage import (
    KeyFileCorruptError,
    LockedError,
    WalCorruptError,
    WrongUnlockKeyError,
    dump,
)
from tests.storage.helpers import all_bytes, ents, frames, new_wal, segments

CONF = ConfState(frozenset({1, 2, 3}))
SECRET = b"the-launch-code-0000"


def _member(data_dir: Path, autolock: bool) -> str | None:
    keys, wal = new_wal(data_dir, autolock=autolock)
    with wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, CONF)))
        wal.save([Entry(1, 1, EntryKind.NORMAL, SECRET)], HardState(1, 1, 0))
        wal.save([Entry(2, 1, EntryKind.CONF, CONF.encode())], HardState(1, 1, 2))
        wal.create_snapshot(2, CONF, b"image")
    return keys.unlock_key


@pytest.mark.parametrize("autolock", [False, True])
def test_dump_shows_every_record_decrypted(tmp_path: Path, autolock: bool) -> None:
    data_dir = tmp_path / "d"
    unlock = _member(data_dir, autolock)
    records = list(dump(data_dir, unlock))
    types = [r.type for r in records]
    assert types[:2] == ["SNAPSHOT", "SNAPSHOT"]
    assert "SEGMENT_HEADER" in types and "SNAPSHOT_MARK" in types
    entries = [r for r in records if r.type == "ENTRY"]
    assert [(r.index, r.term, r.kind, r.data) for r in entries] == [
        (1, 1, EntryKind.NORMAL, SECRET),
        (2, 1, EntryKind.CONF, CONF.encode()),
    ]
    assert [r.hard_state for r in records if r.type == "HARD_STATE"] == [
        HardState(1, 1, 0),
        HardState(1, 1, 2),
    ]
    snap = records[1]
    assert (snap.index, snap.term, snap.data, snap.conf) == (2, 1, b"image", CONF)
    lines = [r.describe() for r in records]
    assert any("ENTRY index=1 term=1" in line and repr(SECRET) in line for line in lines)
    assert all(line.startswith(("wal/", "snap/")) for line in lines)


def test_dump_refuses_without_the_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    unlock = _member(data_dir, autolock=True)
    with pytest.raises(LockedError, match="concordctl unlock"):
        dump(data_dir)
    other = _member(tmp_path / "other", autolock=True)
    with pytest.raises(WrongUnlockKeyError):
        dump(data_dir, other)
    assert unlock is not None
    assert any(r.data == SECRET for r in dump(data_dir, unlock))


def test_dump_refuses_a_copy_without_its_kek(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _member(data_dir, autolock=False)
    stolen = tmp_path / "stolen"
    shutil.copytree(data_dir, stolen, ignore=shutil.ignore_patterns("kek"))
    with pytest.raises(KeyFileCorruptError, match="missing and autolock is off"):
        dump(stolen)


def test_dump_reports_a_torn_tail_without_cutting_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), HardState(1))
    path = segments(data_dir)[-1]
    start, end = frames(path)[-1]
    os.truncate(path, end - 3)
    before = all_bytes(data_dir)
    records = list(dump(data_dir))
    assert records[-1].type == "TORN"
    assert records[-1].offset == start
    assert "TORN" in records[-1].describe()
    assert all_bytes(data_dir) == before, "dump must not modify the directory"


def test_dump_yields_what_reads_back_then_raises_on_corruption(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 6), HardState(1))
    path = segments(data_dir)[-1]
    start, _ = frames(path)[3]  # entry 3
    data = bytearray(path.read_bytes())
    data[start + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    seen = []
    with pytest.raises(WalCorruptError):
        for record in dump(data_dir):
            seen.append(record)
    assert [r.index for r in seen if r.type == "ENTRY"] == [1, 2]
