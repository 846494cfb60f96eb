"""Snapshot files, sealed and opened a chunk at a time: the bytes are those of sealing the
whole plaintext at once (what earlier builds wrote and read), damage of any kind is
`WalCorruptError`, and a write that fails midway leaves the file it replaces alone."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coordinator.raft import ConfState, Snapshot, SnapshotMeta
from coordinator.storage import DiskWal, KeyStore, WalCorruptError
from coordinator.storage._fs import write_file_atomic_with
from coordinator.storage._snapfile import read_snapshot, snapshot_name, write_snapshot
from coordinator.storage.crypto import (
    STREAM_CHUNK_BYTES,
    TAG_BYTES,
    open_stream,
    seal_stream,
    snapshot_nonce,
)
from tests.storage.helpers import reopen

CONF = ConfState(frozenset({1, 2, 3}))
HEAD = struct.Struct(">6sHIQQ12s")
AAD = b"concord/snapshot/v1"
IMAGE = os.urandom(2 * STREAM_CHUNK_BYTES + 12345)
"""Longer than two chunks and not a whole number of them."""


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore.create(tmp_path / "d")


def snap_dir(keys: KeyStore) -> Path:
    path = keys.data_dir / "snap"
    path.mkdir(exist_ok=True)
    return path


def one_shot_open(path: Path, keys: KeyStore) -> tuple[ConfState, bytes]:
    """What earlier builds did: the whole file, opened by one `AESGCM.decrypt`."""
    data = path.read_bytes()
    head = data[: HEAD.size]
    _, _, key_id, _, _, nonce = HEAD.unpack(head)
    plain = AESGCM(keys.data_key(key_id)).decrypt(nonce, data[HEAD.size :], AAD + head)
    (conf_len,) = struct.unpack_from(">I", plain)
    return ConfState.decode(plain[4 : 4 + conf_len]), plain[4 + conf_len :]


def one_shot_write(path: Path, keys: KeyStore, meta: SnapshotMeta, data: bytes) -> None:
    """What earlier builds wrote: the whole plaintext sealed by one `AESGCM.encrypt`."""
    key_id, nonce = keys.current_key_id, snapshot_nonce()
    head = HEAD.pack(b"CCSNAP", 1, key_id, meta.index, meta.term, nonce)
    conf = meta.conf.encode()
    plain = struct.pack(">I", len(conf)) + conf + data
    path.write_bytes(head + AESGCM(keys.data_key(key_id)).encrypt(nonce, plain, AAD + head))


@pytest.mark.parametrize("size", [0, 1, STREAM_CHUNK_BYTES - 1, STREAM_CHUNK_BYTES, len(IMAGE)])
def test_a_streamed_seal_is_the_one_shot_seal(size: int) -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    parts = [b"prefix", memoryview(IMAGE)[:size], b"", b"suffix"]
    out = bytearray()
    seal_stream(key, nonce, b"aad", parts, out.extend)
    plain = b"".join(parts)
    assert bytes(out) == AESGCM(key).encrypt(nonce, plain, b"aad")
    opened = open_stream(key, nonce, b"aad", _reader(bytes(out)), len(out))
    assert opened == plain


def _reader(data: bytes) -> Callable[[memoryview], int]:
    """`read_into` over `data`, a little at a time, as a file might deliver it."""
    pending = bytearray(data)

    def read_into(buf: memoryview) -> int:
        n = min(len(buf), len(pending), 100_000)
        buf[:n] = pending[:n]
        del pending[:n]
        return n

    return read_into


def test_a_streamed_open_refuses_a_wrong_tag_and_a_short_stream() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, IMAGE, None)
    bad = bytearray(sealed)
    bad[len(IMAGE) // 2] ^= 1
    with pytest.raises(InvalidTag):
        open_stream(key, nonce, b"", _reader(bytes(bad)), len(bad))
    with pytest.raises(EOFError):
        open_stream(key, nonce, b"", _reader(sealed[:-1]), len(sealed))


def test_a_written_snapshot_opens_with_one_aesgcm_decrypt(keys: KeyStore) -> None:
    """An earlier build reading this build's snapshot: the file is one AES-GCM seal."""
    meta = SnapshotMeta(7, 2, CONF)
    path = write_snapshot(snap_dir(keys), Snapshot(meta, IMAGE), keys.current_key_id, keys.data_key)
    assert one_shot_open(path, keys) == (CONF, IMAGE)
    assert path.stat().st_size == HEAD.size + 4 + len(CONF.encode()) + len(IMAGE) + TAG_BYTES


def test_a_view_is_written_as_its_bytes(keys: KeyStore) -> None:
    meta = SnapshotMeta(7, 2, CONF)
    view = memoryview(bytearray(IMAGE)).toreadonly()
    path = write_snapshot(snap_dir(keys), Snapshot(meta, view), keys.current_key_id, keys.data_key)
    assert one_shot_open(path, keys) == (CONF, IMAGE)


def test_a_snapshot_sealed_whole_reads_back(keys: KeyStore) -> None:
    """This build reading an earlier build's snapshot."""
    meta = SnapshotMeta(9, 3, CONF)
    path = snap_dir(keys) / snapshot_name(meta.term, meta.index)
    one_shot_write(path, keys, meta, IMAGE)
    snap, key_id = read_snapshot(path, keys.data_key)
    assert (snap.meta, bytes(snap.data), key_id) == (meta, IMAGE, keys.current_key_id)


@pytest.mark.parametrize("image", [b"", b"x", IMAGE])
def test_a_snapshot_round_trips_as_a_read_only_view(keys: KeyStore, image: bytes) -> None:
    meta = SnapshotMeta(5, 1, CONF)
    path = write_snapshot(snap_dir(keys), Snapshot(meta, image), keys.current_key_id, keys.data_key)
    snap, _ = read_snapshot(path, keys.data_key)
    assert snap.meta == meta and snap.data == image
    assert isinstance(snap.data, memoryview) and snap.data.readonly


def _written(keys: KeyStore) -> Path:
    meta = SnapshotMeta(5, 1, CONF)
    return write_snapshot(snap_dir(keys), Snapshot(meta, IMAGE), keys.current_key_id, keys.data_key)


@pytest.mark.parametrize(
    "at",
    [
        0,  # the magic
        HEAD.size - 1,  # the nonce, which the tag covers as associated data
        HEAD.size,  # the first byte sealed
        HEAD.size + STREAM_CHUNK_BYTES + 1,  # in the second chunk
        -TAG_BYTES,  # the tag
        -1,
    ],
)
def test_a_flipped_bit_anywhere_is_corruption(keys: KeyStore, at: int) -> None:
    path = _written(keys)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(data)
    with pytest.raises(WalCorruptError):
        read_snapshot(path, keys.data_key)


@pytest.mark.parametrize(
    "keep",
    [0, 5, HEAD.size, HEAD.size + TAG_BYTES - 1, HEAD.size + STREAM_CHUNK_BYTES, -TAG_BYTES, -1],
)
def test_a_truncated_snapshot_is_corruption(keys: KeyStore, keep: int) -> None:
    path = _written(keys)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(WalCorruptError):
        read_snapshot(path, keys.data_key)


def test_a_snapshot_of_another_member_does_not_open(keys: KeyStore, tmp_path: Path) -> None:
    path = _written(keys)
    other = KeyStore.create(tmp_path / "other")
    with pytest.raises(WalCorruptError, match="authentication failed"):
        read_snapshot(path, other.data_key)


def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old contents")

    def half_then_fail(fd: int) -> None:
        os.write(fd, b"half of the new")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        write_file_atomic_with(target, half_then_fail)
    assert target.read_bytes() == b"old contents"


def test_a_snapshot_write_failing_after_its_header_leaves_no_file_under_its_name(
    keys: KeyStore,
) -> None:
    """The header is written before sealing starts; a failure then (here a key AES refuses)
    must leave only a temp file, which the next open removes."""
    with DiskWal.create(keys):
        pass
    meta = SnapshotMeta(5, 1, CONF)
    with pytest.raises(ValueError):
        write_snapshot(snap_dir(keys), Snapshot(meta, IMAGE), keys.current_key_id, lambda _: b"x")
    final = snap_dir(keys) / snapshot_name(meta.term, meta.index)
    assert not final.exists()
    assert final.with_name(final.name + ".tmp").exists()
    with reopen(keys.data_dir):
        pass
    assert not list(snap_dir(keys).glob("*.tmp"))
