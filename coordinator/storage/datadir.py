"""Who a data directory belongs to: the process that runs it (`LOCK`) and the cluster it is a
member of (`CLUSTER_ID`).

**The process lock**: one member process per data dir, for its whole life.

The WAL has its own lock (`wal/LOCK`), but it is taken only once the keys are open, which for
an autolocked member means after someone has unlocked it. Two processes started on one dir
would then both sit "locked", and whichever got the unlock key first would win while the other
kept answering Unlock as if it were the member. So the member process takes this lock first,
before it listens anywhere, reads a key or writes a byte: a second process is refused at once,
with the holder's pid.

`<data dir>/LOCK` is locked with `flock(LOCK_EX | LOCK_NB)`; the kernel drops the lock when
the process ends however it ends (kill -9 included), so a stale LOCK file never blocks a
restart. The file holds the holder's pid, for the message only: it is never trusted to decide
anything, and never deleted (unlinking a lock file races with the next process opening it).

**The cluster id.** A member started with another `--cluster-id` than the one its data was
written under would speak for a cluster it never belonged to (peers of the right cluster
refuse it, and the wrong cluster's peers would take its log for theirs). The id is recorded
once, in `CLUSTER_ID`, when the data dir is first opened, and every later start compares
before anything else is done.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ._fs import write_file_atomic
from .errors import DataDirBusyError, StorageError

LOCK_FILE = "LOCK"
CLUSTER_ID_FILE = "CLUSTER_ID"


class DataDirLock:
    """An exclusive lock on a data directory, held until `release` (or the process ends)."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd = fd

    @classmethod
    def acquire(cls, data_dir: str | os.PathLike[str]) -> DataDirLock:
        """Lock `data_dir` (created, with its parents, if it does not exist yet), or raise
        `DataDirBusyError` naming the directory and the holder's pid if another process holds
        it. OSError if the directory cannot be created or the file opened."""
        path = Path(data_dir)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise DataDirBusyError(
                f"data dir {path} is in use by {who} (it holds {path / LOCK_FILE}): one member "
                "process per data dir. Stop that process first, or give this one its own "
                "--data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Informational only (see the module docstring); not fsynced: a crash ends the lock too.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Unlock (idempotent). The file stays: see the module docstring."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _holder(fd: int) -> int:
    """The pid the holder wrote into the lock file, or 0 if unknown."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def read_cluster_id(data_dir: str | os.PathLike[str]) -> str | None:
    """The cluster id recorded in `data_dir`, or None if none is (a new dir, or one written
    before the id was recorded). StorageError if the file cannot be read or is empty."""
    path = Path(data_dir) / CLUSTER_ID_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise StorageError(f"cannot read {path}: {err}") from None
    if not text:
        raise StorageError(f"{path} is empty: it should name the cluster this data dir is in")
    return text


def write_cluster_id(data_dir: str | os.PathLike[str], cluster_id: str) -> None:
    """Record `cluster_id` in `data_dir` (atomically, durably)."""
    write_file_atomic(Path(data_dir) / CLUSTER_ID_FILE, f"{cluster_id}\n".encode(), 0o644)
