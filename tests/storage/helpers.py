"""Shared helpers for the storage tests: building logs, reopening, and reading the raw
record frames of a segment (independently of the WAL's own parser, so tests can aim at
exact byte ranges)."""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from coordinator.raft import ConfState, Entry, EntryKind, HardState, Snapshot
from coordinator.storage import DEFAULT_SEGMENT_BYTES, DiskWal, KeyStore

PREAMBLE_BYTES = 8


def ents(lo: int, hi: int, term: int = 1, tag: bytes = b"e") -> list[Entry]:
    """Entries [lo, hi) with recognisable data."""
    return [Entry(i, term, EntryKind.NORMAL, b"%s-%d" % (tag, i)) for i in range(lo, hi)]


def new_wal(
    data_dir: Path, *, autolock: bool = False, segment_bytes: int = DEFAULT_SEGMENT_BYTES
) -> tuple[KeyStore, DiskWal]:
    keys = KeyStore.create(data_dir, autolock=autolock)
    return keys, DiskWal.create(keys, segment_bytes=segment_bytes)


def reopen(
    data_dir: Path, unlock_key: str | None = None, segment_bytes: int = DEFAULT_SEGMENT_BYTES
) -> DiskWal:
    return DiskWal.open(KeyStore.open(data_dir, unlock_key), segment_bytes=segment_bytes)


@dataclass(frozen=True)
class View:
    """Everything the Raft core can read through LogStorage, for whole-state comparisons."""

    first: int
    last: int
    entries: tuple[Entry, ...]
    snapshot_term: int
    hard_state: HardState
    conf: ConfState
    snapshot: Snapshot


def view(wal: DiskWal) -> View:
    first, last = wal.first_index(), wal.last_index()
    hs, conf = wal.initial_state()
    return View(
        first,
        last,
        tuple(wal.entries(first, last + 1)) if last >= first else (),
        wal.term(first - 1),
        hs,
        conf,
        wal.snapshot(),
    )


def segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "wal").glob("*.wal"))


def frames(path: Path) -> list[tuple[int, int]]:
    """(offset, end) of every record frame in a segment: u32 length, u32 CRC, body."""
    data = path.read_bytes()
    out = []
    offset = PREAMBLE_BYTES
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        end = offset + 8 + length
        if end > len(data):
            break
        out.append((offset, end))
        offset = end
    return out


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]
