"""The few file-system moves durable storage is built from, each with its fsync.

POSIX makes three separate things durable, and forgetting any one loses data on power loss:
a file's bytes (fsync/fdatasync of the file), its size (fdatasync covers the size when it
changed), and its *name* (fsync of the directory that holds it, after create, rename or
unlink). So:

- a file that must appear whole or not at all is written to `<name>.tmp`, fsynced,
  renamed over `<name>`, and then the directory is fsynced (rename is atomic; the directory
  fsync makes the rename itself survive a crash);
- a file that is appended to is fdatasynced after each append; its directory was fsynced
  once, right after the file was created.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"
"""Suffix of a file being written; one found on open is an interrupted write, never data."""


def sync_data(fd: int) -> None:
    """Make a file's bytes and size durable (fdatasync where the platform has it)."""
    fdatasync = getattr(os, "fdatasync", None)
    if fdatasync is not None:
        fdatasync(fd)
    else:  # pragma: no cover - macOS and friends
        os.fsync(fd)


def fsync_dir(path: Path) -> None:
    """Make the names in a directory (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """`os.write` may write less than asked; loop until every byte is handed to the kernel."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_file_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that after a crash it holds either the old or the new
    contents, never a mix: temp file, fsync, rename, fsync of the directory."""
    write_file_atomic_with(path, lambda fd: write_all(fd, data), mode)


def write_file_atomic_with(path: Path, fill: Callable[[int], None], mode: int = 0o600) -> None:
    """`write_file_atomic` of whatever `fill` writes to the file descriptor it is given, for
    contents too large to assemble in memory first. If `fill` raises, `path` is untouched
    and the temp file is left for the next open to remove, as after a crash."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        # A stale temp file keeps its old mode through O_TRUNC; key files must be 0600.
        os.fchmod(fd, mode)
        fill(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_files(paths: list[Path]) -> None:
    """Unlink files and make the removals durable (one directory fsync per directory)."""
    dirs: set[Path] = set()
    for path in paths:
        path.unlink(missing_ok=True)
        dirs.add(path.parent)
    for directory in sorted(dirs):
        fsync_dir(directory)
