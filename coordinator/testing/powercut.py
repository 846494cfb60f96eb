"""PowerCut: a real directory whose contents, after a simulated power cut, are only what was
fsynced.

Tests of durable storage read back through the page cache, which keeps every write whether or
not it was ever fsynced: a WAL that forgot its fdatasync passes them all. This kit makes the
forgetting visible without a seam in the product: while a `PowerCut` is active it wraps
`os.fsync` and `os.fdatasync` (the calls every durable write in `coordinator/storage` ends in)
and records, at each successful call under its root, what that call made durable:

- a file's fsync/fdatasync: the file's whole contents at that moment (keyed by inode, so a
  later rename keeps them);
- a directory's fsync: its names at that moment (create, rename and unlink become durable).

`cut()` then rewrites the tree as the worst case a crash allows: a name exists only if its
directory was fsynced with it there; a file holds only what its last fsync covered (nothing,
if it never had one); everything else is gone. Files that existed when the cut was armed
count as durable. Torn writes and reordered sector writes are the simulator's business
(`disk.py`); this layer answers one question, deterministically: did every acknowledged
write ask the kernel to make it durable, names included?

Limits: one process, one thread; an inode reused after a durable unlink is recognised (its
old contents are forgotten when the unlink is recorded), one reused after an unlink never
made durable is not (the storage layer makes every unlink durable).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike


_REAL_FSYNC = os.fsync
_REAL_FDATASYNC = os.fdatasync  # Linux only, as is /proc/self/fd


@dataclass(frozen=True, slots=True)
class _Synced:
    data: bytes
    mode: int


class PowerCut:
    """Use as a context manager around the writes; call `cut` inside it (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._listings: dict[int, dict[str, tuple[int, bool]]] = {}
        """Directory inode -> its names as of its last fsync: name -> (inode, is a directory)."""
        self._contents: dict[int, _Synced] = {}
        """File inode -> its contents as of its last fsync."""
        self._root_ino = 0
        self._armed = False
        self.fsyncs = 0
        """Calls recorded under the root (files and directories)."""

    def __enter__(self) -> PowerCut:
        self._root_ino = os.stat(self.root).st_ino
        for directory, _, files in os.walk(self.root):
            self._record_dir(Path(directory))
            for name in files:
                path = Path(directory) / name
                self._contents[os.stat(path).st_ino] = _Synced(
                    path.read_bytes(), stat.S_IMODE(os.stat(path).st_mode)
                )
        if os.fsync is not _REAL_FSYNC:
            raise RuntimeError("another PowerCut is armed; they do not nest")
        os.fsync = self._fsync
        os.fdatasync = self._fdatasync
        self._armed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._disarm()

    def _disarm(self) -> None:
        if self._armed:
            os.fsync = _REAL_FSYNC
            os.fdatasync = _REAL_FDATASYNC
            self._armed = False

    # --- recording ---------------------------------------------------------------------------

    def _fsync(self, fd: FileDescriptorLike) -> None:
        _REAL_FSYNC(fd)
        self._record(fd if isinstance(fd, int) else fd.fileno())

    def _fdatasync(self, fd: FileDescriptorLike) -> None:
        _REAL_FDATASYNC(fd)
        self._record(fd if isinstance(fd, int) else fd.fileno())

    def _record(self, fd: int) -> None:
        st = os.fstat(fd)
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not path.is_relative_to(self.root) and st.st_ino != self._root_ino:
            return
        self.fsyncs += 1
        if stat.S_ISDIR(st.st_mode):
            self._record_dir(path)
        elif stat.S_ISREG(st.st_mode):
            # Through /proc, so an fd opened write-only (or a file since renamed) still reads.
            reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
            try:
                data = b""
                while chunk := os.read(reader, 1 << 20):
                    data += chunk
            finally:
                os.close(reader)
            self._contents[st.st_ino] = _Synced(data, stat.S_IMODE(st.st_mode))

    def _record_dir(self, path: Path) -> None:
        ino = os.stat(path).st_ino
        names = {e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in os.scandir(path)}
        before = self._listings.get(ino, {})
        self._listings[ino] = names
        still_named = {i for listing in self._listings.values() for i, _ in listing.values()}
        for gone, _ in before.values():
            if gone not in still_named:
                self._contents.pop(gone, None)  # durably unlinked: its inode may be reused

    # --- the cut -----------------------------------------------------------------------------

    def cut(self, release: Callable[[], None] = lambda: None) -> None:
        """Lose power now: stop recording, call `release` (close what the dead process held:
        its fds and flocks; whatever it writes or syncs is lost anyway), and rewrite the tree
        under the root to what was durable at the moment of the cut."""
        self._disarm()
        image = self._image(self._root_ino)
        release()
        for child in list(self.root.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        _write_image(self.root, image)

    def _image(self, dir_ino: int) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, (ino, is_dir) in self._listings.get(dir_ino, {}).items():
            if is_dir:
                out[name] = self._image(ino)
            else:
                out[name] = self._contents.get(ino, _Synced(b"", 0o600))
        return out


def _write_image(directory: Path, image: dict[str, object]) -> None:
    for name, node in image.items():
        path = directory / name
        if isinstance(node, _Synced):
            path.write_bytes(node.data)
            path.chmod(node.mode)
        else:
            assert isinstance(node, dict)
            path.mkdir(mode=0o700)
            _write_image(path, node)
