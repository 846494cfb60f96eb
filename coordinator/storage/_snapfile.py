"""Snapshot files: one sealed blob per snapshot, replaced atomically, the newest two kept.

    snap/<term:016x>-<index:016x>.snap
    = `CCSNAP` + u16 version | u32 key id | u64 index | u64 term | 12-byte nonce
      | AES-GCM(u32 len + encoded ConfState + state-machine data)

The clear header is the associated data, so a file renamed to another index or term, or
sealed under another key, fails to open. A snapshot is sealed as a whole (it is in memory
anyway: the state machine produced it as bytes), written to `<name>.tmp`, fsynced, renamed
and the directory fsynced; a `.tmp` left by a crash is never read and is removed on open.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag

from coordinator.raft import ConfState, Snapshot, SnapshotMeta

from ._fs import TMP_SUFFIX, write_file_atomic
from ._segment import CipherFor
from .crypto import TAG_BYTES, snapshot_nonce
from .errors import FormatVersionError, UnknownKeyError, WalCorruptError

SNAPSHOT_FORMAT_VERSION = 1
_MAGIC = b"CCSNAP"
_HEAD = struct.Struct(">6sHIQQ12s")
_AAD_DOMAIN = b"concord/snapshot/v1"
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
SNAPSHOTS_KEPT = 2


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


def write_snapshot(snap_dir: Path, snap: Snapshot, key_id: int, cipher_for: CipherFor) -> Path:
    meta = snap.meta
    nonce = snapshot_nonce()
    head = _HEAD.pack(_MAGIC, SNAPSHOT_FORMAT_VERSION, key_id, meta.index, meta.term, nonce)
    conf = meta.conf.encode()
    plain = struct.pack(">I", len(conf)) + conf + snap.data
    sealed = cipher_for(key_id).encrypt(nonce, plain, _AAD_DOMAIN + head)
    path = snap_dir / snapshot_name(meta.term, meta.index)
    write_file_atomic(path, head + sealed)
    return path


def snapshot_key_id(path: Path) -> int:
    """The key id a snapshot file is sealed under, from its clear header."""
    with path.open("rb") as f:
        head = f.read(_HEAD.size)
    if len(head) < _HEAD.size or not head.startswith(_MAGIC):
        raise WalCorruptError(path, 0, "not a snapshot file")
    key_id: int = _HEAD.unpack(head)[2]
    return key_id


def read_snapshot(path: Path, cipher_for: CipherFor) -> tuple[Snapshot, int]:
    """(snapshot, key id) from a snapshot file; `WalCorruptError` if it does not open."""
    m = _NAME.match(path.name)
    if not m:
        raise WalCorruptError(path, 0, "not a snapshot file name")
    name_term, name_index = int(m.group(1), 16), int(m.group(2), 16)
    data = path.read_bytes()
    if len(data) < _HEAD.size + TAG_BYTES or not data.startswith(_MAGIC):
        raise WalCorruptError(path, 0, "not a snapshot file, or truncated")
    head = data[: _HEAD.size]
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
        # A view, not a slice: the sealed image can be hundreds of MB, and a copy of it costs
        # a restart as much as the decryption does.
        sealed = memoryview(data)[_HEAD.size :]
        plain = cipher_for(key_id).decrypt(nonce, sealed, _AAD_DOMAIN + head)
    except UnknownKeyError as exc:
        raise WalCorruptError(path, 0, str(exc)) from None
    except InvalidTag:
        raise WalCorruptError(
            path, 0, "authentication failed: the snapshot was altered or sealed under another key"
        ) from None
    try:
        (conf_len,) = struct.unpack_from(">I", plain)
        conf = ConfState.decode(plain[4 : 4 + conf_len])
    except (ValueError, struct.error) as exc:
        raise WalCorruptError(path, 0, f"malformed snapshot contents: {exc}") from None
    return Snapshot(SnapshotMeta(index, term, conf), plain[4 + conf_len :]), key_id
