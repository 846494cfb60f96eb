"""concordctl's `join-token create|list|revoke`: they talk to the cluster (a client
certificate is needed). Create prints the token once (no member stores it), list shows ids
and times, revoke takes an id or the token itself.
"""

from __future__ import annotations

import json
import time

import click

from coordinator.pki import JOIN_TOKEN_PREFIX, JoinToken, JoinTokenError

from ._common import Ctx, emit
from ._connect import run


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else ""


@click.group(name="join-token")
def join_token() -> None:
    """Join tokens (as `docker swarm join-token`): the cluster keeps their hashes; a new
    member joins with one (`concord-coordinator --join HOST:PORT --join-token TOKEN`)."""


@join_token.command(name="create")
@click.pass_obj
def join_token_create(ctx: Ctx) -> None:
    """Issue a new join token and print it (this is the only time it is shown)."""
    resp = run(ctx, lambda c: c.join_token_create())
    if ctx.json:
        doc = {"id": resp.info.id, "token": resp.token, "created": _when(resp.info.created_ms)}
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(resp.token)
    click.echo(
        f"join token {resp.info.id}: a new member joins with `concord-coordinator --id 0 "
        "--data-dir NEW_DIR --tls-dir NEW_DIR --join HOST:PORT --join-token TOKEN ...` "
        "(HOST:PORT: a member's --join-listen); `concordctl join-token revoke "
        f"{resp.info.id}` withdraws it",
        err=True,
    )


@join_token.command(name="revoke")
@click.argument("token_or_id")
@click.pass_obj
def join_token_revoke(ctx: Ctx, token_or_id: str) -> None:
    """Revoke a join token, given as its id (`join-token list`) or as the token itself."""
    text = token_or_id.strip()
    if text.upper().startswith(JOIN_TOKEN_PREFIX):
        try:
            JoinToken.parse(text)
        except JoinTokenError as err:
            raise click.BadParameter(str(err), param_hint="TOKEN_OR_ID") from None
    info = run(ctx, lambda c: c.join_token_revoke(text))
    row = {"id": info.id, "created": _when(info.created_ms), "revoked": _when(info.revoked_ms)}
    emit(ctx, [row], ["id", "created", "revoked"])


@join_token.command(name="list")
@click.pass_obj
def join_token_list(ctx: Ctx) -> None:
    """The join tokens issued (ids, never the tokens), and which are revoked."""
    tokens = run(ctx, lambda c: c.join_token_list())
    rows = [
        {"id": t.id, "created": _when(t.created_ms), "revoked": _when(t.revoked_ms)} for t in tokens
    ]
    emit(ctx, rows, ["id", "created", "revoked"])
