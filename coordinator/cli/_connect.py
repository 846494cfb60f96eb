"""Connecting to a cluster: what the online commands (those that talk to members through
`coordinator.client`) share. The offline ones (`rafttool`, `snapshot status|restore`, `cluster
init`) work on files and never import this (see .importlinter)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from coordinator.client import Client, ConcordError, InvalidArgument, credentials_from_tls_dir

from ._common import EXIT_INTERRUPTED, EXIT_USAGE, Ctx, fail

T = TypeVar("T")


def credentials(ctx: Ctx) -> grpc.ChannelCredentials | None:
    """The TLS directory's credentials (the library reads it: `coordinator.client`); a
    missing directory or file ends the command with status 2, naming it."""
    if ctx.tls_dir is None:
        return None
    try:
        return credentials_from_tls_dir(ctx.tls_dir)
    except InvalidArgument as err:
        fail(f"{err.message} (--tls-dir, env CONCORD_TLS_DIR)", EXIT_USAGE)


def client(ctx: Ctx) -> Client:
    """A client of `ctx.endpoints` (checked by the group already) with the TLS directory's
    credentials."""
    return Client(
        ctx.endpoints,
        credentials=credentials(ctx),
        timeout_s=ctx.timeout_s,
        connect_timeout_s=min(ctx.connect_timeout_s, ctx.timeout_s),
    )


def run(ctx: Ctx, fn: Callable[[Client], Awaitable[T]]) -> T:
    """Run `fn` with a client; a refusal ends the command with status 1, Ctrl-C with 130."""

    async def main() -> T:
        async with client(ctx) as c:
            return await fn(c)

    try:
        return asyncio.run(main())
    except ConcordError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
