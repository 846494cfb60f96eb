"""WAL segment files: the record frame, sealing, and the scan that tells torn from corrupt.

A segment file is an 8-byte preamble (`CCWAL\\0` + u16 format version) followed by records:

    u32 length | u32 CRC-32 of the body | body
    body = u8 type | u32 key id | u64 index | u64 term | 12-byte nonce | AES-GCM(payload)

The first record is always a SEGMENT_HEADER. The clear part of the body is authenticated as
associated data together with the segment's sequence number and the record's byte offset,
so a record is valid in exactly one place: copied to another index, file or offset (or
altered and given a fresh CRC) it fails authentication.

The CRC is there to classify damage, not for security: a write interrupted by a crash
leaves a short or garbled record at the very end of the last segment (a *torn* tail; that
write was never acknowledged, because `save` returns only after fsync). A record whose CRC
is good but which fails authentication was written whole and later changed, so it is never
treated as torn. The rules:

- bad framing or CRC at the tail of the last segment, with no valid record after it: torn,
  the caller cuts it;
- bad framing or CRC anywhere else (a valid record follows, or the segment is not the last):
  corruption, `WalCorruptError` with the file and offset;
- good CRC but failed authentication, unknown key, wrong nonce or misplaced header:
  corruption, wherever it is.

Looking for "a valid record after the bad one" is cheap: every record's nonce starts with
the segment's sequence number at a fixed offset, so candidates are found with `bytes.find`.
"""

from __future__ import annotations

import enum
import itertools
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coordinator.raft import HardState

from .crypto import TAG_BYTES, wal_nonce
from .errors import FormatVersionError, UnknownKeyError, WalCorruptError

SEGMENT_FORMAT_VERSION = 1
_MAGIC = b"CCWAL\x00"
PREAMBLE = _MAGIC + struct.pack(">H", SEGMENT_FORMAT_VERSION)
_FRAME = struct.Struct(">II")
_HEAD = struct.Struct(">BIQQ12s")
_NONCE_AT = _FRAME.size + 1 + 4 + 8 + 8
"""Offset of the nonce within a record, from the start of its frame."""
MIN_BODY_BYTES = _HEAD.size + TAG_BYTES
MAX_BODY_BYTES = 1 << 30
RECORD_OVERHEAD_BYTES = _FRAME.size + _HEAD.size + TAG_BYTES
_AAD_DOMAIN = b"concord/wal-record/v1"
_POSITION = struct.Struct(">QQ")
_SEGMENT_HEADER = struct.Struct(">QQQQQ")
"""seq, first index, then the hard state in force when the segment was opened."""
HARD_STATE = struct.Struct(">QQQ")

_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")

CipherFor = Callable[[int], AESGCM]
"""Key id -> AES-GCM; raises `UnknownKeyError` for a key the ring does not hold."""


class RecordType(enum.IntEnum):
    SEGMENT_HEADER = 1
    """First record of every segment: its seq and first index, and the hard state then."""
    ENTRY = 2
    """One log entry; an index at or below the current last index truncates from there."""
    HARD_STATE = 3
    """Term, vote and commit."""
    SNAPSHOT_MARK = 4
    """A snapshot file at (index, term) was written; with the reset flag the log was
    replaced by it (an incoming InstallSnapshot)."""


MARK_RESET = 1


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


def list_segments(wal_dir: Path) -> list[tuple[int, int, Path]]:
    """(seq, first index, path) of every segment file, oldest first."""
    found = []
    for path in wal_dir.iterdir():
        m = _NAME.match(path.name)
        if m:
            found.append((int(m.group(1), 16), int(m.group(2), 16), path))
    found.sort()
    for (seq_a, _, path_a), (seq_b, _, _) in itertools.pairwise(found):
        if seq_a == seq_b:
            raise WalCorruptError(path_a, 0, f"two segment files share sequence number {seq_a}")
    return found


def _aad(seq: int, offset: int, head: bytes) -> bytes:
    return _AAD_DOMAIN + _POSITION.pack(seq, offset) + head


def encode_record(
    cipher: AESGCM,
    key_id: int,
    *,
    seq: int,
    counter: int,
    offset: int,
    rtype: RecordType,
    index: int,
    term: int,
    payload: bytes,
) -> bytes:
    """One framed, sealed record, to be written at byte `offset` of segment `seq` as its
    `counter`-th record (which fixes the nonce)."""
    nonce = wal_nonce(seq, counter)
    head = _HEAD.pack(rtype, key_id, index, term, nonce)
    body = head + cipher.encrypt(nonce, payload, _aad(seq, offset, head))
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"record of {len(body)} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_segment_header(seq: int, first_index: int, hs: HardState) -> bytes:
    return _SEGMENT_HEADER.pack(seq, first_index, hs.term, hs.vote, hs.commit)


def decode_segment_header(payload: bytes) -> tuple[int, int, HardState]:
    seq, first_index, term, vote, commit = _SEGMENT_HEADER.unpack(payload)
    return seq, first_index, HardState(term, vote, commit)


@dataclass(frozen=True, slots=True)
class Record:
    """A record that passed its CRC and authentication; `payload` is the plaintext."""

    offset: int
    size_bytes: int
    type: RecordType
    key_id: int
    index: int
    term: int
    nonce: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class SegmentScan:
    path: Path
    seq: int
    first_index: int
    records: list[Record]
    valid_bytes: int
    """Length of the intact prefix; everything after it is a torn tail."""
    size_bytes: int
    torn_reason: str | None
    """Why the bytes after `valid_bytes` are a torn tail (None: no torn tail)."""
    corruption: WalCorruptError | None = None
    """Damage at `valid_bytes` that is not a torn tail (only from `scan_segment_partially`)."""

    @property
    def has_header(self) -> bool:
        return bool(self.records)


@dataclass(frozen=True, slots=True)
class _Bad:
    reason: str
    checksum_ok: bool
    """The frame and CRC were fine: this is no torn write but a changed record."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A record whose frame and CRC are intact and whose clear fields are plausible, but which
    is not authenticated yet: anyone who can write the file chooses every field here (and
    a fresh CRC), so nothing may rely on them before `open_frame` has checked the seal."""

    offset: int
    size_bytes: int
    type: RecordType
    key_id: int
    index: int
    term: int
    nonce: bytes


def _frame_at(data: bytes, offset: int) -> Frame | _Bad:
    remaining = len(data) - offset
    if remaining < _FRAME.size:
        return _Bad(f"a {remaining}-byte fragment of a record frame", False)
    length, crc = _FRAME.unpack_from(data, offset)
    if not MIN_BODY_BYTES <= length <= MAX_BODY_BYTES:
        return _Bad(f"implausible record length {length}", False)
    end = offset + _FRAME.size + length
    if end > len(data):
        return _Bad(f"record declares {length} bytes but only {remaining - 8} follow", False)
    if zlib.crc32(memoryview(data)[offset + _FRAME.size : end]) != crc:
        return _Bad("checksum mismatch", False)
    raw_type, key_id, index, term, nonce = _HEAD.unpack_from(data, offset + _FRAME.size)
    try:
        rtype = RecordType(raw_type)
    except ValueError:
        return _Bad(f"unknown record type {raw_type}", True)
    return Frame(offset, end - offset, rtype, key_id, index, term, nonce)


def _open_at(data: bytes, frame: Frame, seq: int, cipher_for: CipherFor) -> Record | _Bad:
    try:
        cipher = cipher_for(frame.key_id)
    except UnknownKeyError as exc:
        return _Bad(str(exc), True)
    start = frame.offset + _FRAME.size
    head = data[start : start + _HEAD.size]
    sealed = memoryview(data)[start + _HEAD.size : frame.offset + frame.size_bytes]
    try:
        payload = cipher.decrypt(frame.nonce, sealed, _aad(seq, frame.offset, head))
    except InvalidTag:
        return _Bad(
            "authentication failed: the record was altered, moved from another index, file "
            "or offset, or sealed under another key",
            True,
        )
    f = frame
    return Record(f.offset, f.size_bytes, f.type, f.key_id, f.index, f.term, f.nonce, payload)


def _parse_at(data: bytes, offset: int, seq: int, cipher_for: CipherFor) -> Record | _Bad:
    frame = _frame_at(data, offset)
    return frame if isinstance(frame, _Bad) else _open_at(data, frame, seq, cipher_for)


def record_frames(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every whole record frame of a segment file's bytes, in order, read
    from the frames' lengths alone: no CRC or authentication is checked, and a short frame at
    the end is left out. For tools that aim at exact byte ranges (fault injection, tests);
    recovery reads through `scan_segment`."""
    out: list[tuple[int, int]] = []
    offset = len(PREAMBLE)
    while offset + _FRAME.size <= len(data):
        length, _ = _FRAME.unpack_from(data, offset)
        size = _FRAME.size + length
        if offset + size > len(data):
            break
        out.append((offset, size))
        offset += size
    return out


def _valid_record_after(data: bytes, start: int, seq: int, cipher_for: CipherFor) -> int | None:
    """Offset of the first record after `start` that authenticates in place, if any."""
    prefix = struct.pack(">I", seq)
    pos = data.find(prefix, start + 1 + _NONCE_AT)
    while pos != -1:
        candidate = pos - _NONCE_AT
        if isinstance(_parse_at(data, candidate, seq, cipher_for), Record):
            return candidate
        pos = data.find(prefix, pos + 1)
    return None


@dataclass(frozen=True, slots=True)
class FramedSegment:
    """One segment read and checked for framing (every record's length and CRC, the nonce
    ordinals, the header's position), none of it authenticated yet but the fallback search
    that tells a torn tail from damage (see the module docstring). `open_frame` authenticates
    a frame; the WAL's recovery decides which ones it needs to."""

    path: Path
    seq: int
    first_index: int
    data: bytes
    frames: list[Frame]
    valid_bytes: int
    """Length of the well-framed prefix; with `torn_reason`, everything after it is torn."""
    size_bytes: int
    torn_reason: str | None
    corruption: WalCorruptError | None
    """Framing damage at `valid_bytes` that is not a torn tail."""

    @property
    def has_header(self) -> bool:
        return bool(self.frames)


def frame_segment(
    path: Path, seq: int, first_index: int, cipher_for: CipherFor, *, final: bool
) -> FramedSegment:
    """Read one segment and check its framing; raises only `FormatVersionError`. A frame-level
    fault (bad length or CRC) is classified torn or corrupt exactly as in `scan_segment`;
    corruption is returned, with the frames before it, in `corruption`."""
    data = path.read_bytes()
    frames: list[Frame] = []
    bad: _Bad
    bad_at = 0
    if len(data) >= len(PREAMBLE) and data.startswith(_MAGIC) and data[:8] != PREAMBLE:
        (version,) = struct.unpack_from(">H", data, len(_MAGIC))
        raise FormatVersionError(
            f"{path} has WAL segment format version {version}; this build reads version "
            f"{SEGMENT_FORMAT_VERSION}"
        )

    def result(valid_bytes: int, torn: str | None, corrupt: str | None = None) -> FramedSegment:
        error = None if corrupt is None else WalCorruptError(path, valid_bytes, corrupt)
        return FramedSegment(
            path, seq, first_index, data, frames, valid_bytes, len(data), torn, error
        )

    if data[: len(PREAMBLE)] != PREAMBLE:
        bad = _Bad("missing or damaged segment preamble", False)
    else:
        offset = len(PREAMBLE)
        while True:
            if offset == len(data):
                return result(offset, None)
            parsed = _frame_at(data, offset)
            if isinstance(parsed, _Bad):
                bad, bad_at = parsed, offset
                break
            misplaced = _misplacement(parsed, seq, len(frames))
            if misplaced is not None:
                # A record moved here from elsewhere fails its seal too; say that, the cause.
                opened = _open_at(data, parsed, seq, cipher_for)
                return result(
                    offset, None, opened.reason if isinstance(opened, _Bad) else misplaced
                )
            frames.append(parsed)
            offset += parsed.size_bytes
    if bad.checksum_ok:
        return result(bad_at, None, bad.reason)
    if not final:
        return result(bad_at, None, f"{bad.reason}, in a segment that is not the last")
    later = _valid_record_after(data, bad_at, seq, cipher_for)
    if later is not None:
        reason = f"{bad.reason}, yet an intact record follows at offset {later}"
        return result(bad_at, None, reason)
    return result(bad_at, bad.reason)


def open_frame(segment: FramedSegment, frame: Frame, cipher_for: CipherFor) -> Record:
    """Authenticate and decrypt one frame of `segment`; `WalCorruptError` if it does not open
    in place (altered, moved, unknown key) or, for the header, disagrees with the file name.
    A frame whose CRC was good but whose seal is not was written whole and changed later, so
    this is never a torn write."""
    opened = _open_at(segment.data, frame, segment.seq, cipher_for)
    if isinstance(opened, _Bad):
        raise WalCorruptError(segment.path, frame.offset, opened.reason)
    if opened.type is RecordType.SEGMENT_HEADER:
        header_seq, header_first, _ = decode_segment_header(opened.payload)
        if (header_seq, header_first) != (segment.seq, segment.first_index):
            raise WalCorruptError(
                segment.path,
                frame.offset,
                f"header says segment {header_seq} from index {header_first}, but the file "
                f"is named for segment {segment.seq} from index {segment.first_index}",
            )
    return opened


def scan_segment(
    path: Path, seq: int, first_index: int, cipher_for: CipherFor, *, final: bool
) -> SegmentScan:
    """Read and check every record of one segment (see the module docstring for the rules).
    Returns the intact records and any torn tail; raises `WalCorruptError` (after which the
    caller must not use the segment) or `FormatVersionError`."""
    scan = scan_segment_partially(path, seq, first_index, cipher_for, final=final)
    if scan.corruption is not None:
        raise scan.corruption
    return scan


def scan_segment_partially(
    path: Path, seq: int, first_index: int, cipher_for: CipherFor, *, final: bool
) -> SegmentScan:
    """As `scan_segment`, but corruption is returned in `corruption` together with the
    intact records before it, for tools that show how far a damaged log reads back."""
    framed = frame_segment(path, seq, first_index, cipher_for, final=final)
    records: list[Record] = []
    for frame in framed.frames:
        try:
            records.append(open_frame(framed, frame, cipher_for))
        except WalCorruptError as exc:
            return SegmentScan(
                path, seq, first_index, records, frame.offset, framed.size_bytes, None, exc
            )
    return SegmentScan(
        path,
        seq,
        first_index,
        records,
        framed.valid_bytes,
        framed.size_bytes,
        framed.torn_reason,
        framed.corruption,
    )


def _misplacement(frame: Frame, seq: int, ordinal: int) -> str | None:
    """The writer's own invariants, re-checked on read: nonces count records from 0, and
    exactly the first record is a header (`open_frame` checks it agrees with the file name).
    These are clear fields: a check here catches accidents, not an attacker."""
    if wal_nonce(seq, ordinal) != frame.nonce:
        return f"record {ordinal} carries an unexpected nonce"
    if (frame.type is RecordType.SEGMENT_HEADER) != (ordinal == 0):
        return f"{frame.type.name} record in position {ordinal} of the segment"
    return None
