"""Unlock keys and their Shamir shares on the command line: reading, checking, combining and
splitting them, and the `--shares K/N` option. No cluster is involved: the online key
commands (`_keys.py`) and the offline tools (`rafttool`, `cluster recover --data-dir`,
`snapshot`) both use it. The key format is the storage layer's (coordinator.storage.crypto).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from coordinator.storage import (
    InvalidUnlockKeyError,
    ShareError,
    combine_unlock_key_share_sets,
    combine_unlock_key_shares,
    parse_unlock_key,
    split_unlock_key,
)

__all__ = [
    "SHARES",
    "SharesParam",
    "offline_unlock_keys",
    "read_secret_input",
    "split_unlock_key",
    "unlock_key_from",
]


class SharesParam(click.ParamType[tuple[int, int]]):
    """`K/N`: split into N shares, any K of which rebuild the key."""

    name = "K/N"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value  # already converted (a default)
        k, sep, n = str(value).partition("/")
        if sep and k.strip().isdigit() and n.strip().isdigit():
            kk, nn = int(k), int(n)
            if 2 <= kk <= nn <= 255:
                return kk, nn
        self.fail(
            f"{value!r} is not K/N with 2 <= K <= N <= 255 (e.g. 2/3: three shares, any two "
            "of which unlock)",
            param,
            ctx,
        )


SHARES = SharesParam()


def read_secret_input() -> list[str]:
    """The key (or shares, one per line) from a prompt or from stdin."""
    stdin = sys.stdin
    if stdin.isatty():
        text = click.prompt("Unlock key", hide_input=True, err=True)
        return [str(text)]
    return [line.strip() for line in stdin.read().splitlines() if line.strip()]


def unlock_key_from(key: str | None, shares: tuple[str, ...]) -> str:
    """The unlock key given as --key, as --share values, or at the prompt/on stdin (a key, or
    shares one per line), checked; a usage error (exit 2) if it is malformed."""
    if key is not None and shares:
        raise click.UsageError("give either --key or --share, not both")
    source = "--key"
    if key is None and not shares:
        lines = read_secret_input()
        if not lines:
            raise click.UsageError(
                "no unlock key given: pass --key, --share (repeated), or type it at the prompt "
                "(or pipe it, or its shares one per line, into stdin)"
            )
        if all(line.upper().startswith("CONCORD-SHARE-") for line in lines):
            shares = tuple(lines)
        elif len(lines) == 1:
            key, source = lines[0], "the unlock key read from stdin"
        else:
            raise click.UsageError(
                f"read {len(lines)} lines from stdin: expected one unlock key, or shares "
                "(CONCORD-SHARE-...) one per line"
            )
    if shares:
        try:
            return combine_unlock_key_shares(shares)
        except ShareError as err:
            raise click.UsageError(
                f"cannot rebuild the unlock key from the shares: {err}"
            ) from None
    assert key is not None
    try:
        parse_unlock_key(key)
    except InvalidUnlockKeyError as err:
        raise click.UsageError(f"{source}: {err}") from None
    return key


def offline_unlock_keys(keys: Sequence[str], shares: Sequence[str]) -> list[str]:
    """The unlock keys an offline tool (`rafttool dump`, `cluster recover --data-dir`) is
    given: every --unlock-key checked, and the --share values combined into one key per split
    (each member's key is split on its own). A malformed key or share set is a usage error
    (exit 2): nothing is read with it."""
    out = []
    for key in keys:
        try:
            parse_unlock_key(key)
        except InvalidUnlockKeyError as err:
            raise click.UsageError(f"--unlock-key: {err}") from None
        out.append(key)
    if shares:
        try:
            out += combine_unlock_key_share_sets(shares)
        except ShareError as err:
            raise click.UsageError(f"--share: cannot rebuild an unlock key: {err}") from None
    return out
