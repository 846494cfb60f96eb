"""Encryption at rest: AES-256-GCM data keys, a wrapped key ring, autolock and unlock keys.

The model is Docker Swarm's, tightened where Swarm is loose.

**Data keys (DEKs).** Every WAL record and every snapshot is sealed with AES-256-GCM under a
32-byte random DEK. Each sealed object carries its DEK's key id (u32) in the clear, so the
ring can hold several DEKs: after `rotate_dek` new records use the new key while old ones
stay readable, and `drop_keys_older_than` forgets a retired key once snapshots and
compaction have removed everything sealed under it. The associated data of every seal binds
what the object is and where it lives (record type, index, term, key id, and for WAL records
the segment and byte offset), so a record copied to another index, another file or another
position fails authentication instead of being replayed.

**Nonces never repeat under one key.** A nonce is 12 bytes: a 4-byte prefix and an 8-byte
counter.

- WAL records: prefix = the segment's sequence number (< 2**31, top bit clear), counter = the
  record's ordinal within that segment. A segment is written only by the process that
  created it and is never appended to after that process stops (every open starts a new
  segment). A new segment takes 1 + the highest sequence number present, its name is made
  durable (directory fsync) before its first sealed record is written, and the newest
  segment is never deleted, so no sequence number is handed out twice within one WAL. A new
  WAL always starts under a freshly generated DEK (`DiskWal.create` rotates it), so even a
  hand-deleted `wal/` cannot restart the numbering under a key that already sealed
  something. (A purely random 4-byte prefix per open, the obvious alternative, collides by
  the birthday bound after about 2**16 restarts: unlikely, but not "never".)
- Snapshots: prefix top bit set, the other 95 bits random. The top bit keeps them disjoint
  from WAL nonces, and a collision among snapshots (a few per hour at most) needs on the
  order of 2**47 of them.
- The key ring is wrapped under the KEK with a random 96-bit nonce; it is rewrapped a
  handful of times in a member's life.

**Key encryption key (KEK).** The ring lives in `keys/dek.ring`, sealed under a KEK. Without
autolock the KEK sits beside it in `keys/kek` (mode 0600), exactly as Swarm does: the
encryption then protects a copied WAL or snapshot, not a stolen disk. With autolock the KEK
is derived (HKDF-SHA256, stored random salt) from a 32-byte unlock key that never touches
disk; a restarted member can read nothing until `concordctl unlock` supplies it. A wrong
key fails the ring's authentication and is reported as `WrongUnlockKeyError`; a damaged
ring file is caught first by its CRC and reported as `KeyFileCorruptError`, so an operator
is never told "wrong key" about a disk fault.

**Unlock keys for people.** `CONCORD-UNLOCK-` + base32 of the key and a 4-byte SHA-256
checksum, so a mistyped key is rejected before any decryption is attempted. For custody by
several people the key can be split k-of-n with Shamir's scheme over GF(256), byte by byte;
each share is a string carrying its index, the threshold k, a split id and its own
checksum. The shared secret includes the key's checksum, so `combine` can also tell when
k well-formed shares still do not belong together. The text form is in `keytext.py`, the
splitting in `shamir.py`; this module holds the nonces, the data directory's format marker
and the key ring (`KeyStore`).

Every key file is replaced atomically (temp, fsync, rename, directory fsync). This module
is not thread-safe: one owner (the member's runtime, or a CLI command) uses a `KeyStore`.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._fs import TMP_SUFFIX, fsync_dir, remove_files, write_file_atomic
from .errors import (
    AlreadyInitializedError,
    FormatVersionError,
    KeyFileCorruptError,
    KeyStoreError,
    LockedError,
    NotInitializedError,
    UnknownKeyError,
    WrongUnlockKeyError,
)
from .keytext import KEY_BYTES, format_unlock_key, parse_unlock_key

_log = logging.getLogger(__name__)

NONCE_BYTES = 12
TAG_BYTES = 16
_WAL_SEQ_LIMIT = 1 << 31
"""WAL nonce prefixes are segment sequence numbers below this; the top bit marks snapshots."""

DATA_DIR_FORMAT_VERSION = 1
FORMAT_FILE = "FORMAT"
_FORMAT_WORD = "concord-data-dir"
KEYS_DIR = "keys"
RING_FILE = "dek.ring"
KEK_FILE = "kek"

# --- nonces ----------------------------------------------------------------------------------


def wal_nonce(seq: int, counter: int) -> bytes:
    """The nonce of the `counter`-th record of WAL segment `seq` (see the module docstring)."""
    if not 0 <= seq < _WAL_SEQ_LIMIT:
        raise ValueError(f"WAL segment sequence {seq} is outside the nonce space")
    return struct.pack(">IQ", seq, counter)


def snapshot_nonce() -> bytes:
    """A fresh random snapshot nonce, its top bit set so it never equals a WAL nonce."""
    nonce = bytearray(os.urandom(NONCE_BYTES))
    nonce[0] |= 0x80
    return bytes(nonce)


# --- sealing a stream ---------------------------------------------------------------------------

STREAM_CHUNK_BYTES = 1 << 20
"""How much `seal_stream` and `open_stream` take at a time; the most either holds besides
the caller's plaintext. Snapshots use them: an image of a million keys is about 80 MB."""


def seal_stream(
    key: bytes,
    nonce: bytes,
    aad: bytes,
    parts: Iterable[bytes | memoryview],
    write: Callable[[bytes], object],
) -> None:
    """AES-GCM of the concatenated `parts`, handed to `write` chunk by chunk, then the tag:
    in order the very bytes of `AESGCM(key).encrypt(nonce, b"".join(parts), aad)` (GCM is a
    stream cipher with the tag at the end), without a joined plaintext or a whole
    ciphertext ever in memory."""
    encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), STREAM_CHUNK_BYTES):
            write(encryptor.update(view[start : start + STREAM_CHUNK_BYTES]))
    write(encryptor.finalize())
    write(encryptor.tag)


def open_stream(
    key: bytes, nonce: bytes, aad: bytes, read_into: Callable[[memoryview], int], sealed: int
) -> bytearray:
    """The plaintext of `sealed` bytes (ciphertext, then the tag) that `read_into` delivers, as
    `AESGCM(key).decrypt` would return it but decrypted chunk by chunk into one buffer, so the
    ciphertext is never whole in memory. `InvalidTag` if it does not authenticate, `EOFError`
    if `read_into` runs dry first; the buffer is returned only once the tag has verified."""
    if sealed < TAG_BYTES:
        raise EOFError(f"{sealed} bytes cannot hold a {TAG_BYTES}-byte tag")
    plain = bytearray(sealed - TAG_BYTES)
    out = memoryview(plain)
    chunk = memoryview(bytearray(min(STREAM_CHUNK_BYTES, len(plain))))
    decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
    decryptor.authenticate_additional_data(aad)
    done = 0
    while done < len(plain):
        got = read_into(chunk[: len(plain) - done])
        if got <= 0:
            raise EOFError(f"the ciphertext ends after {done} of {len(plain)} bytes")
        decryptor.update_into(chunk[:got], out[done : done + got])
        done += got
    tag = bytearray(TAG_BYTES)
    got = 0
    while got < TAG_BYTES:
        n = read_into(memoryview(tag)[got:])
        if n <= 0:
            raise EOFError("the tag is cut short")
        got += n
    out.release()
    decryptor.finalize_with_tag(bytes(tag))
    return plain


# --- the data directory's format marker ------------------------------------------------------


def check_data_dir(data_dir: Path) -> None:
    """Raise unless `data_dir` is an initialised data directory of our format version."""
    if not data_dir.exists():
        raise NotInitializedError(
            f"data dir {data_dir} does not exist; check the path (a member creates its data "
            "dir on its first start: `concord-coordinator --data-dir DIR ...`, as `concordctl "
            "cluster init` prints; `concordctl snapshot restore` builds one from a backup)"
        )
    if not data_dir.is_dir():
        raise NotInitializedError(f"data dir {data_dir} is not a directory")
    marker = data_dir / FORMAT_FILE
    try:
        text = marker.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        raise NotInitializedError(
            f"{data_dir} is not a Concord data dir (no {FORMAT_FILE} file); give a member's "
            "--data-dir (a member creates it on its first start: `concord-coordinator "
            "--data-dir DIR ...`)"
        ) from None
    word, _, version = text.partition(" ")
    if word != _FORMAT_WORD or not version.isdigit():
        raise FormatVersionError(f"{marker} does not describe a Concord data dir: {text[:60]!r}")
    if int(version) != DATA_DIR_FORMAT_VERSION:
        raise FormatVersionError(
            f"{data_dir} holds data-dir format version {version}; this build reads version "
            f"{DATA_DIR_FORMAT_VERSION} only"
        )


# --- key files ---------------------------------------------------------------------------------

_MODE_KEK_FILE = 0
_MODE_AUTOLOCK = 1
_RING_MAGIC = b"CCRING"
_RING_VERSION = 1
_RING_HEAD = struct.Struct(f">6sHB{KEY_BYTES}s{NONCE_BYTES}s")
"""magic, version, mode, HKDF salt (autolock only), nonce; then the sealed ring, then CRC32."""
_RING_AAD = b"concord/dek-ring/v1"
_RING_ENTRY = struct.Struct(f">I{KEY_BYTES}s")
_KEK_MAGIC = b"CCKEK\x00"
_KEK_VERSION = 1
_KEK_BODY = struct.Struct(f">6sH{KEY_BYTES}s")
_HKDF_INFO = b"concord/kek/v1"
_CRC = struct.Struct(">I")


@dataclass(slots=True)
class _Ring:
    """The DEKs. Invariant: `current` is a key of `keys`; key ids only ever grow."""

    current: int
    keys: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        out = bytearray(struct.pack(">HII", 1, self.current, len(self.keys)))
        for key_id in sorted(self.keys):
            out += _RING_ENTRY.pack(key_id, self.keys[key_id])
        return bytes(out)

    @staticmethod
    def decode(data: bytes) -> _Ring:
        version, current, count = struct.unpack_from(">HII", data)
        if version != 1:
            raise ValueError(f"key ring plaintext version {version}")
        if len(data) != 10 + count * _RING_ENTRY.size:
            raise ValueError("key ring plaintext has the wrong length")
        keys = dict(_RING_ENTRY.iter_unpack(data[10:]))
        if current not in keys:
            raise ValueError(f"current key id {current} is not in the ring")
        return _Ring(current, keys)


def _derive_kek(unlock_raw: bytes, salt: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_HKDF_INFO)
    return hkdf.derive(unlock_raw)


def _with_crc(body: bytes) -> bytes:
    return body + _CRC.pack(zlib.crc32(body))


def _strip_crc(path: Path, data: bytes) -> bytes:
    if len(data) < _CRC.size or _CRC.unpack(data[-_CRC.size :])[0] != zlib.crc32(data[:-4]):
        raise KeyFileCorruptError(f"{path} is damaged (checksum mismatch or truncated)")
    return data[: -_CRC.size]


class KeyStore:
    """A member's key ring: the DEKs, wrapped under a KEK that is either on disk or derived
    from an unlock key held only in memory. Build one with `create` or `open`."""

    def __init__(
        self,
        data_dir: Path,
        ring: _Ring,
        kek: bytes,
        salt: bytes,
        unlock_raw: bytes | None,
    ) -> None:
        self._data_dir = data_dir
        self._ring = ring
        self._kek = kek
        self._salt = salt
        self._unlock_raw = unlock_raw
        """None without autolock; with it, the key the KEK was derived from."""
        self._ciphers: dict[int, AESGCM] = {}

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def create(cls, data_dir: str | os.PathLike[str], autolock: bool = False) -> KeyStore:
        """Initialise a data directory with a fresh DEK ring. With autolock, read the new
        unlock key from `unlock_key` and hand it to the operator: it is stored nowhere."""
        path = Path(data_dir)
        if (path / FORMAT_FILE).exists():
            raise AlreadyInitializedError(f"{path} is already a Concord data dir")
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys_dir = path / KEYS_DIR
        keys_dir.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(path)
        ring = _Ring(1, {1: os.urandom(KEY_BYTES)})
        if autolock:
            unlock_raw, salt = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
            store = cls(path, ring, _derive_kek(unlock_raw, salt), salt, unlock_raw)
        else:
            store = cls(path, ring, os.urandom(KEY_BYTES), bytes(KEY_BYTES), None)
            store._write_kek_file(store._kek)
        store._write_ring(store._ring, store._kek, store._salt, autolock)
        # The marker goes last: its presence means "keys complete", so a crash before it
        # leaves a directory `create` may simply run over again.
        marker = f"{_FORMAT_WORD} {DATA_DIR_FORMAT_VERSION}\n".encode("ascii")
        write_file_atomic(path / FORMAT_FILE, marker, 0o644)
        return store

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        unlock_key: str | None = None,
        *,
        read_only: bool = False,
    ) -> KeyStore:
        """Open the key ring. With autolock on, `unlock_key` is required (`LockedError`
        otherwise) and must be the current one (`WrongUnlockKeyError`). Unless `read_only`,
        leftovers of interrupted key operations are removed."""
        path = Path(data_dir)
        check_data_dir(path)
        ring_path = path / KEYS_DIR / RING_FILE
        try:
            data = ring_path.read_bytes()
        except FileNotFoundError:
            raise KeyFileCorruptError(f"{ring_path} is missing: the data keys are gone") from None
        body = _strip_crc(ring_path, data)
        if len(body) < _RING_HEAD.size + TAG_BYTES:
            raise KeyFileCorruptError(f"{ring_path} is truncated")
        head = body[: _RING_HEAD.size]
        magic, version, mode, salt, nonce = _RING_HEAD.unpack(head)
        if magic != _RING_MAGIC:
            raise KeyFileCorruptError(f"{ring_path} is not a Concord key ring")
        if version != _RING_VERSION:
            raise FormatVersionError(
                f"{ring_path} has key-ring format version {version}; this build reads "
                f"version {_RING_VERSION}"
            )
        kek_path = path / KEYS_DIR / KEK_FILE
        unlock_raw: bytes | None = None
        if mode == _MODE_AUTOLOCK:
            if unlock_key is None:
                raise LockedError(
                    f"{path} is locked (autolock is on): run `concordctl unlock` and give "
                    "it the unlock key (or mount the unlock key secret)"
                )
            unlock_raw = parse_unlock_key(unlock_key)
            kek = _derive_kek(unlock_raw, salt)
        elif mode == _MODE_KEK_FILE:
            kek = cls._read_kek_file(kek_path)
        else:
            raise KeyFileCorruptError(f"{ring_path} has unknown wrapping mode {mode}")
        try:
            plain = AESGCM(kek).decrypt(nonce, body[_RING_HEAD.size :], _RING_AAD + head)
        except InvalidTag:
            if mode == _MODE_AUTOLOCK:
                raise WrongUnlockKeyError(
                    f"the unlock key does not open {ring_path}: it is not this member's key, "
                    "or one from before a rotation"
                ) from None
            raise KeyFileCorruptError(
                f"{kek_path} does not open {ring_path}: the key files do not belong together"
            ) from None
        try:
            ring = _Ring.decode(plain)
        except (ValueError, struct.error) as exc:
            raise KeyFileCorruptError(f"{ring_path} holds a malformed key ring: {exc}") from None
        store = cls(path, ring, kek, salt, unlock_raw)
        if not read_only:
            store._clean_leftovers(autolock=mode == _MODE_AUTOLOCK)
        return store

    # --- what the WAL uses -------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def current_key_id(self) -> int:
        """The DEK new records and snapshots are sealed under."""
        return self._ring.current

    @property
    def key_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._ring.keys))

    def cipher(self, key_id: int) -> AESGCM:
        """The AES-GCM instance for DEK `key_id`; `UnknownKeyError` if the ring lacks it."""
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            cipher = self._ciphers[key_id] = AESGCM(self.data_key(key_id))
        return cipher

    def data_key(self, key_id: int) -> bytes:
        """DEK `key_id` itself, for `seal_stream` and `open_stream` (an `AESGCM` seals only
        whole buffers); `UnknownKeyError` if the ring lacks it."""
        key = self._ring.keys.get(key_id)
        if key is None:
            raise UnknownKeyError(
                f"data key {key_id} is not in the key ring (dropped too early, or the "
                f"record belongs to another member); the ring holds {self.key_ids}"
            )
        return key

    # --- autolock and rotation ---------------------------------------------------------------

    @property
    def autolock(self) -> bool:
        return self._unlock_raw is not None

    @property
    def unlock_key(self) -> str | None:
        """The current unlock key's text with autolock on (it is in memory anyway, to rewrap
        the ring on DEK rotation); None without autolock."""
        return None if self._unlock_raw is None else format_unlock_key(self._unlock_raw)

    def enable_autolock(self) -> str:
        """Wrap the ring under a KEK derived from a new unlock key, then delete `keys/kek`.
        Returns the unlock key: it exists nowhere else, so the caller must show it."""
        if self.autolock:
            raise KeyStoreError("autolock is already on; rotate_unlock_key changes the key")
        unlock_raw, salt = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
        kek = _derive_kek(unlock_raw, salt)
        self._write_ring(self._ring, kek, salt, True)
        self._kek, self._salt, self._unlock_raw = kek, salt, unlock_raw
        # The ring no longer needs the KEK file; once it is gone (durably), a stolen disk
        # holds nothing that opens the ring.
        remove_files([self._data_dir / KEYS_DIR / KEK_FILE])
        return format_unlock_key(unlock_raw)

    def disable_autolock(self) -> None:
        """Store a new KEK in `keys/kek` and wrap the ring under it. The KEK file is written
        first: a crash between the two leaves autolock on and the stray file is removed on
        the next open."""
        if not self.autolock:
            raise KeyStoreError("autolock is already off")
        kek = os.urandom(KEY_BYTES)
        self._write_kek_file(kek)
        self._write_ring(self._ring, kek, bytes(KEY_BYTES), False)
        self._kek, self._salt, self._unlock_raw = kek, bytes(KEY_BYTES), None

    def rotate_unlock_key(self) -> str:
        """Rewrap the ring under a new unlock key (and salt); the old key stops working. The
        DEKs, and so every record, are unchanged."""
        if not self.autolock:
            raise KeyStoreError("autolock is off: there is no unlock key to rotate")
        unlock_raw, salt = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
        kek = _derive_kek(unlock_raw, salt)
        self._write_ring(self._ring, kek, salt, True)
        self._kek, self._salt, self._unlock_raw = kek, salt, unlock_raw
        return format_unlock_key(unlock_raw)

    def rotate_dek(self) -> int:
        """Add a new DEK and make it current; returns its key id. Older DEKs stay until
        `drop_keys_older_than` (after a snapshot and compaction cover their records)."""
        new_id = max(self._ring.keys) + 1
        if new_id >= 1 << 32:
            raise KeyStoreError("data key ids exhausted")
        ring = _Ring(new_id, {**self._ring.keys, new_id: os.urandom(KEY_BYTES)})
        self._write_ring(ring, self._kek, self._salt, self.autolock)
        self._ring = ring
        return new_id

    def drop_keys_older_than(self, key_id: int) -> list[int]:
        """Forget every DEK with an id below `key_id`; returns the ids dropped. The caller
        vouches that nothing still readable is sealed under them (`DiskWal.retire_keys`
        checks that for the WAL and snapshots)."""
        if key_id > self._ring.current:
            raise KeyStoreError(
                f"cannot drop keys older than {key_id}: the current key is {self._ring.current}"
            )
        dropped = sorted(k for k in self._ring.keys if k < key_id)
        if dropped:
            keep = {k: v for k, v in self._ring.keys.items() if k >= key_id}
            ring = _Ring(self._ring.current, keep)
            self._write_ring(ring, self._kek, self._salt, self.autolock)
            self._ring = ring
            for k in dropped:
                self._ciphers.pop(k, None)
        return dropped

    # --- files ---------------------------------------------------------------------------------

    def _write_ring(self, ring: _Ring, kek: bytes, salt: bytes, autolock: bool) -> None:
        nonce = os.urandom(NONCE_BYTES)
        mode = _MODE_AUTOLOCK if autolock else _MODE_KEK_FILE
        head = _RING_HEAD.pack(_RING_MAGIC, _RING_VERSION, mode, salt, nonce)
        sealed = AESGCM(kek).encrypt(nonce, ring.encode(), _RING_AAD + head)
        write_file_atomic(self._data_dir / KEYS_DIR / RING_FILE, _with_crc(head + sealed))

    def _write_kek_file(self, kek: bytes) -> None:
        body = _KEK_BODY.pack(_KEK_MAGIC, _KEK_VERSION, kek)
        write_file_atomic(self._data_dir / KEYS_DIR / KEK_FILE, _with_crc(body))

    @staticmethod
    def _read_kek_file(path: Path) -> bytes:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyFileCorruptError(
                f"{path} is missing and autolock is off: the key ring cannot be opened"
            ) from None
        body = _strip_crc(path, data)
        if len(body) != _KEK_BODY.size:
            raise KeyFileCorruptError(f"{path} has the wrong length")
        magic, version, kek = _KEK_BODY.unpack(body)
        if magic != _KEK_MAGIC:
            raise KeyFileCorruptError(f"{path} is not a Concord key file")
        if version != _KEK_VERSION:
            raise FormatVersionError(f"{path} has key-file format version {version}")
        key: bytes = kek
        return key

    def _clean_leftovers(self, autolock: bool) -> None:
        keys_dir = self._data_dir / KEYS_DIR
        stale = sorted(keys_dir.glob("*" + TMP_SUFFIX))
        if autolock and (keys_dir / KEK_FILE).exists():
            # A crash between rewrapping and deleting: the old KEK must not linger.
            stale.append(keys_dir / KEK_FILE)
        if stale:
            _log.warning("removing leftovers of an interrupted key operation: %s", stale)
            remove_files(stale)
