"""A power cut keeps only what was fsynced (coordinator/testing/powercut.py), and the real
DiskWal, cut after any save, reopens with every record that save acknowledged.

Every other storage test reads back through the page cache, which keeps unsynced writes: a
WAL whose fdatasync was deleted passes them all. These do not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coordinator.raft import ConfState, Entry, HardState
from coordinator.storage import DiskWal, KeyStore
from coordinator.testing.powercut import PowerCut
from tests.storage.helpers import ents, reopen

CONF = ConfState(frozenset({1, 2, 3}))


def _write(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_the_cut_keeps_exactly_what_was_fsynced_names_included(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "before").write_bytes(b"there when the cut was armed")
    with PowerCut(root) as disk:
        _write(root / "unsynced", b"x", sync=False)  # named by the directory fsync below
        _write(root / "synced", b"x", sync=True)
        _write(root / "appended", b"durable", sync=True)
        sub = root / "sub"
        sub.mkdir()
        _write(sub / "inner", b"in", sync=True)
        _sync_dir(sub)
        _sync_dir(root)
        # Nothing below is followed by a directory fsync:
        _write(root / "late", b"x", sync=True)  # its data, but not its name
        os.unlink(root / "synced")
        os.unlink(root / "unsynced")
        _write(root / "appended", b" and then not", sync=False)
        (root / "before").rename(root / "renamed")
        assert disk.fsyncs == 6

        disk.cut()

    assert sorted(p.name for p in root.iterdir()) == [
        "appended",
        "before",
        "sub",
        "synced",
        "unsynced",
    ]
    assert (root / "before").read_bytes() == b"there when the cut was armed"
    assert (root / "appended").read_bytes() == b"durable"
    assert (root / "synced").read_bytes() == b"x"
    assert (root / "unsynced").read_bytes() == b""  # named, but its data never synced
    assert (root / "sub" / "inner").read_bytes() == b"in"
    assert os.fsync is not disk._fsync  # disarmed


@pytest.mark.parametrize("saves_before_cut", [1, 2, 7, 23])
def test_every_record_a_save_returned_for_survives_a_power_cut(
    tmp_path: Path, saves_before_cut: int
) -> None:
    """Small segments, so the cut lands in a rolled log too; term and vote changes, an
    overwritten tail and a snapshot on the way. Whatever `save` returned for is there after
    the cut; the commit index alone may lag (it is not synced by design)."""
    data_dir = tmp_path / "d"
    keys = KeyStore.create(data_dir)
    with PowerCut(tmp_path) as disk:
        wal = DiskWal.create(keys, segment_bytes=600)
        expected: list[Entry] = []
        hs = HardState()
        for n in range(saves_before_cut):
            term = 1 + n // 5
            first = len(expected) + 1
            if n % 6 == 5 and len(expected) > 2:
                first = len(expected) - 1  # a new leader overwrites our last two entries
            batch = ents(first, first + 3, term=term, tag=b"s%d" % n)
            hs = HardState(term, 1 + term % 3, max(0, first - 1))
            wal.save(batch, hs)
            expected = expected[: first - 1] + batch
            if n == 10:
                wal.create_snapshot(8, CONF, b"state at 8")
            wal.save([], HardState(hs.term, hs.vote, len(expected)))  # commit only: unsynced
        disk.cut(release=wal.close)

    with reopen(data_dir) as back:
        assert back.last_index() == len(expected)
        first = back.first_index()
        assert back.entries(first, len(expected) + 1) == expected[first - 1 :]
        got = back.hard_state
        assert (got.term, got.vote) == (hs.term, hs.vote)
        assert hs.commit <= got.commit <= len(expected)
        if saves_before_cut > 10:
            assert back.snapshot().meta.index == 8 and back.snapshot().data == b"state at 8"


def test_a_wal_created_and_cut_at_once_opens_empty(tmp_path: Path) -> None:
    """Creation itself (staging dir, rename, directory fsyncs) survives the cut."""
    data_dir = tmp_path / "d"
    keys = KeyStore.create(data_dir)
    with PowerCut(tmp_path) as disk:
        wal = DiskWal.create(keys)
        disk.cut(release=wal.close)
    with reopen(data_dir) as back:
        assert back.last_index() == 0 and back.hard_state == HardState()
