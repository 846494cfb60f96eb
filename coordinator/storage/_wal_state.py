"""What the WAL's writer and its recovery share: the directory names, the metrics, the
recovery report, and each segment's bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SEGMENT_BYTES = 64 << 20
WAL_DIR = "wal"
SNAP_DIR = "snap"


@dataclass(slots=True)
class WalMetrics:
    """Plain counters for the runtime to export (no metrics library is imported here)."""

    saves: int = 0
    fsyncs: int = 0
    """Every data fsync, including segment headers and snapshot marks."""
    fsync_last_s: float = 0.0
    """Duration of the most recent fsync, measured with `time.perf_counter`."""
    fsync_total_s: float = 0.0
    bytes_written: int = 0
    entries_written: int = 0
    segments_created: int = 0
    segments_deleted: int = 0
    snapshots_written: int = 0
    recovery_records: int = 0
    """Records the last `open` read and checked for framing (length, CRC, nonce order)."""
    recovery_decrypted: int = 0
    """Of those, how many it authenticated and decrypted (see "Recovery" above)."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What `open` cut from the tail of the last segment (a torn, unacknowledged write)."""

    path: Path
    offset: int
    cut_bytes: int
    reason: str


@dataclass(slots=True)
class _Segment:
    path: Path
    seq: int
    first_index: int
    live_max_index: int = 0
    """Highest index of an entry in this segment that no later record has discarded (0: none).
    Invariant: a segment whose live_max_index <= the compaction point holds nothing replay
    still needs above it."""
    key_ids: set[int] = field(default_factory=set)
    header_only: bool = True
