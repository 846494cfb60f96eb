"""concordctl's online commands that are thin shells over `coordinator.client.Client`: keys
(put/get/del/cas, watch), leases, locks and fencing, elections, sequences, members and status.
Errors from the service are printed as one line with the gRPC status and the server's advice
(`_common.py` has the exit statuses and output helpers, `_connect.py` the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

import click

from coordinator.client import (
    Client,
    Event,
    EventType,
    KeyValue,
    prefix_end,
)

from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    Ctx,
    emit,
    fail,
    interrupts,
    wait_first,
)
from ._connect import run


class Duration(click.ParamType[int]):
    """A duration > 0: seconds (`10`, `2.5`), or with a unit: `500ms`, `10s`, `5m`, `1h`."""

    name = "DURATION"
    _UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        """The duration in milliseconds."""
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        scale = 1.0
        for unit, factor in self._UNITS:
            if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
                text, scale = text[: -len(unit)], factor
                break
        try:
            ms = round(float(text) * scale * 1000)
        except ValueError:
            self.fail(f"{value!r} is not a duration (e.g. 30, 30s, 500ms, 5m)", param, ctx)
        if ms <= 0:
            self.fail(f"{value!r}: the TTL must be > 0 (leases live 1 s to 1 day)", param, ctx)
        return ms


DURATION = Duration()
ID = click.IntRange(min=1)


# --- keys ----------------------------------------------------------------------------------


@click.command()
@click.argument("key")
@click.argument("value")
@click.option("--lease", type=ID, default=None, help="Delete KEY when this lease ends.")
@click.pass_obj
def put(ctx: Ctx, key: str, value: str, lease: int | None) -> None:
    """Set KEY to VALUE."""
    rev = run(ctx, lambda c: c.put(key.encode(), value.encode(), lease or 0))
    emit(ctx, [{"key": key, "revision": rev}], ["key", "revision"])


_KV_COLUMNS = ["key", "value", "version", "mod_revision"]


def _kv_row(kv: KeyValue) -> dict[str, Any]:
    return {
        "key": kv.key.decode(errors="backslashreplace"),
        "value": kv.value.decode(errors="replace"),
        "version": kv.version,
        "mod_revision": kv.mod_revision,
    }


@click.command()
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Every key that starts with KEY (KEY may be '').")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="With --prefix: at most this many keys (in key order).",
)
@click.option(
    "--serializable", is_flag=True, help="Read locally; may be stale; works without quorum."
)
@click.pass_obj
def get(ctx: Ctx, key: str, prefix: bool, limit: int | None, serializable: bool) -> None:
    """Print KEY's value (exit 1 if absent), or with --prefix every key under KEY (none
    found: an empty table, exit 0)."""
    if limit is not None and not prefix:
        raise click.UsageError("--limit goes with --prefix")
    if prefix:
        kvs = run(
            ctx,
            lambda c: c.get_prefix(key.encode(), limit=limit or 0, serializable=serializable),
        )
        emit(ctx, [_kv_row(kv) for kv in kvs], _KV_COLUMNS)
        return
    found = run(ctx, lambda c: c.get(key.encode(), serializable=serializable))
    if found is None:
        fail(f"key {key!r} not found")
    emit(ctx, [_kv_row(found)], _KV_COLUMNS)


@click.command(name="del")
@click.argument("key")
@click.pass_obj
def delete(ctx: Ctx, key: str) -> None:
    """Delete KEY."""
    n = run(ctx, lambda c: c.delete(key.encode()))
    emit(ctx, [{"key": key, "deleted": n}], ["key", "deleted"])


@click.command()
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


_WATCH_COLUMNS = (("revision", 9), ("type", 9), ("key", 24), ("value", 0))


def _event_row(e: Event) -> dict[str, Any]:
    key = e.kv.key.decode(errors="backslashreplace")
    row: dict[str, Any] = {"revision": e.revision, "type": e.type.value, "key": key}
    if e.type in (EventType.PUT, EventType.SEQUENCE) or (
        e.type == EventType.ELECTION and e.kv.version
    ):
        row["value"] = e.kv.value.decode(errors="backslashreplace")
    if e.type in (EventType.LOCK, EventType.UNLOCK, EventType.ELECTION):
        row["lease"] = e.kv.lease
        row["fencing_token"] = e.kv.version
    if e.type == EventType.MEMBER:
        row["member"] = e.kv.version
        row["value"] = e.kv.value.decode(errors="backslashreplace")
    return row


def _event_line(row: dict[str, Any]) -> str:
    value = str(row.get("value", ""))
    details = [f"{k}={row[k]}" for k in ("lease", "fencing_token", "member") if k in row]
    cells = [str(row["revision"]), str(row["type"]), str(row["key"]), value, *details]
    widths = [w for _, w in _WATCH_COLUMNS] + [0] * len(details)
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


@click.command()
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Every key that starts with KEY.")
@click.option(
    "--rev",
    "start_revision",
    type=click.IntRange(min=1),
    default=None,
    help="Replay from this revision (default: changes from now on).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many events (default: until Ctrl-C).",
)
@click.pass_obj
def watch(ctx: Ctx, key: str, prefix: bool, start_revision: int | None, limit: int | None) -> None:
    """Print every change to KEY (or under a prefix) as it happens, until Ctrl-C.

    Also shows locks, elections, sequences and members named KEY. `-o json` prints one
    JSON object per line.
    """
    raw = key.encode()
    range_end = prefix_end(raw) if prefix else b""

    async def follow(c: Client) -> None:
        if not ctx.json:
            click.echo(_event_line({n: n.upper() for n, _ in _WATCH_COLUMNS}))
        seen = 0
        async for event in c.watch(raw, range_end, start_revision=start_revision or 0):
            row = _event_row(event)
            click.echo(json.dumps(row) if ctx.json else _event_line(row))
            seen += 1
            if limit is not None and seen >= limit:
                return

    async def until_interrupted(c: Client) -> bool:
        with interrupts() as stop:
            task = asyncio.ensure_future(follow(c))
            if not await wait_first(task, stop):
                task.cancel()  # Ctrl-C: the normal way to end a watch
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return True
            task.result()
            return False

    if run(ctx, until_interrupted):
        # Ended by Ctrl-C or SIGTERM, not by --limit: say so in the status, as the README's
        # exit codes promise (a script can tell a watch that saw all it asked for from one
        # that was stopped), but quietly: it is the normal way to end a watch.
        sys.exit(EXIT_INTERRUPTED)


# --- leases ---------------------------------------------------------------------------------


@click.group()
def lease() -> None:
    """Leases: a TTL that ends unless kept alive, and takes its keys and locks with it."""


@lease.command(name="grant", context_settings={"ignore_unknown_options": True})
@click.argument("ttl", type=DURATION)
@click.pass_obj
def lease_grant(ctx: Ctx, ttl: int) -> None:
    """Grant a lease of TTL (seconds, or 500ms/10s/5m/1h); prints its id.

    Nothing keeps it alive: it ends after TTL unless something renews it.
    """
    lease_id = run(ctx, lambda c: c.lease_grant(ttl))
    emit(ctx, [{"id": lease_id, "ttl_ms": ttl}], ["id", "ttl_ms"])


@lease.command(name="revoke")
@click.argument("lease_id", metavar="ID", type=ID)
@click.pass_obj
def lease_revoke(ctx: Ctx, lease_id: int) -> None:
    """End lease ID now: its keys are deleted and its locks released."""
    run(ctx, lambda c: c.lease_revoke(lease_id))
    emit(ctx, [{"id": lease_id, "revoked": True}], ["id", "revoked"])


@lease.command(name="ttl")
@click.argument("lease_id", metavar="ID", type=ID)
@click.pass_obj
def lease_ttl(ctx: Ctx, lease_id: int) -> None:
    """Lease ID's TTL and the time it has left."""
    info = run(ctx, lambda c: c.lease_time_to_live(lease_id))
    emit(
        ctx,
        [{"id": info.id, "ttl_ms": info.ttl_ms, "remaining_ms": info.remaining_ms}],
        ["id", "ttl_ms", "remaining_ms"],
    )


# --- sequences ------------------------------------------------------------------------------


@click.group()
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


# --- cluster --------------------------------------------------------------------------------


@click.group()
def member() -> None:
    """Cluster membership (as `docker node ls` shows managers)."""


@member.command(name="list")
@click.pass_obj
def member_list(ctx: Ctx) -> None:
    resp = run(ctx, lambda c: c.members())
    rows = [
        {
            "id": m.id,
            "name": m.name,
            "status": m.status.capitalize(),
            "role": m.role,
            "match": m.match_index,
            "peer": m.peer_url,
            "client": m.client_url,
        }
        for m in resp.members
    ]
    emit(ctx, rows, ["id", "name", "status", "role", "match", "peer", "client"])


@member.command(name="add")
@click.argument("member_id", metavar="ID", type=ID)
@click.argument("name")
@click.argument("peer_url")
@click.argument("client_url")
@click.option(
    "--readmit",
    is_flag=True,
    help="ID was removed earlier and this is that same member coming back (its old process "
    "surely gone): allow the id again, which is otherwise never reused",
)
@click.pass_obj
def member_add(  # noqa: PLR0917 (click passes every option)
    ctx: Ctx, member_id: int, name: str, peer_url: str, client_url: str, readmit: bool
) -> None:
    """Add member ID as a non-voting learner; promote it once it has caught up."""
    run(
        ctx,
        lambda c: c.member_add_learner(member_id, name, peer_url, client_url, readmit=readmit),
    )
    emit(ctx, [{"id": member_id, "name": name, "role": "learner"}], ["id", "name", "role"])
    if not ctx.json:
        click.echo(
            f"next: start member {member_id}, then `concordctl member promote {member_id}` "
            "once its match index has caught up (`member list`)",
            err=True,
        )


@member.command(name="promote")
@click.argument("member_id", metavar="ID", type=ID)
@click.pass_obj
def member_promote(ctx: Ctx, member_id: int) -> None:
    """Make learner ID a voter (refused while it lags behind the leader)."""
    run(ctx, lambda c: c.member_promote(member_id))
    emit(ctx, [{"id": member_id, "role": "voter"}], ["id", "role"])


@member.command(name="remove")
@click.argument("member_id", metavar="ID", type=ID)
@click.pass_obj
def member_remove(ctx: Ctx, member_id: int) -> None:
    """Remove member ID (to remove the leader, transfer leadership first)."""
    run(ctx, lambda c: c.member_remove(member_id))
    emit(ctx, [{"id": member_id, "removed": True}], ["id", "removed"])


@member.command(name="transfer")
@click.argument("member_id", metavar="ID", type=ID)
@click.pass_obj
def member_transfer(ctx: Ctx, member_id: int) -> None:
    """Hand the leadership to voter ID; returns once it leads."""
    run(ctx, lambda c: c.transfer_leader(member_id))
    emit(ctx, [{"leader": member_id}], ["leader"])


@click.command()
@click.pass_obj
def status(ctx: Ctx) -> None:
    """The answering member's view: leader, role, indexes."""
    s = run(ctx, lambda c: c.status())
    emit(
        ctx,
        [
            {
                "member": s.member_id,
                "leader": s.leader,
                "role": s.role,
                "term": s.term,
                "commit": s.commit_index,
                "applied": s.applied_index,
                "locked": s.locked,
            }
        ],
        ["member", "leader", "role", "term", "commit", "applied", "locked"],
    )


COMMANDS: tuple[click.Command, ...] = (
    put,
    get,
    delete,
    cas,
    watch,
    lease,
    seq,
    lock,
    fence,
    elect,
    member,
    status,
)
"""Every command of this module, for the `concordctl` group (main.py)."""
