"""Backup files: a state-machine image, encrypted and checksummed, for disaster recovery.

`concordctl snapshot save` streams a consistent image of the state machine from a member and
writes it here; `concordctl snapshot restore` reads it back into new data directories. The
file must be safe to keep off-site, so it is sealed under a key that is not any member's: a
fresh random *file key* per backup, wrapped under a *backup key* that a person holds
(`CONCORD-BACKUP-...`, 32 random bytes in the unlock keys' checksummed base32, or split into
Shamir shares `CONCORD-BACKUP-SHARE-...`; see `keytext.KeyFormat`). The header stays readable
without the key, so `snapshot status` can say what a file holds.

Layout (big-endian):

    0    "CCBACKUP" | u16 format version
    10   u32 header length L | header (L bytes) | u32 CRC-32 of everything before it
    18+L key block: 12-byte nonce | AES-256-GCM(KEK, file key)            (48 bytes)
    78+L records: u32 length | AES-256-GCM(file key, chunk), repeated

The header: index, term, created time (unix ms), source member, revision, image size, chunk
size, the configuration's voters and learners, the cluster id, how the key was issued (k of
n shares, or 0/0), the KEK salt and a 7-byte nonce prefix. KEK = HKDF-SHA256(backup key,
salt). The image is cut into chunks of `chunk_bytes`; record i is sealed with nonce
prefix | u32 i | u8 final, and the last record (final = 1) holds the SHA-256 of the header
bytes and the whole plaintext image. Everything sealed has the header bytes as associated
data, so:

- a wrong backup key fails the key block (`WrongBackupKeyError`), before any data is read;
- a damaged header fails its CRC first (`BackupCorruptError` at the CRC's offset), so a disk
  fault is never reported as a wrong key; a header altered with its CRC recomputed fails the
  key block and every record;
- a damaged, reordered or dropped chunk fails authentication at its own offset; a file cut
  short lacks the final record; bytes after it are refused: every error names the offset
  and what failed there;
- the SHA-256 is checked last, end to end, over header and image (the server's own digest
  of the image is checked by the CLI before writing).

A file is written to `<name>.tmp`, fsynced, renamed over `<name>`, and the directory fsynced
(`write_backup`); a failed write removes the temporary file and leaves `<name>` untouched.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._fs import TMP_SUFFIX, fsync_dir, write_all
from .crypto import NONCE_BYTES, TAG_BYTES
from .errors import (
    BackupCorruptError,
    BackupError,
    BackupShareError,
    InvalidBackupKeyError,
    WrongBackupKeyError,
)
from .keytext import KEY_BYTES, KeyFormat, format_key, parse_key
from .shamir import combine_key_shares, split_key

BACKUP_FORMAT_VERSION = 1
DEFAULT_CHUNK_BYTES = 1 << 20
MIN_CHUNK_BYTES = 16
MAX_CHUNK_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20

BACKUP_KEY_FORMAT = KeyFormat(
    "CONCORD-BACKUP-",
    b"concord/backup-key/v1",
    "CONCORD-BACKUP-SHARE-",
    b"concord/backup-share/v1",
    "backup key",
    InvalidBackupKeyError,
    BackupShareError,
)

_MAGIC = b"CCBACKUP"
_PREAMBLE = struct.Struct(">8sHI")
"""magic, format version, header length."""
_FIXED = struct.Struct(">QQQQQQI")
"""index, term, created_ms, source member, revision, image bytes, chunk bytes."""
_CRC = struct.Struct(">I")
_LEN = struct.Struct(">I")
_NONCE_PREFIX_BYTES = 7
_SALT_BYTES = 32
_KEY_BLOCK_BYTES = NONCE_BYTES + KEY_BYTES + TAG_BYTES
_DIGEST_BYTES = 32
_HKDF_INFO = b"concord/backup-kek/v1"
_WRAP_AAD = b"concord/backup-key-wrap/v1"
_CHUNK_AAD = b"concord/backup-chunk/v1"


# --- backup keys -------------------------------------------------------------------------------


def new_backup_key() -> str:
    """A fresh random backup key, as text (show it once; it is stored nowhere)."""
    return format_key(BACKUP_KEY_FORMAT, os.urandom(KEY_BYTES))


def parse_backup_key(text: str) -> bytes:
    """The 32 raw bytes of a backup key; `InvalidBackupKeyError` for a malformed one."""
    return parse_key(BACKUP_KEY_FORMAT, text)


def split_backup_key(key: str, k: int, n: int) -> list[str]:
    """`n` Shamir shares of a backup key, any `k` of which rebuild it."""
    return split_key(BACKUP_KEY_FORMAT, key, k, n)


def combine_backup_key_shares(shares: Iterable[str]) -> str:
    """The backup key rebuilt from k shares; `BackupShareError` naming what is wrong."""
    return combine_key_shares(BACKUP_KEY_FORMAT, shares)


# --- the header --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupHeader:
    """What a backup file says about itself, readable without its key."""

    cluster_id: str
    index: int
    """The applied index the image was taken at (its snapshot index)."""
    term: int
    """The term of the entry at `index`."""
    created_ms: int
    """When the file was written: unix time in milliseconds (the writer's wall clock)."""
    source_member: int
    """The member that produced the image."""
    revision: int
    """The KV revision of the image."""
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    image_bytes: int
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    key_shares: tuple[int, int] = (0, 0)
    """(k, n) if the backup key was handed out as k-of-n shares; (0, 0) for a single key."""
    format_version: int = BACKUP_FORMAT_VERSION
    salt: bytes = bytes(_SALT_BYTES)
    nonce_prefix: bytes = bytes(_NONCE_PREFIX_BYTES)

    @property
    def members(self) -> int:
        """Members of the configuration at `index` (voters and learners)."""
        return len(self.voters) + len(self.learners)

    @property
    def chunks(self) -> int:
        """Data records (the final checksum record comes after them)."""
        return -(-self.image_bytes // self.chunk_bytes)

    def encode(self) -> bytes:
        cluster = self.cluster_id.encode("utf-8")
        k, n = self.key_shares
        return b"".join(
            [
                _FIXED.pack(
                    self.index,
                    self.term,
                    self.created_ms,
                    self.source_member,
                    self.revision,
                    self.image_bytes,
                    self.chunk_bytes,
                ),
                _ids(self.voters),
                _ids(self.learners),
                struct.pack(">H", len(cluster)),
                cluster,
                bytes([k, n]),
                self.salt,
                self.nonce_prefix,
            ]
        )


def _ids(ids: Sequence[int]) -> bytes:
    return struct.pack(f">I{len(ids)}Q", len(ids), *ids)


class _HeaderReader:
    """Bounds-checked reads of the header body; errors name the file offset."""

    def __init__(self, path: Path, data: bytes, start: int, end: int) -> None:
        self.path, self.data, self.pos, self.end = path, data, start, end

    def take(self, size: int, what: str) -> bytes:
        if self.pos + size > self.end:
            raise BackupCorruptError(self.path, self.pos, f"header: {what} runs past its end")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def ids(self, what: str) -> tuple[int, ...]:
        (count,) = _LEN.unpack(self.take(_LEN.size, f"the number of {what}"))
        raw = self.take(8 * count, what)
        return struct.unpack(f">{count}Q", raw)


def _parse_header(path: Path, data: bytes) -> tuple[BackupHeader, int]:
    """(header, offset of the key block), with the preamble and CRC checked."""
    if len(data) < _PREAMBLE.size or not data.startswith(_MAGIC):
        raise BackupCorruptError(
            path, 0, "not a Concord backup file (it does not start with CCBACKUP)"
        )
    _, version, length = _PREAMBLE.unpack_from(data)
    if version != BACKUP_FORMAT_VERSION:
        raise BackupError(
            f"{path} is backup format version {version}; this build reads version "
            f"{BACKUP_FORMAT_VERSION}"
        )
    if length > MAX_HEADER_BYTES:
        raise BackupCorruptError(path, 10, f"header length {length} is implausible")
    crc_at = _PREAMBLE.size + length
    if len(data) < crc_at + _CRC.size:
        raise BackupCorruptError(
            path, len(data), f"truncated: the file ends inside its header ({len(data)} bytes)"
        )
    (crc,) = _CRC.unpack_from(data, crc_at)
    if crc != zlib.crc32(data[:crc_at]):
        raise BackupCorruptError(
            path, crc_at, "the header checksum does not match: the header was damaged or altered"
        )
    r = _HeaderReader(path, data, _PREAMBLE.size, crc_at)
    fixed = _FIXED.unpack(r.take(_FIXED.size, "the fixed fields"))
    voters = r.ids("voters")
    learners = r.ids("learners")
    (cluster_len,) = struct.unpack(">H", r.take(2, "the cluster id length"))
    try:
        cluster_id = r.take(cluster_len, "the cluster id").decode("utf-8")
    except UnicodeDecodeError:
        raise BackupCorruptError(path, r.pos, "header: the cluster id is not UTF-8") from None
    k, n = r.take(2, "the key shares")
    salt = r.take(_SALT_BYTES, "the key salt")
    prefix = r.take(_NONCE_PREFIX_BYTES, "the nonce prefix")
    if r.pos != crc_at:
        raise BackupCorruptError(path, r.pos, f"header: {crc_at - r.pos} unexpected bytes")
    index, term, created_ms, source, revision, image_bytes, chunk_bytes = fixed
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise BackupCorruptError(path, _PREAMBLE.size, f"header: chunk size {chunk_bytes}")
    header = BackupHeader(
        cluster_id=cluster_id,
        index=index,
        term=term,
        created_ms=created_ms,
        source_member=source,
        revision=revision,
        voters=voters,
        learners=learners,
        image_bytes=image_bytes,
        chunk_bytes=chunk_bytes,
        key_shares=(k, n),
        format_version=version,
        salt=salt,
        nonce_prefix=prefix,
    )
    return header, crc_at + _CRC.size


def _kek(backup_raw: bytes, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_HKDF_INFO)
    return AESGCM(hkdf.derive(backup_raw))


def _chunk_nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if final else 0)


# --- writing -----------------------------------------------------------------------------------


def encode_backup(
    *,
    image: bytes,
    backup_key: str,
    cluster_id: str,
    index: int,
    term: int,
    created_ms: int,
    source_member: int,
    revision: int,
    voters: Iterable[int],
    learners: Iterable[int] = (),
    key_shares: tuple[int, int] = (0, 0),
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> bytes:
    """The bytes of a backup file holding `image` (see the module docstring)."""
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}")
    backup_raw = parse_backup_key(backup_key)
    header = BackupHeader(
        cluster_id=cluster_id,
        index=index,
        term=term,
        created_ms=created_ms,
        source_member=source_member,
        revision=revision,
        voters=tuple(sorted(voters)),
        learners=tuple(sorted(learners)),
        image_bytes=len(image),
        chunk_bytes=chunk_bytes,
        key_shares=key_shares,
        salt=os.urandom(_SALT_BYTES),
        nonce_prefix=os.urandom(_NONCE_PREFIX_BYTES),
    )
    body = header.encode()
    head = _PREAMBLE.pack(_MAGIC, BACKUP_FORMAT_VERSION, len(body)) + body
    out = bytearray(head)
    out += _CRC.pack(zlib.crc32(head))
    file_key = os.urandom(KEY_BYTES)
    wrap_nonce = os.urandom(NONCE_BYTES)
    kek = _kek(backup_raw, header.salt)
    out += wrap_nonce + kek.encrypt(wrap_nonce, file_key, _WRAP_AAD + head)
    cipher = AESGCM(file_key)
    aad = _CHUNK_AAD + head
    count = header.chunks
    for i in range(count):
        chunk = image[i * chunk_bytes : (i + 1) * chunk_bytes]
        sealed = cipher.encrypt(_chunk_nonce(header.nonce_prefix, i, False), chunk, aad)
        out += _LEN.pack(len(sealed)) + sealed
    digest = hashlib.sha256(head + image).digest()
    sealed = cipher.encrypt(_chunk_nonce(header.nonce_prefix, count, True), digest, aad)
    out += _LEN.pack(len(sealed)) + sealed
    return bytes(out)


def write_backup(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: `<path>.tmp`, fsync, rename, directory fsync. On
    failure the temporary file is removed and `path` is left as it was."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# --- reading -----------------------------------------------------------------------------------


def read_backup_header(path: Path) -> BackupHeader:
    """The header of a backup file, its CRC checked (no key needed; nothing decrypted)."""
    return _parse_header(path, _read(path))[0]


def read_backup(path: Path, backup_key: str) -> tuple[BackupHeader, bytes]:
    """(header, plaintext image) of a backup file, every record authenticated and the
    SHA-256 verified; `WrongBackupKeyError`, `BackupCorruptError` (with the offset) or
    `InvalidBackupKeyError` otherwise."""
    backup_raw = parse_backup_key(backup_key)
    data = _read(path)
    header, at = _parse_header(path, data)
    head = data[: at - _CRC.size]
    if len(data) < at + _KEY_BLOCK_BYTES:
        raise BackupCorruptError(path, len(data), "truncated: the file ends inside its key block")
    wrap_nonce = data[at : at + NONCE_BYTES]
    wrapped = data[at + NONCE_BYTES : at + _KEY_BLOCK_BYTES]
    try:
        file_key = _kek(backup_raw, header.salt).decrypt(wrap_nonce, wrapped, _WRAP_AAD + head)
    except InvalidTag:
        raise WrongBackupKeyError(
            f"the backup key does not open {path}: it is the key of another backup (or the "
            "header was altered and its checksum recomputed)"
        ) from None
    cipher = AESGCM(file_key)
    aad = _CHUNK_AAD + head
    pos = at + _KEY_BLOCK_BYTES
    count = header.chunks
    image = bytearray()
    digest = b""
    for i in range(count + 1):
        final = i == count
        what = "the final checksum record" if final else f"chunk {i + 1} of {count}"
        if pos + _LEN.size > len(data):
            raise BackupCorruptError(
                path, pos, f"truncated: the file ends before {what} ({len(data)} bytes)"
            )
        (length,) = _LEN.unpack_from(data, pos)
        if length > header.chunk_bytes + TAG_BYTES or length < TAG_BYTES:
            raise BackupCorruptError(path, pos, f"{what}: implausible record length {length}")
        if pos + _LEN.size + length > len(data):
            raise BackupCorruptError(
                path, pos, f"truncated: {what} needs {length} bytes, the file ends first"
            )
        sealed = data[pos + _LEN.size : pos + _LEN.size + length]
        try:
            plain = cipher.decrypt(_chunk_nonce(header.nonce_prefix, i, final), sealed, aad)
        except InvalidTag:
            raise BackupCorruptError(
                path, pos, f"{what} fails authentication: the file was damaged or altered here"
            ) from None
        pos += _LEN.size + length
        if final:
            digest = plain
        else:
            image += plain
    if pos != len(data):
        raise BackupCorruptError(
            path, pos, f"{len(data) - pos} unexpected bytes after the final checksum record"
        )
    if len(image) != header.image_bytes:
        raise BackupCorruptError(
            path, pos, f"the image is {len(image)} bytes; the header says {header.image_bytes}"
        )
    if hashlib.sha256(head + image).digest() != digest:
        raise BackupCorruptError(
            path, pos, "the SHA-256 of the header and image does not match the one recorded"
        )
    return header, bytes(image)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BackupError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise BackupError(f"{path} is a directory, not a backup file") from None
    except OSError as err:
        raise BackupError(f"cannot read {path}: {err.strerror}") from None
