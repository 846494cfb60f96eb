"""Recovery: a torn tail is cut exactly, and nothing before it is lost; damage anywhere else
is corruption and the WAL refuses to open, naming the file and offset.

The torn-tail tests cut (or garble) the last record at every byte position, each time on a
fresh copy of the same directory, then reopen, check what survived, and write again, so
the cut segment must also read back as a clean, non-final segment afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coordinator.raft import ConfState, HardState
from coordinator.storage import DiskWal, FormatVersionError, KeyStore, WalCorruptError
from coordinator.storage._segment import segment_name
from tests.storage.helpers import copy_dir, ents, frames, new_wal, reopen, segments, view

HS = HardState(1, 1, 3)


@pytest.fixture
def five_then_one(tmp_path: Path) -> Path:
    """A WAL holding entries 1..5 and HS, then entry 6 alone as the last record on disk."""
    data_dir = tmp_path / "origin"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 6), HS)
        wal.save(ents(6, 7), None)
    return data_dir


def _last_record(data_dir: Path) -> tuple[Path, int, int]:
    path = segments(data_dir)[-1]
    start, end = frames(path)[-1]
    assert end == path.stat().st_size
    return path, start, end


def _recovers_to_five(data_dir: Path, torn_at: int, cut_bytes: int) -> None:
    with reopen(data_dir) as wal:
        assert (wal.first_index(), wal.last_index()) == (1, 5)
        assert wal.entries(1, 6) == ents(1, 6)
        assert wal.hard_state == HS
        if cut_bytes:
            assert wal.recovery is not None
            assert (wal.recovery.offset, wal.recovery.cut_bytes) == (torn_at, cut_bytes)
        else:
            assert wal.recovery is None
        wal.save(ents(6, 8, term=2), HardState(2))
    with reopen(data_dir) as wal:
        assert wal.last_index() == 7
        assert wal.recovery is None


def test_a_tail_torn_at_every_byte_is_cut_exactly(five_then_one: Path, tmp_path: Path) -> None:
    path, start, end = _last_record(five_then_one)
    for cut in range(start, end):
        copy = copy_dir(five_then_one, tmp_path / f"cut{cut}")
        os.truncate(copy / "wal" / path.name, cut)
        _recovers_to_five(copy, start, cut - start)
        assert (copy / "wal" / path.name).stat().st_size == start


def test_a_garbled_byte_anywhere_in_the_last_record_cuts_it(
    five_then_one: Path, tmp_path: Path
) -> None:
    path, start, end = _last_record(five_then_one)
    for pos in range(start, end):
        copy = copy_dir(five_then_one, tmp_path / f"flip{pos}")
        target = copy / "wal" / path.name
        data = bytearray(target.read_bytes())
        data[pos] ^= 0x5A
        target.write_bytes(bytes(data))
        _recovers_to_five(copy, start, end - start)


def test_a_torn_batch_keeps_its_intact_prefix(tmp_path: Path) -> None:
    """Intact records of an unacknowledged batch may survive; recovery keeps exactly the
    intact prefix (Raft copes: the write was never acknowledged, so either outcome is
    allowed)."""
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 3), HardState(1))
        wal.save(ents(3, 6), HardState(2))
    path = segments(data_dir)[-1]
    second_of_batch = frames(path)[-3]
    os.truncate(path, second_of_batch[0] + 5)
    with reopen(data_dir) as wal:
        assert wal.last_index() == 3
        assert wal.hard_state == HardState(1)


@pytest.mark.parametrize("tail", [b"\x00" * 4096, os.urandom(3000), b"\xff" * 9])
def test_junk_after_the_last_record_is_cut(tmp_path: Path, tail: bytes) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), HardState(1))
    path = segments(data_dir)[-1]
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(tail)
    with reopen(data_dir) as wal:
        assert wal.last_index() == 3
        assert wal.recovery is not None
        assert (wal.recovery.offset, wal.recovery.cut_bytes) == (size, len(tail))


def test_damage_followed_by_intact_records_is_corruption(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 6), HardState(1))
    path = segments(data_dir)[-1]
    record_of_entry_3 = frames(path)[3]
    for pos in (record_of_entry_3[0], record_of_entry_3[0] + 20, record_of_entry_3[1] - 1):
        copy = copy_dir(data_dir, tmp_path / f"mid{pos}")
        target = copy / "wal" / path.name
        data = bytearray(target.read_bytes())
        data[pos] ^= 0x01
        target.write_bytes(bytes(data))
        with pytest.raises(WalCorruptError, match="intact record follows") as info:
            reopen(copy)
        assert info.value.path == target
        assert info.value.offset == record_of_entry_3[0]
        assert path.name in str(info.value)
        assert f"offset {record_of_entry_3[0]}" in str(info.value)


def test_a_lost_middle_chunk_is_corruption(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 6), HardState(1))
    path = segments(data_dir)[-1]
    data = path.read_bytes()
    start, end = frames(path)[2]
    path.write_bytes(data[:start] + bytes(end - start) + data[end:])  # zeroed, as a lost page
    with pytest.raises(WalCorruptError, match="intact record follows"):
        reopen(data_dir)


def _two_segments(data_dir: Path) -> tuple[Path, Path]:
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), HardState(1))
    with reopen(data_dir) as wal:
        wal.save(ents(4, 7), HardState(1))
    first, second = segments(data_dir)
    return first, second


def test_a_torn_end_of_an_earlier_segment_is_corruption(tmp_path: Path) -> None:
    first, _ = _two_segments(tmp_path / "d")
    start, end = frames(first)[-1]
    os.truncate(first, end - 1)
    with pytest.raises(WalCorruptError, match="not the last") as info:
        reopen(tmp_path / "d")
    assert info.value.path == first
    assert info.value.offset == start


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), HardState(1))
    with reopen(data_dir) as wal:
        wal.save(ents(4, 7), HardState(1))
    with reopen(data_dir) as wal:
        wal.save(ents(7, 9), HardState(1))
    segments(data_dir)[1].unlink()
    with pytest.raises(WalCorruptError, match="gap"):
        reopen(data_dir)


def test_a_segment_whose_header_never_landed_is_replaced(tmp_path: Path) -> None:
    """A crash right after creating a segment file: its header is torn. Recovery drops the
    file and starts the next segment with a *higher* sequence number, so the torn header's
    nonce is never issued again."""
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), HardState(1, 1, 2))
        expected = view(wal)
    last_seq = int(segments(data_dir)[-1].name[:16], 16)
    torn = data_dir / "wal" / segment_name(last_seq + 1, 4)
    torn.write_bytes(b"CCWAL\x00\x00\x01\x00\x00\x00")
    with reopen(data_dir) as wal:
        assert view(wal) == expected
        assert wal.recovery is not None
    assert not torn.exists()
    assert int(segments(data_dir)[-1].name[:16], 16) == last_seq + 2


def test_a_clean_open_reports_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), HardState(1))
    with reopen(data_dir) as wal:
        assert wal.recovery is None


def test_a_renamed_segment_is_corruption(tmp_path: Path) -> None:
    """The header names its own segment; a file renamed to another seq does not open."""
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), HardState(1))
    path = segments(data_dir)[-1]
    path.rename(path.with_name(segment_name(int(path.name[:16], 16) + 7, 1)))
    with pytest.raises(WalCorruptError):
        DiskWal.open(KeyStore.open(data_dir))


def test_a_segment_of_another_format_version(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), HardState(1))
    path = segments(data_dir)[-1]
    data = bytearray(path.read_bytes())
    data[6:8] = b"\x00\x02"
    path.write_bytes(bytes(data))
    with pytest.raises(FormatVersionError, match=f"{path.name} has WAL segment format version 2"):
        reopen(data_dir)


def test_a_snapshot_of_another_format_version(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 4), HardState(1))
        wal.create_snapshot(3, ConfState(frozenset({1})), b"s")
    path = next((data_dir / "snap").iterdir())
    data = bytearray(path.read_bytes())
    data[6:8] = b"\x00\x07"
    path.write_bytes(bytes(data))
    with pytest.raises(FormatVersionError, match="snapshot format version 7"):
        reopen(data_dir)
