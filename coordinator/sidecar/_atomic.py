"""Write a set of files so that readers see the whole old set or the whole new set, never a
mix: the layout kubelet's AtomicWriter gives Secret and ConfigMap volumes, so tools that
already understand those (inotify on `..data`, reloaders) work unchanged.

    DIR/                         one directory per set (one SealedSecret)
      ..2026_12_05_16_40_00.k3j9d/   the current payload: a fresh directory per version
        KEY                          mode 0400 (or as asked), owned by this process's user
      ..data -> ..2026_12_05_16_40_00.k3j9d
      KEY -> ..data/KEY              what the app opens: DIR/KEY

An update (`AtomicDir.write`):

1. if the payload equals what `..data` shows, nothing is done (no swap, no notification);
2. every file is written into a new `..<UTC timestamp>.<random>` directory (fsynced, so a
   crash never leaves a torn file behind a committed `..data`);
3. a `KEY -> ..data/KEY` link is made for each new key: it dangles (DIR/KEY does not exist
   for a reader) until the swap gives `..data` that key;
4. a symlink `..data_tmp` to it is renamed over `..data`: rename(2) replaces a link in one
   step, which is the single moment the whole set changes, new keys and removed ones alike;
5. the link of each key the new set lacks is removed (it already dangled since step 4);
6. every other `..`-directory is removed (the old payload, and any left by a crash).

A reader opening DIR/KEY gets one version of that file, whole (a file is never written in
place). A reader that needs several files of one version reads them under one payload: it
resolves `..data` (readlink), reads DIR/<target>/KEY..., and resolves `..data` again; if it
still names the same payload, the files are one version, since a payload is removed only
after `..data` has left it. Otherwise (or on ENOENT) it reads again. Reading DIR/KEY1 then
DIR/KEY2 without that check can straddle a swap (tests/sidecar/test_atomic.py hammers both
ways of reading during hundreds of swaps).

Keys must be plain file names (as Kubernetes Secret keys are: `[-._a-zA-Z0-9]+`); a key that
starts with `..` would collide with the writer's own entries and is refused.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

DATA = "..data"
DATA_TMP = "..data_tmp"
KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
DIR_MODE = 0o750


def valid_key(key: str) -> bool:
    """Whether `key` can be a file of the set (a Kubernetes Secret key, not `..`-reserved)."""
    return bool(KEY_RE.match(key)) and not key.startswith("..") and key != "."


class AtomicDir:
    """The set of files in `path` (created if missing), replaced as a whole by `write`.
    Not thread-safe: one writer per directory (the sidecar has one per SealedSecret)."""

    def __init__(self, path: Path, *, file_mode: int = 0o400) -> None:
        self.path = path
        self.file_mode = file_mode

    def current(self) -> dict[str, bytes] | None:
        """The payload `..data` shows now, or None if there is none yet."""
        target = self._target()
        if target is None:
            return None
        out: dict[str, bytes] = {}
        for entry in sorted((self.path / target).iterdir()):
            out[entry.name] = entry.read_bytes()
        return out

    def write(self, payload: Mapping[str, bytes]) -> bool:
        """Make `payload` the set (see the module doc). False if it already was (nothing
        changed on disk). ValueError for a key that cannot be a file name."""
        for key in payload:
            if not valid_key(key):
                raise ValueError(f"{key!r} cannot be a secret file's name")
        self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        old_target = self._target()
        old_keys = set(self._visible_links())
        if old_target is not None and self.current() == dict(payload):
            return False
        new_dir = Path(tempfile.mkdtemp(prefix=_stamp(), dir=self.path))
        made: list[Path] = []
        tmp = self.path / DATA_TMP
        try:
            new_dir.chmod(DIR_MODE)
            for key, value in payload.items():
                self._write_file(new_dir / key, value)
            _fsync_dir(new_dir)
            for key in payload:
                link = self.path / key
                if not link.is_symlink():
                    os.symlink(f"{DATA}/{key}", link)
                    made.append(link)
            tmp.unlink(missing_ok=True)
            os.symlink(new_dir.name, tmp)
            os.rename(tmp, self.path / DATA)  # the swap: one rename(2)
        except BaseException:
            for link in [*made, tmp]:
                link.unlink(missing_ok=True)
            shutil.rmtree(new_dir, ignore_errors=True)
            raise
        _fsync_dir(self.path)
        for key in old_keys - set(payload):
            (self.path / key).unlink(missing_ok=True)
        self._remove_stale(keep=new_dir.name)
        return True

    # --- internals -----------------------------------------------------------------------------

    def _target(self) -> str | None:
        try:
            target = os.readlink(self.path / DATA)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return target if (self.path / target).is_dir() else None

    def _visible_links(self) -> list[str]:
        """The user-visible `KEY -> ..data/KEY` links now present."""
        if not self.path.is_dir():
            return []
        return [
            e.name for e in self.path.iterdir() if not e.name.startswith("..") and e.is_symlink()
        ]

    def _write_file(self, path: Path, value: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        try:
            os.fchmod(fd, self.file_mode)  # exactly the mode asked, whatever the umask
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove_stale(self, keep: str) -> None:
        # Files may be 0400 and the directories ours: removing them needs only write
        # permission on the directory, which the writer has.
        for entry in self.path.iterdir():
            stale = entry.name.startswith("..") and entry.name not in {keep, DATA, DATA_TMP}
            if stale and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


def _stamp() -> str:
    """`..YYYY_MM_DD_HH_MM_SS.` in UTC; mkdtemp adds a random suffix (two writes within one
    second never collide), as kubelet's writer does."""
    return dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
