"""Backup files (coordinator.storage.backup) on real disk: round trips, wrong keys, and every
kind of damage reported with its offset, never as a wrong key and never as a traceback."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import pytest

from coordinator.storage import (
    BackupCorruptError,
    BackupError,
    BackupShareError,
    InvalidBackupKeyError,
    WrongBackupKeyError,
    format_unlock_key,
)
from coordinator.storage import backup as bk
from coordinator.storage.backup import (
    combine_backup_key_shares,
    encode_backup,
    new_backup_key,
    parse_backup_key,
    read_backup,
    read_backup_header,
    split_backup_key,
    write_backup,
)

IMAGE = bytes(range(256)) * 5  # 1280 bytes: 20 chunks of 64
CHUNK = 64
HEADER_AT = 14  # magic (8) + version (2) + header length (4)


def make(
    image: bytes = IMAGE, key: str | None = None, chunk_bytes: int = CHUNK, **over: object
) -> tuple[bytes, str]:
    key = key or new_backup_key()
    fields: dict[str, object] = {
        "image": image,
        "backup_key": key,
        "cluster_id": "prod-eu",
        "index": 1234,
        "term": 7,
        "created_ms": 1_700_000_000_123,
        "source_member": 2,
        "revision": 99,
        "voters": [3, 1, 2],
        "learners": [4],
        "chunk_bytes": chunk_bytes,
    }
    fields.update(over)
    return encode_backup(**fields), key  # type: ignore[arg-type]


def saved(tmp_path: Path, data: bytes, name: str = "b.bak") -> Path:
    path = tmp_path / name
    write_backup(path, data)
    return path


def header_len(data: bytes) -> int:
    return int(struct.unpack_from(">I", data, 10)[0])


def key_block_at(data: bytes) -> int:
    return HEADER_AT + header_len(data) + 4


def records_at(data: bytes) -> int:
    return key_block_at(data) + 12 + 48


# --- round trips ----------------------------------------------------------------------------


def test_round_trip_many_chunks(tmp_path: Path) -> None:
    data, key = make(key_shares=(2, 3))
    path = saved(tmp_path, data)
    header, image = read_backup(path, key)
    assert image == IMAGE
    assert (header.index, header.term, header.revision) == (1234, 7, 99)
    assert header.cluster_id == "prod-eu" and header.source_member == 2
    assert header.voters == (1, 2, 3) and header.learners == (4,) and header.members == 4
    assert header.created_ms == 1_700_000_000_123
    assert header.chunks == 20 and header.image_bytes == len(IMAGE)
    assert header.key_shares == (2, 3) and header.format_version == 1
    # The header alone reads without the key.
    assert read_backup_header(path) == header


@pytest.mark.parametrize("image", [b"", b"x", bytes(CHUNK), bytes(CHUNK + 1)])
def test_round_trip_edge_sizes(tmp_path: Path, image: bytes) -> None:
    data, key = make(image)
    assert read_backup(saved(tmp_path, data), key)[1] == image


def test_every_file_is_sealed_afresh(tmp_path: Path) -> None:
    """Same image, same key: different salt, nonces and file key, so different bytes."""
    key = new_backup_key()
    a, _ = make(key=key)
    b, _ = make(key=key)
    assert a != b
    assert IMAGE[:64] not in a  # the image is not in the clear


# --- keys -----------------------------------------------------------------------------------


def test_backup_keys_and_shares() -> None:
    key = new_backup_key()
    assert key.startswith("CONCORD-BACKUP-")
    raw = parse_backup_key(key.lower())
    assert len(raw) == 32
    shares = split_backup_key(key, 2, 3)
    assert all(s.startswith("CONCORD-BACKUP-SHARE-") for s in shares)
    assert combine_backup_key_shares([shares[2], shares[0]]) == key
    with pytest.raises(BackupShareError, match="this key needs 2"):
        combine_backup_key_shares(shares[:1])
    with pytest.raises(InvalidBackupKeyError, match="one share of a backup key"):
        parse_backup_key(shares[0])
    with pytest.raises(InvalidBackupKeyError, match="must start with CONCORD-BACKUP-"):
        parse_backup_key(format_unlock_key(raw))  # an unlock key is not a backup key
    typo = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(InvalidBackupKeyError, match="typo"):
        parse_backup_key(typo)


def test_wrong_key_is_reported_as_such(tmp_path: Path) -> None:
    data, _ = make()
    path = saved(tmp_path, data)
    with pytest.raises(WrongBackupKeyError, match="does not open"):
        read_backup(path, new_backup_key())
    with pytest.raises(InvalidBackupKeyError):
        read_backup(path, "CONCORD-BACKUP-NOPE")


# --- damage ---------------------------------------------------------------------------------


def test_truncation_anywhere_names_the_offset(tmp_path: Path) -> None:
    data, key = make()
    cuts = {
        5: 0,  # inside the magic: not a backup file at all
        HEADER_AT + 3: HEADER_AT + 3,  # inside the header
        key_block_at(data) + 10: key_block_at(data) + 10,  # inside the key block
        records_at(data) + 2: records_at(data),  # inside the first record's length
        len(data) - 1: None,  # inside the final record
    }
    for cut, offset in cuts.items():
        path = saved(tmp_path, data[:cut], f"cut-{cut}.bak")
        with pytest.raises(BackupCorruptError) as info:
            read_backup(path, key)
        err = info.value
        assert err.path == path
        if offset is not None:
            assert err.offset == offset, (cut, err)
        assert "damaged at offset" in str(err)
    # Dropping whole records at the end: the final checksum record is missing.
    pos = records_at(data)
    starts = []
    while pos < len(data):
        starts.append(pos)
        pos += 4 + int(struct.unpack_from(">I", data, pos)[0])
    path = saved(tmp_path, data[: starts[-1]], "no-final.bak")
    with pytest.raises(BackupCorruptError, match="before the final checksum record") as info:
        read_backup(path, key)
    assert info.value.offset == starts[-1]


def test_a_damaged_chunk_is_named_with_its_offset(tmp_path: Path) -> None:
    data, key = make()
    pos = records_at(data)
    for _ in range(3):  # skip to the 4th data record
        pos += 4 + int(struct.unpack_from(">I", data, pos)[0])
    damaged = bytearray(data)
    damaged[pos + 10] ^= 0x01
    path = saved(tmp_path, bytes(damaged))
    with pytest.raises(BackupCorruptError, match="chunk 4 of 20 fails authentication") as info:
        read_backup(path, key)
    assert info.value.offset == pos
    # Without the key the damage is invisible (the header is intact).
    assert read_backup_header(path).index == 1234


def test_swapped_chunks_fail_authentication(tmp_path: Path) -> None:
    data, key = make()
    pos = records_at(data)
    length = 4 + int(struct.unpack_from(">I", data, pos)[0])  # full chunks: same length
    first, second = data[pos : pos + length], data[pos + length : pos + 2 * length]
    swapped = data[:pos] + second + first + data[pos + 2 * length :]
    with pytest.raises(BackupCorruptError, match="chunk 1 of 20 fails authentication"):
        read_backup(saved(tmp_path, swapped), key)


def test_header_tamper_is_detected(tmp_path: Path) -> None:
    data, key = make()
    # The index field (first u64 of the header): 1234 -> 1235.
    tampered = bytearray(data)
    tampered[HEADER_AT + 7] ^= 0x01
    path = saved(tmp_path, bytes(tampered), "crc.bak")
    crc_at = HEADER_AT + header_len(data)
    for read in (lambda: read_backup(path, key), lambda: read_backup_header(path)):
        with pytest.raises(BackupCorruptError, match="header checksum does not match") as info:
            read()
        assert info.value.offset == crc_at
    # A forger who also recomputes the CRC still fails authentication: everything sealed
    # binds the header.
    struct.pack_into(">I", tampered, crc_at, zlib.crc32(bytes(tampered[:crc_at])))
    path = saved(tmp_path, bytes(tampered), "forged.bak")
    assert read_backup_header(path).index == 1235  # readable, but...
    with pytest.raises(WrongBackupKeyError, match="header was altered"):
        read_backup(path, key)


def test_trailing_bytes_and_other_files_are_refused(tmp_path: Path) -> None:
    data, key = make()
    with pytest.raises(BackupCorruptError, match="3 unexpected bytes") as info:
        read_backup(saved(tmp_path, data + b"xyz", "tail.bak"), key)
    assert info.value.offset == len(data)
    with pytest.raises(BackupCorruptError, match="not a Concord backup file"):
        read_backup(saved(tmp_path, b"PK\x03\x04 a zip file", "zip.bak"), key)
    future = bytearray(data)
    future[8:10] = b"\x00\x09"
    with pytest.raises(BackupError, match="format version 9"):
        read_backup_header(saved(tmp_path, bytes(future), "v9.bak"))
    with pytest.raises(BackupError, match="does not exist"):
        read_backup_header(tmp_path / "missing.bak")
    with pytest.raises(BackupError, match="is a directory"):
        read_backup_header(tmp_path)


# --- writing --------------------------------------------------------------------------------


def test_write_is_atomic_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, key = make()
    path = saved(tmp_path, data)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "b.bak.tmp").exists()

    # A failure before the rename leaves the previous file as it was, and no temp file.
    newer, _ = make(index=5)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(bk.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        write_backup(path, newer)
    monkeypatch.undo()
    assert path.read_bytes() == data
    assert not (tmp_path / "b.bak.tmp").exists()
    assert read_backup(path, key)[0].index == 1234

    # A stale temp file from a crash is simply replaced.
    (tmp_path / "b.bak.tmp").write_bytes(b"junk")
    os.chmod(tmp_path / "b.bak.tmp", 0o644)
    write_backup(path, newer)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_backup_header(path).index == 5
