"""Snapshot files: one sealed blob per snapshot, replaced atomically, the newest two kept.

    snap/<term:016x>-<index:016x>.snap
    = `CCSNAP` + u16 version | u32 key id | u64 index | u64 term | 12-byte nonce
      | AES-GCM(u32 len + encoded ConfState + state-machine data)

The clear header is the associated data, so a file renamed to another index or term, or
sealed under another key, fails to open. A snapshot is written to `<name>.tmp`, fsynced,
renamed and the directory fsynced; a `.tmp` left by a crash is never read and is removed on
open.

The image is the one large thing a member holds (about 80 MB for a million keys), so it is
sealed and opened a chunk at a time (`seal_stream`, `open_stream`): writing holds no copy of
it, reading holds the file's plaintext once, in the buffer the snapshot's data is a view of.
The bytes are the same as sealing the whole plaintext at once with `AESGCM`.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag

from coordinator.raft import ConfState, Snapshot, SnapshotMeta

from ._fs import TMP_SUFFIX, write_all, write_file_atomic_with
from .crypto import TAG_BYTES, open_stream, seal_stream, snapshot_nonce
from .errors import FormatVersionError, UnknownKeyError, WalCorruptError

SNAPSHOT_FORMAT_VERSION = 1
_MAGIC = b"CCSNAP"
_HEAD = struct.Struct(">6sHIQQ12s")
_AAD_DOMAIN = b"concord/snapshot/v1"
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
SNAPSHOTS_KEPT = 2

KeyFor = Callable[[int], bytes]
"""Key id -> the data key itself; raises `UnknownKeyError` for a key the ring does not hold."""


def snapshot_name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}.snap"


def list_snapshots(snap_dir: Path) -> tuple[list[tuple[int, int, Path]], list[Path]]:
    """((index, term, path) oldest first, leftover temp files) of a snapshot directory."""
    found = []
    leftovers = []
    for path in snap_dir.iterdir():
        m = _NAME.match(path.name)
        if m:
            found.append((int(m.group(2), 16), int(m.group(1), 16), path))
        elif path.name.endswith(TMP_SUFFIX):
            leftovers.append(path)
    found.sort()
    return found, sorted(leftovers)


def write_snapshot(snap_dir: Path, snap: Snapshot, key_id: int, key_for: KeyFor) -> Path:
    meta = snap.meta
    nonce = snapshot_nonce()
    head = _HEAD.pack(_MAGIC, SNAPSHOT_FORMAT_VERSION, key_id, meta.index, meta.term, nonce)
    conf = meta.conf.encode()
    key = key_for(key_id)

    def fill(fd: int) -> None:
        write_all(fd, head)
        parts = (struct.pack(">I", len(conf)) + conf, snap.data)
        seal_stream(key, nonce, _AAD_DOMAIN + head, parts, lambda chunk: write_all(fd, chunk))

    path = snap_dir / snapshot_name(meta.term, meta.index)
    write_file_atomic_with(path, fill)
    return path


def snapshot_key_id(path: Path) -> int:
    """The key id a snapshot file is sealed under, from its clear header."""
    with path.open("rb") as f:
        head = f.read(_HEAD.size)
    if len(head) < _HEAD.size or not head.startswith(_MAGIC):
        raise WalCorruptError(path, 0, "not a snapshot file")
    key_id: int = _HEAD.unpack(head)[2]
    return key_id


def read_snapshot(path: Path, key_for: KeyFor) -> tuple[Snapshot, int]:
    """(snapshot, key id) from a snapshot file; `WalCorruptError` if it does not open. The
    snapshot's data is a read-only view of the one buffer the file was decrypted into."""
    m = _NAME.match(path.name)
    if not m:
        raise WalCorruptError(path, 0, "not a snapshot file name")
    name_term, name_index = int(m.group(1), 16), int(m.group(2), 16)
    with path.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_HEAD.size)
        if size < _HEAD.size + TAG_BYTES or len(head) < _HEAD.size or not head.startswith(_MAGIC):
            raise WalCorruptError(path, 0, "not a snapshot file, or truncated")
        _, version, key_id, index, term, nonce = _HEAD.unpack(head)
        if version != SNAPSHOT_FORMAT_VERSION:
            raise FormatVersionError(
                f"{path} has snapshot format version {version}; this build reads version "
                f"{SNAPSHOT_FORMAT_VERSION}"
            )
        if (index, term) != (name_index, name_term):
            raise WalCorruptError(
                path, 0, f"header says index {index} term {term}, which the file name contradicts"
            )
        try:
            key = key_for(key_id)
            plain = open_stream(key, nonce, _AAD_DOMAIN + head, f.readinto, size - _HEAD.size)
        except UnknownKeyError as exc:
            raise WalCorruptError(path, 0, str(exc)) from None
        except InvalidTag:
            raise WalCorruptError(
                path,
                0,
                "authentication failed: the snapshot was altered or sealed under another key",
            ) from None
        except EOFError as exc:
            raise WalCorruptError(path, 0, f"the file shrank while being read: {exc}") from None
    try:
        (conf_len,) = struct.unpack_from(">I", plain)
        conf = ConfState.decode(bytes(plain[4 : 4 + conf_len]))
    except (ValueError, struct.error) as exc:
        raise WalCorruptError(path, 0, f"malformed snapshot contents: {exc}") from None
    # A view, not a slice: a slice would copy the whole image.
    data = memoryview(plain).toreadonly()[4 + conf_len :]
    return Snapshot(SnapshotMeta(index, term, conf), data), key_id
