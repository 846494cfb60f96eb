"""The WAL directory's files outside the records: its lock, and a new segment file."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from coordinator.raft import HardState

from ._fs import fsync_dir, sync_data, write_all
from ._segment import PREAMBLE, RecordType, encode_record, encode_segment_header, segment_name
from .crypto import KeyStore
from .errors import DataDirBusyError

_LOCK_FILE = "LOCK"


def lock_wal_dir(wal_dir: Path) -> int:
    """An exclusive lock on the WAL directory, held for as long as the returned fd is open:
    one writer per data dir, across processes."""
    fd = os.open(wal_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusyError(
            f"{wal_dir} is already open for writing (another member process, or another "
            "DiskWal in this one)"
        ) from None
    return fd


def create_segment(
    directory: Path, seq: int, first_index: int, hs: HardState, keys: KeyStore
) -> tuple[int, int]:
    """Create segment `seq` with its header; returns (fd open for appending, size).

    The empty file's name is made durable before the first sealed record is written: from
    then on `seq` is taken, so its nonces can never be issued again (see `crypto.py`)."""
    path = directory / segment_name(seq, first_index)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        fsync_dir(directory)
        key_id = keys.current_key_id
        header = encode_record(
            keys.cipher(key_id),
            key_id,
            seq=seq,
            counter=0,
            offset=len(PREAMBLE),
            rtype=RecordType.SEGMENT_HEADER,
            index=first_index,
            term=0,
            payload=encode_segment_header(seq, first_index, hs),
        )
        data = PREAMBLE + header
        write_all(fd, data)
        sync_data(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, len(data)
