"""`concordctl`: the command line for people (tables by default, `-o json` for scripts).

Every command is a thin shell over `coordinator.client.Client`; errors from the service are
printed as one line with the gRPC status and the server's advice, and exit with status 1
(2 for usage errors, as click does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from coordinator.client import Client, ConcordError

T = TypeVar("T")

DEFAULT_ENDPOINTS = "127.0.0.1:2379"


@dataclass(frozen=True)
class Ctx:
    endpoints: list[str]
    output: str
    timeout_s: float


def run(ctx: Ctx, fn: Callable[[Client], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Client(ctx.endpoints, timeout_s=ctx.timeout_s) as client:
            return await fn(client)

    try:
        return asyncio.run(main())
    except ConcordError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)


def emit(ctx: Ctx, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if ctx.output == "json":
        click.echo(json.dumps(list(rows), indent=2))
        return
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        click.echo(
            "  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True))
        )


@click.group()
@click.option(
    "--endpoints",
    envvar="CONCORD_ENDPOINTS",
    default=DEFAULT_ENDPOINTS,
    show_default=True,
    help="Comma-separated client addresses of any members (env CONCORD_ENDPOINTS).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True)
@click.pass_context
def cli(click_ctx: click.Context, endpoints: str, output: str, timeout_s: float) -> None:
    """Talk to a Concord cluster: keys, compare-and-swap, leases, locks, sequences, members."""
    eps = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not eps:
        raise click.BadParameter("give at least one host:port", param_hint="--endpoints")
    click_ctx.obj = Ctx(eps, output, timeout_s)


# --- keys ----------------------------------------------------------------------------------


@cli.command()
@click.argument("key")
@click.argument("value")
@click.pass_obj
def put(ctx: Ctx, key: str, value: str) -> None:
    """Set KEY to VALUE."""
    rev = run(ctx, lambda c: c.put(key.encode(), value.encode()))
    emit(ctx, [{"key": key, "revision": rev}], ["key", "revision"])


@cli.command()
@click.argument("key")
@click.option(
    "--serializable", is_flag=True, help="Read locally; may be stale; works without quorum."
)
@click.pass_obj
def get(ctx: Ctx, key: str, serializable: bool) -> None:
    """Print KEY's value (exit 1 if absent)."""
    kv = run(ctx, lambda c: c.get(key.encode(), serializable=serializable))
    if kv is None:
        click.echo(f"Error: key {key!r} not found", err=True)
        sys.exit(1)
    emit(
        ctx,
        [
            {
                "key": key,
                "value": kv.value.decode(errors="replace"),
                "version": kv.version,
                "mod_revision": kv.mod_revision,
            }
        ],
        ["key", "value", "version", "mod_revision"],
    )


@cli.command(name="del")
@click.argument("key")
@click.pass_obj
def delete(ctx: Ctx, key: str) -> None:
    """Delete KEY."""
    n = run(ctx, lambda c: c.delete(key.encode()))
    emit(ctx, [{"key": key, "deleted": n}], ["key", "deleted"])


@cli.command()
@click.argument("key")
@click.argument("expected")
@click.argument("new")
@click.option(
    "--absent", is_flag=True, help="Succeed only if KEY does not exist (EXPECTED ignored)."
)
@click.pass_obj
def cas(ctx: Ctx, key: str, expected: str, new: str, absent: bool) -> None:
    """Set KEY to NEW iff its value is EXPECTED (exit 1 if it was not)."""
    exp = None if absent else expected.encode()
    ok = run(ctx, lambda c: c.cas(key.encode(), exp, new.encode()))
    emit(ctx, [{"key": key, "swapped": ok}], ["key", "swapped"])
    if not ok:
        sys.exit(1)


# --- sequences ------------------------------------------------------------------------------


@cli.group()
def seq() -> None:
    """Globally ordered sequences: values are never reissued."""


@seq.command(name="create")
@click.argument("name")
@click.option("--start", type=int, default=1, show_default=True)
@click.option("--increment", type=int, default=1, show_default=True)
@click.pass_obj
def seq_create(ctx: Ctx, name: str, start: int, increment: int) -> None:
    run(ctx, lambda c: c.sequence_create(name, start, increment))
    emit(
        ctx,
        [{"sequence": name, "start": start, "increment": increment}],
        ["sequence", "start", "increment"],
    )


@seq.command(name="next")
@click.argument("name")
@click.option("-n", "count", type=click.IntRange(1, 1_000_000), default=1, show_default=True)
@click.pass_obj
def seq_next(ctx: Ctx, name: str, count: int) -> None:
    values = run(ctx, lambda c: c.sequence_next(name, count))
    emit(ctx, [{"sequence": name, "value": v} for v in values], ["sequence", "value"])


# --- locks ----------------------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--ttl", "ttl_ms", type=click.IntRange(1000), default=10_000, show_default=True)
@click.pass_obj
def lock(ctx: Ctx, name: str, command: tuple[str, ...], ttl_ms: int) -> None:
    """Run COMMAND while holding lock NAME (use `--` before COMMAND).

    The child gets CONCORD_LOCK_NAME and CONCORD_FENCING_TOKEN in its environment; pass the
    token to whatever it writes, which can check it with `concordctl fence`. If the lock is
    lost (the lease cannot be renewed), the child is killed. Exits with the child's status.
    """

    async def hold(c: Client) -> int:
        lease = await c.lease_grant(ttl_ms)
        held = await c.acquire(name, lease)
        env = dict(
            os.environ, CONCORD_LOCK_NAME=name, CONCORD_FENCING_TOKEN=str(held.fencing_token)
        )
        child = await asyncio.create_subprocess_exec(*command, env=env)
        keeper = asyncio.create_task(_renew_until_lost(c, lease, ttl_ms))
        waiter = asyncio.create_task(child.wait())
        done, _ = await asyncio.wait({keeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if keeper in done:
            click.echo(
                f"Error: lost lock {name!r} (lease {lease} ended); killing the command", err=True
            )
            child.terminate()
            try:
                await asyncio.wait_for(waiter, 5)
            except TimeoutError:
                child.kill()
            await waiter
            return 1
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConcordError):
            await keeper
        with contextlib.suppress(ConcordError):
            await c.release(held)
            await c.lease_revoke(lease)
        return int(waiter.result())

    code = run(ctx, hold)
    sys.exit(code if code >= 0 else 128 - code)


async def _renew_until_lost(c: Client, lease: int, ttl_ms: int) -> None:
    while True:
        await asyncio.sleep(ttl_ms / 3000)
        try:
            await c.lease_keepalive_once(lease)
        except ConcordError:
            return


@cli.command()
@click.argument("name")
@click.argument("token", type=int)
@click.pass_obj
def fence(ctx: Ctx, name: str, token: int) -> None:
    """Exit 0 iff TOKEN is a current fencing token of lock NAME."""
    ok = run(ctx, lambda c: c.check_fence(name, token))
    emit(ctx, [{"lock": name, "token": token, "current": ok}], ["lock", "token", "current"])
    sys.exit(0 if ok else 1)


# --- cluster --------------------------------------------------------------------------------


@cli.group()
def member() -> None:
    """Cluster membership (as `docker node ls` shows managers)."""


@member.command(name="list")
@click.pass_obj
def member_list(ctx: Ctx) -> None:
    resp = run(ctx, lambda c: c.members())
    status = {0: "Unknown", 1: "Leader", 2: "Reachable", 3: "Unreachable"}
    role = {0: "voter", 1: "learner"}
    rows = [
        {
            "id": m.id,
            "name": m.name,
            "status": status.get(m.status, "?"),
            "role": role.get(m.role, "?"),
            "match": m.match_index,
            "peer": m.peer_url,
            "client": m.client_url,
        }
        for m in resp.members
    ]
    emit(ctx, rows, ["id", "name", "status", "role", "match", "peer", "client"])


@cli.command()
@click.pass_obj
def status(ctx: Ctx) -> None:
    """The answering member's view: leader, role, indexes."""
    s = run(ctx, lambda c: c.status())
    emit(
        ctx,
        [
            {
                "member": s.header.member_id,
                "leader": s.leader,
                "role": s.role,
                "term": s.header.raft_term,
                "commit": s.commit_index,
                "applied": s.applied_index,
                "locked": s.locked,
            }
        ],
        ["member", "leader", "role", "term", "commit", "applied", "locked"],
    )


# --- local maintenance (reads a data directory; no cluster needed) ----------------------------


@cli.group()
def rafttool() -> None:
    """Inspect a member's data directory offline (Swarm's swarm-rafttool)."""


@rafttool.command(name="dump")
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--unlock-key",
    envvar="CONCORD_UNLOCK_KEY",
    default=None,
    help="The unlock key, for an autolocked member (env CONCORD_UNLOCK_KEY).",
)
@click.pass_obj
def rafttool_dump(ctx: Ctx, data_dir: str, unlock_key: str | None) -> None:
    """Decrypt and print every snapshot and log record of DATA_DIR."""
    from coordinator.storage import StorageError, dump  # noqa: PLC0415 (offline tool only)

    try:
        records = dump(data_dir, unlock_key)
        for rec in records:
            if ctx.output == "json":
                click.echo(
                    json.dumps(
                        {
                            "source": rec.source,
                            "offset": rec.offset,
                            "type": rec.type,
                            "index": rec.index,
                            "term": rec.term,
                            "data": rec.data.decode(errors="backslashreplace"),
                        }
                    )
                )
            else:
                click.echo(rec.describe())
    except StorageError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    cli(prog_name="concordctl")


if __name__ == "__main__":
    main()
