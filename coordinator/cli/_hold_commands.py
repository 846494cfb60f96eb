"""`concordctl lock`, `fence` and `elect`: hold a lock or a leadership, with its lease kept
alive, while a command runs (or until interrupted), then let go."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys

import click

from coordinator.client import Client

from ._common import EXIT_FAILED, EXIT_INTERRUPTED, Ctx, emit, fail, interrupts, wait_first
from ._connect import run
from ._params import DURATION


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--ttl",
    "ttl_ms",
    type=DURATION,
    default="10s",
    show_default=True,
    help="Lease TTL (e.g. 10s, 1m; at least 1s): how soon others get the lock if we die.",
)
@click.option(
    "--timeout",
    "timeout_ms",
    type=DURATION,
    default=None,
    help="Give up (exit 1) if the lock is not held within this long (default: wait forever).",
)
@click.pass_obj
def lock(
    ctx: Ctx, name: str, command: tuple[str, ...], ttl_ms: int, timeout_ms: int | None
) -> None:
    """Run COMMAND while holding lock NAME (use `--` before COMMAND).

    The child gets CONCORD_LOCK_NAME and CONCORD_FENCING_TOKEN in its environment; pass the
    token to whatever it writes, which can check it with `concordctl fence`. If the lock is
    lost (its lease ended, or could not be renewed within its TTL), the child is killed.
    The lock is released however this ends.

    \b
    Exit status:
      COMMAND's own status (128+N if a signal N ended it);
      1   the lock was not held within --timeout, was lost (COMMAND killed), or the
          cluster refused;
      126 COMMAND could not be executed, 127 COMMAND was not found (as a shell says);
      130 interrupted (SIGINT, SIGTERM): COMMAND is sent SIGTERM, the lock released.
    """

    if ttl_ms < 1000:
        raise click.BadParameter("must be at least 1s", param_hint="--ttl")
    timeout_s = None if timeout_ms is None else timeout_ms / 1000

    async def hold(c: Client) -> int:
        with interrupts() as stop:
            main = asyncio.ensure_future(_run_locked(c, name, command, ttl_ms, timeout_s))
            if await wait_first(main, stop):
                return main.result()
            main.cancel()  # stops the child (if it runs) and releases the lock on the way out
            with contextlib.suppress(asyncio.CancelledError):
                await main
            click.echo(f"interrupted; lock {name!r} released (or the wait withdrawn)", err=True)
            return EXIT_INTERRUPTED

    code = run(ctx, hold)
    sys.exit(code if code >= 0 else 128 - code)


EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


async def _run_locked(
    c: Client, name: str, command: tuple[str, ...], ttl_ms: int, timeout_s: float | None
) -> int:
    """Hold the lock while the child runs; the exit status (see `lock`)."""
    async with c.lock(name, ttl_ms=ttl_ms, timeout_s=timeout_s) as held:
        env = dict(
            os.environ, CONCORD_LOCK_NAME=name, CONCORD_FENCING_TOKEN=str(held.fencing_token)
        )
        try:
            child = await asyncio.create_subprocess_exec(*command, env=env)
        except FileNotFoundError:
            click.echo(f"Error: {command[0]}: command not found", err=True)
            return EXIT_NOT_FOUND
        except OSError as err:
            click.echo(f"Error: {command[0]}: cannot run it: {err.strerror}", err=True)
            return EXIT_CANNOT_EXECUTE
        waiter = asyncio.ensure_future(child.wait())
        try:
            if await wait_first(waiter, held.lost):
                return waiter.result()
            click.echo(f"Error: {held.error}; killing the command", err=True)
            return EXIT_FAILED
        finally:
            if not waiter.done():
                await _stop_child(child, waiter)


async def _stop_child(child: asyncio.subprocess.Process, waiter: asyncio.Future[int]) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 5 s."""
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        await asyncio.wait_for(asyncio.shield(waiter), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await waiter


@click.command()
@click.argument("name")
@click.argument("token", type=int)
@click.pass_obj
def fence(ctx: Ctx, name: str, token: int) -> None:
    """Exit 0 iff TOKEN is a current fencing token of lock NAME."""
    ok = run(ctx, lambda c: c.check_fence(name, token))
    emit(ctx, [{"lock": name, "token": token, "current": ok}], ["lock", "token", "current"])
    sys.exit(0 if ok else 1)


# --- elections ------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.argument("value", required=False)
@click.option("--leader", "show_leader", is_flag=True, help="Print NAME's current leader.")
@click.option(
    "--ttl", type=DURATION, default="10s", show_default=True, help="The campaign's lease."
)
@click.option(
    "--timeout",
    "timeout_ms",
    type=DURATION,
    default=None,
    help="Give up (exit 1) if not elected within this long (default: wait forever).",
)
@click.pass_obj
def elect(
    ctx: Ctx,
    name: str,
    *,
    value: str | None,
    show_leader: bool,
    ttl: int,
    timeout_ms: int | None,
) -> None:
    """Campaign in election NAME with VALUE: wait until elected, print it, and lead until
    Ctrl-C (or SIGTERM), then resign. With --leader: print NAME's current leader (exit 1 if
    none).

    The leadership lives on a lease kept alive meanwhile.

    \b
    Exit status:
      1   not elected within --timeout (the campaign is withdrawn), the leadership was
          lost (its lease ended, or could not be renewed within its TTL), or the cluster
          refused;
      130 interrupted (SIGINT, SIGTERM): resigned, or the campaign withdrawn.
    """
    if show_leader:
        if value is not None:
            raise click.UsageError("--leader takes only NAME, no VALUE")
        _print_leader(ctx, name)
        return
    if value is None:
        raise click.UsageError("give VALUE to campaign with (or --leader to show the leader)")
    timeout_s = None if timeout_ms is None else timeout_ms / 1000
    code = run(
        ctx,
        lambda c: _campaign(
            ctx, c, name=name, value=value.encode(), ttl_ms=ttl, timeout_s=timeout_s
        ),
    )
    sys.exit(code)


def _print_leader(ctx: Ctx, name: str) -> None:
    leadership = run(ctx, lambda c: c.leader(name))
    if leadership is None:
        fail(f"election {name!r} has no leader")
    row = {
        "election": name,
        "value": leadership.value.decode(errors="backslashreplace"),
        "lease": leadership.lease,
        "fencing_token": leadership.fencing_token,
    }
    emit(ctx, [row], ["election", "value", "lease", "fencing_token"])


async def _campaign(
    ctx: Ctx, c: Client, *, name: str, value: bytes, ttl_ms: int, timeout_s: float | None
) -> int:
    """Campaign, lead until interrupted, resign; the exit status."""
    with interrupts() as stop:
        elected = asyncio.Event()
        click.echo(f"campaigning in {name!r}; Ctrl-C to stop", err=True)
        lead = _lead(
            ctx, c, name, value, ttl_ms=ttl_ms, timeout_s=timeout_s, stop=stop, elected=elected
        )
        main = asyncio.ensure_future(lead)
        if await wait_first(main, stop) or elected.is_set():
            return await main  # once elected, _lead itself resigns on `stop`
        main.cancel()  # leaving the campaign revokes its lease: the candidacy is withdrawn
        with contextlib.suppress(asyncio.CancelledError):
            await main
        click.echo("interrupted before being elected; withdrawn", err=True)
        return EXIT_INTERRUPTED


async def _lead(
    ctx: Ctx,
    c: Client,
    name: str,
    value: bytes,
    *,
    ttl_ms: int,
    timeout_s: float | None,
    stop: asyncio.Event,
    elected: asyncio.Event,
) -> int:
    async with c.leadership(name, value, ttl_ms=ttl_ms, timeout_s=timeout_s) as lead:
        elected.set()
        row = {
            "election": name,
            "value": value.decode(errors="backslashreplace"),
            "lease": lead.lease,
            "fencing_token": lead.fencing_token,
        }
        if ctx.json:
            click.echo(json.dumps(row))
        else:
            click.echo(
                f"elected: {name} = {row['value']} (lease {lead.lease}, fencing token "
                f"{lead.fencing_token}); leading until Ctrl-C"
            )
        lost = asyncio.ensure_future(lead.wait_lost())
        try:
            if await wait_first(lost, stop):
                click.echo(f"Error: {lost.result()}", err=True)
                return EXIT_FAILED
        finally:
            lost.cancel()
        # Resign explicitly (not only by the lease's revoke on the way out) so that "resigned"
        # is printed only once the cluster has said so.
        await c.resign(lead.leadership)
        click.echo(f"resigned from {name!r}", err=True)
        return EXIT_INTERRUPTED
