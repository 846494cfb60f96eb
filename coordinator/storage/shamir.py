"""Splitting a key k-of-n with Shamir's scheme over GF(256), byte by byte, and combining
the shares (which carry a split id, so k well-formed shares from different splits are told
apart); unlock keys' shares and the generic forms that backup keys use."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from .keytext import (
    _CHECKSUM_BYTES,
    KEY_BYTES,
    UNLOCK_KEY_FORMAT,
    KeyFormat,
    _b32decode,
    _b32encode,
    _checksum,
    _normalize,
    format_key,
    parse_key,
)

_SHARE_VERSION = 1
_SPLIT_ID_BYTES = 4


def _gf_tables() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """exp/log tables of GF(2^8) modulo x^8+x^4+x^3+x+1 (AES's field), generator 3."""
    exp = [0] * 510
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        doubled = ((x << 1) ^ (0x1B if x & 0x80 else 0)) & 0xFF
        x ^= doubled  # x * 3 = x * 2 + x
    for i in range(255, 510):
        exp[i] = exp[i - 255]
    return tuple(exp), tuple(log)


_GF_EXP, _GF_LOG = _gf_tables()


def gf_mul(a: int, b: int) -> int:
    """Multiplication in GF(256); addition is XOR."""
    if a == 0 or b == 0:
        return 0
    return _GF_EXP[_GF_LOG[a] + _GF_LOG[b]]


def gf_div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    if a == 0:
        return 0
    return _GF_EXP[(_GF_LOG[a] - _GF_LOG[b]) % 255]


def _interpolate(points: list[tuple[int, bytes]], at: int) -> bytes:
    """Lagrange interpolation, bytewise, of the polynomial through `points` (x, y) at `at`.

    With k points this evaluates the unique degree < k polynomial through them; at 0 that
    is the secret. In characteristic 2, subtraction is XOR."""
    length = len(points[0][1])
    out = bytearray(length)
    for i, (xi, yi) in enumerate(points):
        basis = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                basis = gf_mul(basis, gf_div(at ^ xj, xi ^ xj))
        if basis:
            for b in range(length):
                out[b] ^= gf_mul(yi[b], basis)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class _Share:
    split_id: bytes
    threshold: int
    x: int
    y: bytes


def _format_share(share: _Share, fmt: KeyFormat = UNLOCK_KEY_FORMAT) -> str:
    payload = bytes([_SHARE_VERSION]) + share.split_id + bytes([share.threshold, share.x]) + share.y
    body = _b32encode(payload + _checksum(fmt.share_domain, payload))
    return f"{fmt.share_prefix}{share.x}-{share.threshold}-{body}"


def _parse_share(text: str, fmt: KeyFormat = UNLOCK_KEY_FORMAT) -> _Share:
    error = fmt.share_error
    cleaned = _normalize(text)
    article = fmt.a_noun.split(" ", 1)[0]
    what = f"{article} {fmt.noun.replace(' ', '-')} share"
    if not cleaned.startswith(fmt.share_prefix):
        raise error(f"not {what}: it must start with {fmt.share_prefix}")
    parts = cleaned[len(fmt.share_prefix) :].split("-", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise error(f"not {what}: expected {fmt.share_prefix}<index>-<k>-<data>")
    try:
        decoded = _b32decode(parts[2].replace("-", ""))
    except ValueError:
        raise error("mistyped: only A-Z and 2-7 may follow the index and k") from None
    head = 1 + _SPLIT_ID_BYTES + 2
    secret_bytes = KEY_BYTES + _CHECKSUM_BYTES
    if len(decoded) != head + secret_bytes + _CHECKSUM_BYTES:
        raise error("mistyped: the share has the wrong length (truncated paste?)")
    payload, check = decoded[:-_CHECKSUM_BYTES], decoded[-_CHECKSUM_BYTES:]
    canonical = _b32encode(decoded) == parts[2].replace("-", "")
    if not canonical or _checksum(fmt.share_domain, payload) != check:
        raise error("mistyped: its checksum does not match")
    if payload[0] != _SHARE_VERSION:
        raise error(f"share format version {payload[0]} is not supported")
    split_id = payload[1 : 1 + _SPLIT_ID_BYTES]
    threshold, x = payload[1 + _SPLIT_ID_BYTES], payload[2 + _SPLIT_ID_BYTES]
    if (int(parts[0]), int(parts[1])) != (x, threshold):
        raise error(
            f"mistyped: the visible index/k {parts[0]}-{parts[1]} disagree with the "
            f"checksummed ones {x}-{threshold}"
        )
    return _Share(split_id, threshold, x, payload[head:])


def split_key(fmt: KeyFormat, key: str, k: int, n: int) -> list[str]:
    """Split a key of kind `fmt` into `n` shares, any `k` of which rebuild it (Shamir,
    GF(256)).

    Fewer than k shares reveal nothing about the key: for every byte, each candidate value
    is consistent with them in exactly as many polynomials."""
    if not 2 <= k <= n <= 255:
        raise ValueError(f"need 2 <= k <= n <= 255 shares, got k={k}, n={n}")
    raw = parse_key(fmt, key)
    secret = raw + _checksum(fmt.domain, raw)
    split_id = os.urandom(_SPLIT_ID_BYTES)
    coefficients = [os.urandom(len(secret)) for _ in range(k - 1)]
    shares = []
    for x in range(1, n + 1):
        y = bytearray(len(secret))
        for b in range(len(secret)):
            acc = 0
            for coefficient in reversed(coefficients):  # Horner, highest degree first
                acc = gf_mul(acc, x) ^ coefficient[b]
            y[b] = gf_mul(acc, x) ^ secret[b]
        shares.append(_format_share(_Share(split_id, k, x, bytes(y)), fmt))
    return shares


def combine_key_shares(fmt: KeyFormat, shares: Iterable[str]) -> str:
    """Rebuild a key of kind `fmt` from at least k shares of one split, or raise
    `fmt.share_error` naming the problem: a mistyped share, shares of different splits, too
    few shares, or shares that do not lie on one polynomial."""
    error = fmt.share_error
    parsed: list[_Share] = []
    for position, text in enumerate(shares, start=1):
        try:
            parsed.append(_parse_share(text, fmt))
        except error as exc:
            raise error(f"share #{position} is {exc}") from None
    if not parsed:
        raise error("no shares given")
    if len({s.split_id for s in parsed}) > 1:
        raise error(
            f"the shares come from different splits (another {fmt.noun}, or another split of "
            "it); use shares from one split only"
        )
    if len({s.threshold for s in parsed}) > 1:
        raise error("the shares disagree on how many are needed (k)")
    k = parsed[0].threshold
    by_x: dict[int, bytes] = {}
    for s in parsed:
        if by_x.setdefault(s.x, s.y) != s.y:
            raise error(f"two different shares both claim index {s.x}")
    if len(by_x) < k:
        raise error(f"{len(by_x)} distinct share(s) given; this key needs {k}")
    points = sorted(by_x.items())
    base = points[:k]
    for x, y in points[k:]:
        if _interpolate(base, x) != y:
            raise error(f"share {x} is inconsistent with the others")
    secret = _interpolate(base, 0)
    raw, check = secret[:KEY_BYTES], secret[KEY_BYTES:]
    if _checksum(fmt.domain, raw) != check:
        raise error(f"the shares do not combine to a valid {fmt.noun} (altered shares?)")
    return format_key(fmt, raw)


def combine_key_share_sets(fmt: KeyFormat, shares: Iterable[str]) -> list[str]:
    """Rebuild one key per split from shares of several (each member's unlock key is split on
    its own, so an offline tool reading several data dirs is given shares of several keys).
    Shares are grouped by the split they come from, in the order first seen; each group must
    combine (`combine_key_shares`), or `fmt.share_error` names the share or the split."""
    error = fmt.share_error
    groups: dict[bytes, list[str]] = {}
    for position, text in enumerate(shares, start=1):
        try:
            share = _parse_share(text, fmt)
        except error as exc:
            raise error(f"share #{position} is {exc}") from None
        groups.setdefault(share.split_id, []).append(text)
    keys = []
    for number, texts in enumerate(groups.values(), start=1):
        try:
            keys.append(combine_key_shares(fmt, texts))
        except error as exc:
            which = f"the shares of {fmt.a_noun}" if len(groups) == 1 else f"split #{number}"
            raise error(f"{which}: {exc}") from None
    return keys


def split_unlock_key(unlock_key: str, k: int, n: int) -> list[str]:
    """Split an unlock key into `n` shares, any `k` of which rebuild it (see `split_key`)."""
    return split_key(UNLOCK_KEY_FORMAT, unlock_key, k, n)


def combine_unlock_key_shares(shares: Iterable[str]) -> str:
    """Rebuild the unlock key from at least k shares of one split, or raise `ShareError`
    naming the problem (see `combine_key_shares`)."""
    return combine_key_shares(UNLOCK_KEY_FORMAT, shares)


def combine_unlock_key_share_sets(shares: Iterable[str]) -> list[str]:
    """One unlock key per split among `shares` (see `combine_key_share_sets`)."""
    return combine_key_share_sets(UNLOCK_KEY_FORMAT, shares)
