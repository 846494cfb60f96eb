"""Keys as text: the checksummed base32 form of unlock keys (and of backup keys,
`coordinator.storage.backup`), `KeyFormat` naming each kind."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from .errors import (
    InvalidUnlockKeyError,
    ShareError,
)

KEY_BYTES = 32
"""AES-256 keys, KEKs and unlock keys are all 32 random bytes."""
_CHECKSUM_BYTES = 4


@dataclass(frozen=True, slots=True)
class KeyFormat:
    """How one kind of 32-byte key is written for people, and its Shamir shares.

    `prefix` + base32(key + 4-byte SHA-256 checksum under `domain`); shares are
    `share_prefix` + `<index>-<k>-` + base32(payload + checksum under `share_domain`). Each
    kind has its own prefixes and domains, so a key (or a share) of one kind is refused where
    the other is expected instead of being tried. `invalid` and `share_error` are the
    exceptions raised for malformed keys and shares; `noun` names the key in messages."""

    prefix: str
    domain: bytes
    share_prefix: str
    share_domain: bytes
    noun: str
    """"unlock key", "backup key"."""
    invalid: type[Exception]
    share_error: type[Exception]

    @property
    def a_noun(self) -> str:
        return ("an " if self.noun[0] in "aeiou" else "a ") + self.noun


UNLOCK_KEY_FORMAT = KeyFormat(
    "CONCORD-UNLOCK-",
    b"concord/unlock-key/v1",
    "CONCORD-SHARE-",
    b"concord/unlock-share/v1",
    "unlock key",
    InvalidUnlockKeyError,
    ShareError,
)


def _checksum(domain: bytes, data: bytes) -> bytes:
    return hashlib.sha256(domain + data).digest()[:_CHECKSUM_BYTES]


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=")


def _b32decode(text: str) -> bytes:
    """Decode unpadded base32; ValueError for characters outside the alphabet."""
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def _normalize(text: str) -> str:
    """Keys are read back from terminals and password managers: ignore case and blanks."""
    return "".join(text.split()).upper()


def format_key(fmt: KeyFormat, raw: bytes) -> str:
    """The text form of a 32-byte key of kind `fmt`."""
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{fmt.a_noun} is {KEY_BYTES} bytes, not {len(raw)}")
    return fmt.prefix + _b32encode(raw + _checksum(fmt.domain, raw))


def parse_key(fmt: KeyFormat, text: str) -> bytes:
    """The 32 raw bytes of a key of kind `fmt`, or `fmt.invalid` for a malformed or mistyped
    one. The messages never echo the text back: it is a secret."""
    cleaned = _normalize(text)
    if not cleaned.startswith(fmt.prefix):
        raise fmt.invalid(f"not {fmt.a_noun}: it must start with {fmt.prefix}")
    if cleaned.startswith(fmt.share_prefix):
        raise fmt.invalid(
            f"that is one share of {fmt.a_noun}, not the key itself: give k shares instead"
        )
    body = cleaned[len(fmt.prefix) :].replace("-", "")
    try:
        decoded = _b32decode(body)
    except ValueError:
        raise fmt.invalid(
            f"not {fmt.a_noun}: it may contain only the letters A-Z and digits 2-7 after "
            "the prefix (a mistyped 0/O or 1/I?)"
        ) from None
    if len(decoded) != KEY_BYTES + _CHECKSUM_BYTES:
        expected = len(_b32encode(bytes(KEY_BYTES + _CHECKSUM_BYTES)))
        raise fmt.invalid(
            f"not {fmt.a_noun}: {len(body)} characters after the prefix, expected {expected} "
            "(truncated or doubled paste?)"
        )
    raw, check = decoded[:KEY_BYTES], decoded[KEY_BYTES:]
    # The last base32 character carries 2 spare bits; a typo there that only touches them
    # decodes to the same bytes, so insist on the canonical spelling.
    if _b32encode(decoded) != body or _checksum(fmt.domain, raw) != check:
        raise fmt.invalid(f"the {fmt.noun} has a typo: its checksum does not match")
    return raw


def format_unlock_key(raw: bytes) -> str:
    """The text form of a 32-byte unlock key: `CONCORD-UNLOCK-` + base32(key + checksum)."""
    return format_key(UNLOCK_KEY_FORMAT, raw)


def parse_unlock_key(text: str) -> bytes:
    """The 32 raw bytes of an unlock key, or `InvalidUnlockKeyError` for a malformed or
    mistyped one. The messages never echo the text back: it is a secret."""
    return parse_key(UNLOCK_KEY_FORMAT, text)
