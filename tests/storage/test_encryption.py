"""Encryption at rest, end to end: no secret reaches the disk in the clear, every sealed
object is bound to its place, and both kinds of key rotation keep the data readable with
the new keys only."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from coordinator.raft import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from coordinator.storage import (
    DiskWal,
    KeyStore,
    WalCorruptError,
    WrongUnlockKeyError,
    dump,
    parse_unlock_key,
)
from tests.storage.helpers import all_bytes, ents, frames, new_wal, reopen, segments, view

SECRET = b"correct-horse-battery-staple-7f3a"
CONF = ConfState(frozenset({1, 2, 3}))


@pytest.mark.parametrize("autolock", [False, True])
def test_no_secret_ever_reaches_the_disk_in_the_clear(tmp_path: Path, autolock: bool) -> None:
    data_dir = tmp_path / "d"
    keys, wal = new_wal(data_dir, autolock=autolock, segment_bytes=4096)
    with wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, CONF)))
        for lo in range(1, 60, 3):
            batch = [Entry(i, 1, EntryKind.NORMAL, SECRET + b"#%d" % i) for i in range(lo, lo + 3)]
            wal.save(batch, HardState(1, 1, lo))
        wal.save([Entry(61, 1, EntryKind.CONF, CONF.encode())], None)
        wal.create_snapshot(40, CONF, b"kv-image:" + SECRET)
        wal.compact(30)
        wal.save_snapshot(Snapshot(SnapshotMeta(100, 2, CONF), b"incoming:" + SECRET))
        wal.save(ents(101, 103, term=2, tag=SECRET), HardState(2, 0, 101))
    deks = [keys.cipher(k) for k in keys.key_ids]  # the ring decrypts: the keys are real
    assert deks
    dek_bytes = list(keys._ring.keys.values())
    files = all_bytes(data_dir)
    assert {p.relative_to(data_dir).parts[0] for p, _ in files} >= {"keys", "wal", "snap"}
    for path, data in files:
        assert SECRET not in data, f"{path} holds the secret in the clear"
        for dek in dek_bytes:
            assert dek not in data, f"{path} holds a data key in the clear"
    if autolock:
        assert keys.unlock_key is not None
        assert not (data_dir / "keys" / "kek").exists()
        unlock_raw = parse_unlock_key(keys.unlock_key)
        for path, data in files:
            assert unlock_raw not in data, f"{path} holds the unlock key"
            assert keys.unlock_key.encode() not in data
    else:
        assert (data_dir / "keys" / "kek").exists()
    # ... and yet all of it reads back with the keys.
    with reopen(data_dir, keys.unlock_key) as wal:
        assert SECRET in bytes(wal.snapshot().data)
        assert all(SECRET in e.data for e in wal.entries(101, 103))


def _wal_with_equal_records(data_dir: Path) -> tuple[Path, list[tuple[int, int]]]:
    """Entries 1..4 with data of equal length, so their records have equal sizes."""
    _, wal = new_wal(data_dir)
    with wal:
        wal.save([Entry(i, 1, EntryKind.NORMAL, b"value-%d" % i) for i in range(1, 5)], None)
        wal.save(ents(5, 6), HardState(1))
    path = segments(data_dir)[-1]
    return path, frames(path)


def test_a_record_copied_over_another_fails_authentication(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    path, recs = _wal_with_equal_records(data_dir)
    data = bytearray(path.read_bytes())
    (a0, a1), (b0, b1) = recs[2], recs[3]  # entries 2 and 3
    assert a1 - a0 == b1 - b0
    data[b0:b1] = data[a0:a1]
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError, match="authentication failed") as info:
        reopen(data_dir)
    assert info.value.offset == b0


def test_a_record_relabelled_with_another_index_fails_authentication(tmp_path: Path) -> None:
    """Change the clear index in place and fix the CRC: only the AEAD can catch it."""
    data_dir = tmp_path / "d"
    path, recs = _wal_with_equal_records(data_dir)
    data = bytearray(path.read_bytes())
    start, end = recs[3]  # entry 3
    index_at = start + 8 + 1 + 4
    assert struct.unpack_from(">Q", data, index_at)[0] == 3
    struct.pack_into(">Q", data, index_at, 2)
    struct.pack_into(">I", data, start + 4, zlib.crc32(bytes(data[start + 8 : end])))
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError, match="authentication failed"):
        reopen(data_dir)


def test_a_record_relabelled_with_another_term_fails_authentication(tmp_path: Path) -> None:
    """The right index with another term: replay would hand Raft an entry of a term it never
    had (breaking log matching), so the term is bound by the AEAD as much as the index."""
    data_dir = tmp_path / "d"
    path, recs = _wal_with_equal_records(data_dir)
    data = bytearray(path.read_bytes())
    start, end = recs[3]  # entry 3
    term_at = start + 8 + 1 + 4 + 8
    assert struct.unpack_from(">QQ", data, term_at - 8) == (3, 1)
    struct.pack_into(">Q", data, term_at, 2)
    struct.pack_into(">I", data, start + 4, zlib.crc32(bytes(data[start + 8 : end])))
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError, match="authentication failed") as info:
        reopen(data_dir)
    assert info.value.offset == start


def test_a_replayed_record_at_the_tail_is_not_mistaken_for_a_torn_write(tmp_path: Path) -> None:
    """An old record appended verbatim (rolling the log back to index 2) has a good CRC: it
    must be refused, not cut as torn and not obeyed as a truncation."""
    data_dir = tmp_path / "d"
    path, recs = _wal_with_equal_records(data_dir)
    data = path.read_bytes()
    start, end = recs[2]
    path.write_bytes(data + data[start:end])
    with pytest.raises(WalCorruptError, match="authentication failed"):
        reopen(data_dir)


def test_a_snapshot_renamed_to_another_index_does_not_open(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 10), HardState(1))
        wal.create_snapshot(5, CONF, SECRET)
    snap = next((data_dir / "snap").iterdir())
    snap.rename(snap.with_name(f"{1:016x}-{9:016x}.snap"))
    with pytest.raises(WalCorruptError, match="file name contradicts"):
        reopen(data_dir)


def test_another_members_files_do_not_open_under_our_keys(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for data_dir in (ours, theirs):
        _, wal = new_wal(data_dir)
        with wal:
            wal.save(ents(1, 4), HardState(1))
    ours_seg, theirs_seg = segments(ours)[-1], segments(theirs)[-1]
    ours_seg.write_bytes(theirs_seg.read_bytes())
    theirs_seg.rename(theirs_seg.with_name(ours_seg.name))
    with pytest.raises(WalCorruptError):
        reopen(ours)


def test_unlock_key_rotation_keeps_data_readable_with_the_new_key_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    keys, wal = new_wal(data_dir, autolock=True)
    old_key = keys.unlock_key
    with wal:
        wal.save(ents(1, 20, tag=SECRET), HardState(1, 1, 10))
        wal.create_snapshot(10, CONF, SECRET)
        wal.compact(10)
        expected = view(wal)
    new_key = KeyStore.open(data_dir, old_key).rotate_unlock_key()
    with pytest.raises(WrongUnlockKeyError):
        KeyStore.open(data_dir, old_key)
    with pytest.raises(WrongUnlockKeyError):
        reopen(data_dir, old_key)
    with reopen(data_dir, new_key) as wal:
        assert view(wal) == expected


def test_dek_rotation_then_snapshot_retires_the_old_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    keys, wal = new_wal(data_dir, autolock=True)
    unlock = keys.unlock_key
    old_id = keys.current_key_id
    with wal:
        wal.save(ents(1, 6), HardState(1))
        wal.create_snapshot(3, CONF, b"under the old key")
        new_id = wal.rotate_dek()
        assert new_id > old_id
        wal.save(ents(6, 11), HardState(1, 1, 10))
        assert wal.key_ids_in_use() == {old_id, new_id}
    by_index = {r.index: r.key_id for r in dump(data_dir, unlock) if r.type == "ENTRY"}
    assert by_index == {**dict.fromkeys(range(1, 6), old_id), **dict.fromkeys(range(6, 11), new_id)}
    with reopen(data_dir, unlock) as wal:  # old records still readable
        assert wal.entries(4, 11) == ents(4, 11)
        assert wal.retire_keys() == [], "old segments and snapshot still need the old key"
        wal.create_snapshot(10, CONF, b"under the new key")
        wal.compact(10)
        assert wal.key_ids_in_use() == {new_id}
        assert wal.retire_keys() == [old_id]
        expected = view(wal)
    assert KeyStore.open(data_dir, unlock).key_ids == (new_id,)
    assert {r.key_id for r in dump(data_dir, unlock)} == {new_id}
    with reopen(data_dir, unlock) as wal:
        assert view(wal) == expected


def test_dropping_a_key_that_is_still_needed_makes_the_wal_unreadable(tmp_path: Path) -> None:
    """Why `DiskWal.retire_keys` exists: the raw ring operation trusts its caller."""
    data_dir = tmp_path / "d"
    _, wal = new_wal(data_dir)
    with wal:
        wal.save(ents(1, 3), HardState(1))
        new_id = wal.rotate_dek()
        wal.save(ents(3, 5), HardState(1))
    KeyStore.open(data_dir).drop_keys_older_than(new_id)
    with pytest.raises(WalCorruptError, match="not in the key ring"):
        DiskWal.open(KeyStore.open(data_dir))
