"""concordctl's online commands that are thin shells over `coordinator.client.Client`: keys
(put/get/del/cas, watch), leases, sequences, members and status; locks, fencing and elections
are in `_hold_commands.py`, and every one of them is in `COMMANDS` here.
Errors from the service are printed as one line with the gRPC status and the server's advice
(`_common.py` has the exit statuses and output helpers, `_connect.py` the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
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
    EXIT_INTERRUPTED,
    Ctx,
    emit,
    fail,
    interrupts,
    wait_first,
)
from ._connect import run
from ._hold_commands import elect, fence, lock
from ._params import DURATION, ID


def _by_id(param: str) -> Callable[[Any], Any]:
    """The commands that act on one lease or member: its ID as the first argument (passed
    as `param`), after the context."""

    def decorate(fn: Any) -> Any:  # noqa: ANN401 (click decorators are untyped)
        return click.argument(param, metavar="ID", type=ID)(click.pass_obj(fn))

    return decorate


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
@_by_id("lease_id")
def lease_revoke(ctx: Ctx, lease_id: int) -> None:
    """End lease ID now: its keys are deleted and its locks released."""
    run(ctx, lambda c: c.lease_revoke(lease_id))
    emit(ctx, [{"id": lease_id, "revoked": True}], ["id", "revoked"])


@lease.command(name="ttl")
@_by_id("lease_id")
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
@_by_id("member_id")
@click.argument("name")
@click.argument("peer_url")
@click.argument("client_url")
@click.option(
    "--readmit",
    is_flag=True,
    help="ID was removed earlier and this is that same member coming back (its old process "
    "surely gone): allow the id again, which is otherwise never reused",
)
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
@_by_id("member_id")
def member_promote(ctx: Ctx, member_id: int) -> None:
    """Make learner ID a voter (refused while it lags behind the leader)."""
    run(ctx, lambda c: c.member_promote(member_id))
    emit(ctx, [{"id": member_id, "role": "voter"}], ["id", "role"])


@member.command(name="remove")
@_by_id("member_id")
def member_remove(ctx: Ctx, member_id: int) -> None:
    """Remove member ID (to remove the leader, transfer leadership first)."""
    run(ctx, lambda c: c.member_remove(member_id))
    emit(ctx, [{"id": member_id, "removed": True}], ["id", "removed"])


@member.command(name="transfer")
@_by_id("member_id")
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
