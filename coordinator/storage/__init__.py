"""Concord's durable storage: an encrypted, segmented write-ahead log and snapshots on disk.

A member's data directory holds

    FORMAT          data-dir format version
    keys/           dek.ring (the data keys, wrapped under the KEK) and, without autolock, kek
    wal/            segments of checksummed, AES-GCM-sealed records; LOCK
    snap/           the newest two sealed snapshots
    LOCK            flock held by the member process for its whole life (`datadir.py`)
    CLUSTER_ID      the cluster the dir belongs to; a start with another --cluster-id is refused

`KeyStore` opens the keys (`crypto.py`: DEKs, KEK, autolock; unlock keys as text in
`keytext.py`, their Shamir shares in `shamir.py`); `DiskWal` is the log (`wal.py`, its
recovery in `_wal_recovery.py`): the runtime passes one object both as the Raft
core's `LogStorage` and as `handle_ready`'s `Wal`. `dump` (`rafttool.py`) reads a data dir
record by record for `concordctl rafttool dump`, and `log_position` says how far its log
reaches (`concordctl cluster recover`). `backup.py` is the format of the encrypted backup
files of `concordctl snapshot save` and `restore`.

This package depends on the Raft core's vocabulary only; it never imports the runtime.
"""

from ._segment import RecordType as RecordType
from ._segment import record_frames as record_frames
from ._wal_state import DEFAULT_SEGMENT_BYTES as DEFAULT_SEGMENT_BYTES
from ._wal_state import RecoveryReport as RecoveryReport
from ._wal_state import WalMetrics as WalMetrics
from .crypto import KeyStore as KeyStore
from .datadir import DataDirLock as DataDirLock
from .datadir import read_cluster_id as read_cluster_id
from .datadir import write_cluster_id as write_cluster_id
from .errors import AlreadyInitializedError as AlreadyInitializedError
from .errors import BackupCorruptError as BackupCorruptError
from .errors import BackupError as BackupError
from .errors import BackupShareError as BackupShareError
from .errors import DataDirBusyError as DataDirBusyError
from .errors import FormatVersionError as FormatVersionError
from .errors import InvalidBackupKeyError as InvalidBackupKeyError
from .errors import InvalidUnlockKeyError as InvalidUnlockKeyError
from .errors import KeyFileCorruptError as KeyFileCorruptError
from .errors import KeyStoreError as KeyStoreError
from .errors import LockedError as LockedError
from .errors import NotInitializedError as NotInitializedError
from .errors import ShareError as ShareError
from .errors import StorageError as StorageError
from .errors import UnknownKeyError as UnknownKeyError
from .errors import WalCorruptError as WalCorruptError
from .errors import WalError as WalError
from .errors import WrongBackupKeyError as WrongBackupKeyError
from .errors import WrongUnlockKeyError as WrongUnlockKeyError
from .keytext import format_unlock_key as format_unlock_key
from .keytext import parse_unlock_key as parse_unlock_key
from .rafttool import DumpRecord as DumpRecord
from .rafttool import LogPosition as LogPosition
from .rafttool import dump as dump
from .rafttool import log_position as log_position
from .shamir import combine_unlock_key_share_sets as combine_unlock_key_share_sets
from .shamir import combine_unlock_key_shares as combine_unlock_key_shares
from .shamir import split_unlock_key as split_unlock_key
from .wal import DiskWal as DiskWal

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "AlreadyInitializedError",
    "BackupCorruptError",
    "BackupError",
    "BackupShareError",
    "DataDirBusyError",
    "DataDirLock",
    "DiskWal",
    "DumpRecord",
    "FormatVersionError",
    "InvalidBackupKeyError",
    "InvalidUnlockKeyError",
    "KeyFileCorruptError",
    "KeyStore",
    "KeyStoreError",
    "LockedError",
    "LogPosition",
    "NotInitializedError",
    "RecordType",
    "RecoveryReport",
    "ShareError",
    "StorageError",
    "UnknownKeyError",
    "WalCorruptError",
    "WalError",
    "WalMetrics",
    "WrongBackupKeyError",
    "WrongUnlockKeyError",
    "combine_unlock_key_share_sets",
    "combine_unlock_key_shares",
    "dump",
    "format_unlock_key",
    "log_position",
    "parse_unlock_key",
    "read_cluster_id",
    "record_frames",
    "split_unlock_key",
    "write_cluster_id",
]
