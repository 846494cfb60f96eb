"""concordctl's key commands: `unlock`, `cluster autolock on|off|status` and
`cluster rotate-unlock-key`.

Every member has its own key ring and so its own unlock key (coordinator.storage.crypto).
These commands therefore act on each endpoint given, one after the other, through the
Maintenance service that a member serves even while locked, and report one row per
endpoint. The exit status is 1 if any endpoint failed.

Unlock keys are printed once, by the command that creates them, to stdout, followed by a
warning on stderr to store them: a member restarted without its key serves nothing until it
gets it back. With `--shares K/N` the key is split on this machine with Shamir's scheme
(any K of the N shares rebuild it) and only the shares are printed; `concordctl unlock
--share ... --share ...` combines them here again and sends the key.

A key or share that is malformed or mistyped is rejected here, before anything is sent
(exit 2); only a well-formed key is tried against a member.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import click

from coordinator.client import Client, ConcordError

from ._common import EXIT_FAILED, Ctx, emit
from ._connect import run
from ._keyshares import SHARES, split_unlock_key, unlock_key_from

STORE_WARNING = (
    "{what} shown only this once and stored nowhere: store {them} now, away from the "
    "members' disks (a password manager, a sealed secret). A member restarted without its "
    "unlock key serves nothing until `concordctl unlock` gives it back; each member has its "
    "own key. While a member runs, `concordctl cluster rotate-unlock-key` replaces a lost key."
)


@dataclass
class _Outcome:
    endpoint: str
    member: int | None = None
    result: str = ""
    error: ConcordError | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "member": self.member if self.member is not None else "",
            "result": self.result if self.error is None else f"failed ({self.error.code})",
            **self.extra,
        }

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "member": self.member,
            "ok": self.error is None,
            "result": self.result,
            **self.extra,
        }
        if self.error is not None:
            out["error"] = {"code": self.error.code, "message": self.error.message}
        return out


def _per_endpoint(
    ctx: Ctx, act: Callable[[Client, str, _Outcome], Awaitable[None]]
) -> list[_Outcome]:
    """`act` on each endpoint in turn (these calls act on the member that answers and are
    never redirected), each filling its outcome; a refusal is recorded, not raised."""

    async def each(c: Client) -> list[_Outcome]:
        outcomes = []
        for endpoint in ctx.endpoints:
            o = _Outcome(endpoint)
            try:
                await act(c, endpoint, o)
            except ConcordError as err:
                o.error = err
            outcomes.append(o)
        return outcomes

    return run(ctx, each)


def _report(ctx: Ctx, outcomes: list[_Outcome], columns: list[str]) -> None:
    """The per-endpoint table (or JSON), the errors on stderr, exit 1 if any failed."""
    if ctx.json:
        click.echo(json.dumps([o.json() for o in outcomes], indent=2))
    else:
        emit(ctx, [o.row() for o in outcomes], columns)
    failed = [o for o in outcomes if o.error is not None]
    for o in failed:
        click.echo(f"Error: {o.endpoint}: {o.error}", err=True)
    if failed:
        sys.exit(EXIT_FAILED)


# --- unlock ------------------------------------------------------------------------------------


@click.command()
@click.option("--key", "key", default=None, help="The unlock key (else read from a prompt/stdin).")
@click.option(
    "--share",
    "shares",
    multiple=True,
    help="An unlock-key share; repeat for K shares (from --shares K/N).",
)
@click.pass_obj
def unlock(ctx: Ctx, key: str | None, shares: tuple[str, ...]) -> None:
    """Give a locked member its unlock key (autolock): it then opens its data and joins in.

    Acts on every endpoint given (--endpoints), each being a member with its own key, and
    says per member whether it worked; a member that is already unlocked and running is
    reported as such (not a failure), and is not sent the key. Without --key or --share the
    key is read from a hidden prompt, or from stdin (a key, or shares one per line) when
    stdin is not a terminal.
    """
    unlock_key = unlock_key_from(key, shares)

    async def act(c: Client, endpoint: str, o: _Outcome) -> None:
        # A member that is already unlocked and running is fine, not a failure: given every
        # endpoint, as is natural after restarting one member, the others are such members.
        # They are asked first, so the key is sent only to members waiting for one.
        st = await c.autolock_status(endpoint)
        o.member = int(st.member_id)
        if not st.locked and st.phase == "running":
            o.result = "already unlocked (running); nothing to do"
            return
        try:
            o.member = await c.unlock_member(endpoint, unlock_key)
        except ConcordError as err:
            # Unlocked meanwhile (its --unlock-key-file, or another `concordctl unlock`)?
            if err.code != "FAILED_PRECONDITION":
                raise
            st = await c.autolock_status(endpoint)
            if st.locked or st.phase != "running":
                raise
            o.result = "already unlocked (running); nothing to do"
            return
        o.result = "unlocked"

    _report(ctx, _per_endpoint(ctx, act), ["endpoint", "member", "result"])


# --- autolock ----------------------------------------------------------------------------------


def _show_key(o: _Outcome, what: str, key: str, shares: tuple[int, int] | None) -> None:
    """Print a new unlock key (or its shares) for a person, once."""
    member = f"member {o.member} at {o.endpoint}"
    if shares is None:
        click.echo(f"{member}: {what}. Its unlock key:\n\n    {key}\n")
        return
    k, n = shares
    click.echo(f"{member}: {what}. Its unlock key, as {n} shares (any {k} of them unlock it):\n")
    for i, share in enumerate(split_unlock_key(key, k, n), start=1):
        click.echo(f"    share {i}: {share}")
    click.echo("")


def _split(key: str, shares: tuple[int, int] | None) -> dict[str, Any]:
    if shares is None:
        return {"unlock_key": key}
    return {"threshold": shares[0], "shares": split_unlock_key(key, *shares)}


def _keys_out(ctx: Ctx, outcomes: list[_Outcome], shares: tuple[int, int] | None) -> None:
    """Print the new keys (table mode: one block each), then the store-it warning."""
    made = [o for o in outcomes if "unlock_key" in o.extra]
    for o in made:
        key = o.extra.pop("unlock_key")
        if ctx.json:
            o.extra.update(_split(key, shares))
        else:
            _show_key(o, o.result, key, shares)
    if made:
        if shares is None:
            text = STORE_WARNING.format(what="Each unlock key above is", them="it")
        else:
            text = STORE_WARNING.format(
                what="The shares above are", them="each with a different person"
            )
        click.echo(f"Warning: {text}", err=True)
        if shares is not None:
            click.echo(
                f"Warning: any {shares[0]} shares of a member rebuild its key: "
                "`concordctl unlock --share S1 --share S2 ...`",
                err=True,
            )


@click.command()
@click.argument("state", type=click.Choice(["on", "off", "status"]))
@click.option(
    "--shares",
    "shares",
    type=SHARES,
    default=None,
    help="With `on`: print the key as N Shamir shares, any K of which unlock (e.g. 2/3).",
)
@click.pass_obj
def autolock(ctx: Ctx, state: str, shares: tuple[int, int] | None) -> None:
    """Turn autolock on or off on every endpoint given, or show it (`status`).

    With autolock on, a member's data keys are wrapped under an unlock key that is printed
    here once and stored nowhere: a restarted member serves nothing until it is given the key
    (`concordctl unlock`, or --unlock-key-file). Each member gets its own key.
    """
    if shares is not None and state != "on":
        raise click.UsageError("--shares goes with `autolock on` (or rotate-unlock-key) only")
    if state == "status":
        _autolock_status(ctx)
        return
    enabled = state == "on"

    async def act(c: Client, endpoint: str, o: _Outcome) -> None:
        resp = await c.set_autolock(endpoint, enabled)
        o.member = int(resp.member_id)
        if not resp.changed:
            o.result = f"already {state}; nothing changed"
            if enabled:
                o.result += " (its unlock key stays as it was)"
        elif enabled:
            o.result = "autolock is now on"
            o.extra["unlock_key"] = resp.unlock_key
        else:
            o.result = "autolock is now off (a key file on its disk wraps the keys)"

    outcomes = _per_endpoint(ctx, act)
    _keys_out(ctx, outcomes, shares)
    _report(ctx, outcomes, ["endpoint", "member", "result"])


def _autolock_status(ctx: Ctx) -> None:
    async def act(c: Client, endpoint: str, o: _Outcome) -> None:
        st = await c.autolock_status(endpoint)
        o.member = int(st.member_id)
        o.result = st.phase
        o.extra = {"name": st.member_name, "autolock": st.autolock, "locked": st.locked}

    outcomes = _per_endpoint(ctx, act)
    for o in outcomes:
        if o.error is None:
            o.extra["phase"] = o.result
    _report(ctx, outcomes, ["endpoint", "member", "name", "phase", "autolock", "locked"])


@click.command(name="rotate-unlock-key")
@click.option(
    "--shares",
    "shares",
    type=SHARES,
    default=None,
    help="Print the new key as N Shamir shares, any K of which unlock (e.g. 2/3).",
)
@click.pass_obj
def rotate_unlock_key(ctx: Ctx, shares: tuple[int, int] | None) -> None:
    """Give every endpoint's member a new unlock key; the old one stops working at once.

    The data keys, and so the data, are unchanged: only their wrapping changes. The new keys
    are printed once.
    """

    async def act(c: Client, endpoint: str, o: _Outcome) -> None:
        resp = await c.rotate_unlock_key(endpoint)
        o.member = int(resp.member_id)
        o.result = "unlock key rotated; the old one no longer works"
        o.extra["unlock_key"] = resp.unlock_key

    outcomes = _per_endpoint(ctx, act)
    _keys_out(ctx, outcomes, shares)
    _report(ctx, outcomes, ["endpoint", "member", "result"])


@click.command(name="rotate-data-key")
@click.pass_obj
def rotate_data_key(ctx: Ctx) -> None:
    """Give every endpoint's member a new data key and re-encrypt its data under it.

    Each member seals what it writes from then on under the new key, writes a snapshot under
    it and compacts its log to that snapshot, then drops the keys nothing on its disk needs
    any more. Members are rotated one at a time; each answers when it is done. The unlock
    key, if any, is unchanged.
    """

    async def act(c: Client, endpoint: str, o: _Outcome) -> None:
        resp = await c.rotate_data_key(endpoint)
        o.member = int(resp.member_id)
        retired = ", ".join(str(k) for k in resp.retired_key_ids) or "none"
        o.result = (
            f"data key {resp.key_id}; re-encrypted through the snapshot at index "
            f"{resp.snapshot_index}; retired key(s): {retired}"
        )
        o.extra = {
            "key_id": int(resp.key_id),
            "snapshot_index": int(resp.snapshot_index),
            "retired_key_ids": [int(k) for k in resp.retired_key_ids],
        }

    _report(ctx, _per_endpoint(ctx, act), ["endpoint", "member", "result"])
