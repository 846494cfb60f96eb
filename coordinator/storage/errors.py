"""What can go wrong with a member's data directory, as exceptions an operator can act on.

Every message names the file involved and, where there is one, what to do next. Two
families matter most and are kept apart on purpose:

- *key* problems (`KeyStoreError`): the directory is fine but we cannot read it yet, or the
  key files themselves are damaged. A locked member is the normal state after a restart
  with autolock, not a failure;
- *log* problems (`WalCorruptError`): a record that was once acknowledged no longer reads
  back. The WAL refuses to open rather than guess, because dropping a committed entry
  silently is the one thing a Raft member must never do. (A torn tail, the unacknowledged
  end of an interrupted write, is not an error: recovery cuts it and says so.)
"""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Base class of every error raised by `coordinator.storage`."""


class NotInitializedError(StorageError):
    """The data directory (or its WAL) does not exist yet."""


class AlreadyInitializedError(StorageError):
    """Refusing to create over an existing data directory or WAL."""


class FormatVersionError(StorageError):
    """The data directory, or one of its files, was written by another format version."""


class DataDirBusyError(StorageError):
    """Another process holds the data dir's lock (or another writer the WAL's): two writers
    would interleave records."""


class KeyStoreError(StorageError):
    """The key ring cannot be used as asked."""


class LockedError(KeyStoreError):
    """Autolock is on and no unlock key was given: the member must be unlocked first."""


class WrongUnlockKeyError(KeyStoreError):
    """A well-formed unlock key that does not open this member's key ring."""


class InvalidUnlockKeyError(KeyStoreError, ValueError):
    """Text that is not an unlock key (a typo caught by its checksum, a truncated paste)."""


class ShareError(KeyStoreError, ValueError):
    """Unlock-key shares that are mistyped, too few, or do not belong together."""


class KeyFileCorruptError(KeyStoreError):
    """A key file is missing, truncated or damaged."""


class UnknownKeyError(KeyStoreError, LookupError):
    """A record names a data key that is not (or no longer) in the key ring."""


class WalError(StorageError):
    """The WAL cannot be used: closed, or a write/fsync failed (the member must stop)."""


class WalCorruptError(WalError):
    """A record or snapshot that should be intact is not; the WAL refuses to open."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"{path}: corrupt at offset {offset}: {reason}. Refusing to open: a committed "
            "entry may be damaged. Inspect it with `concordctl rafttool dump`, then rebuild "
            "this member from its peers."
        )


class BackupError(StorageError):
    """A backup file (`concordctl snapshot save`) cannot be written or read as asked."""


class InvalidBackupKeyError(BackupError, ValueError):
    """Text that is not a backup key (a typo caught by its checksum, a truncated paste)."""


class BackupShareError(BackupError, ValueError):
    """Backup-key shares that are mistyped, too few, or do not belong together."""


class WrongBackupKeyError(BackupError):
    """A well-formed backup key that does not open this backup file."""


class BackupCorruptError(BackupError):
    """A backup file that does not read back: truncated, damaged or altered."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: damaged at offset {offset}: {reason}")
