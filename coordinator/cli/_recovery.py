"""concordctl's disaster recovery: `snapshot save|status|restore` and `cluster recover`.

**Backups** (etcd's `snapshot save` / `etcdutl snapshot restore`, sealed like Swarm's raft
data). `snapshot save FILE` streams a consistent image of the state machine from the leader
(after a read barrier: it holds every write acknowledged before the call), or from the member
named by `--endpoint`, and writes it as an encrypted, checksummed backup file
(`coordinator.storage.backup`): a fresh file key wrapped under a *backup key* that only
people hold. The key is the one given (`--backup-key`, env CONCORD_BACKUP_KEY) or a new one
printed once (or as Shamir shares, `--shares K/N`). The member sees the plaintext image,
never the backup key. `snapshot status FILE` prints the header (and with the key, verifies
every record and the SHA-256). `snapshot restore FILE` builds a new member data dir from it
(`coordinator.runtime.recovery.restore_data_dir`): run it once per member of the new
cluster, each with its own `--id` and the same `--initial-cluster`, then start them.

**Lost quorum.** `cluster recover` shows each survivor's last log term and index (online: a
Status call on every endpoint, answered locally, without a quorum; offline: each data dir's
WAL, read-only), picks the most up-to-date by Raft's rule (higher last term, then higher last
index), and prints the command that restarts it alone (`concord-coordinator
--force-new-cluster`). Unreachable and locked members are rows, not errors. When a quorum of
the configuration is still reachable (or a member says it leads), it warns and prints no
command: the cluster recovers by itself, and forcing would throw the other members out.

Exit status as everywhere (`_common.py`): 0 done, 1 refused or failed (a wrong key, a damaged
file, no survivor), 2 bad input, nothing done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import Client, ConcordError
from coordinator.storage import (
    InvalidBackupKeyError,
    LockedError,
    StorageError,
    WrongUnlockKeyError,
    log_position,
)
from coordinator.storage.backup import (
    encode_backup,
    new_backup_key,
    parse_backup_key,
    split_backup_key,
    write_backup,
)

from . import _connect
from ._common import EXIT_INTERRUPTED, Ctx, emit, fail, warn
from ._keyshares import SHARES, offline_unlock_keys
from ._restore import (
    BACKUP_KEY_WARNING,
    snapshot_restore,
    snapshot_status,
)


@dataclass
class _Image:
    info: pb.SnapshotInfo
    data: bytes


async def _fetch_image(
    c: Client, endpoint: str | None, serializable: bool, timeout_s: float
) -> _Image:
    request = pb.SnapshotRequest(any_member=endpoint is not None, serializable=serializable)

    async def stream(stubs: Any) -> _Image:  # noqa: ANN401 (the client's generated stubs)
        info: pb.SnapshotInfo | None = None
        parts: list[bytes] = []
        digest = b""
        async for chunk in stubs.maintenance.Snapshot(request, timeout=timeout_s):
            match chunk.WhichOneof("part"):
                case "info":
                    info = chunk.info
                case "data":
                    parts.append(bytes(chunk.data))
                case "sha256":
                    digest = bytes(chunk.sha256)
        image = b"".join(parts)
        if info is None or not digest:
            raise ConcordError("DATA_LOSS", "the snapshot stream ended early; try again")
        if len(image) != info.size_bytes or hashlib.sha256(image).digest() != digest:
            raise ConcordError(
                "DATA_LOSS",
                f"the image arrived damaged ({len(image)} bytes of {info.size_bytes}, or its "
                "SHA-256 does not match the member's); nothing was written; try again",
            )
        return _Image(info, image)

    if endpoint is not None:
        return await c.call_endpoint(endpoint, stream)
    return await c.call(stream)


def _show_new_key(key: str, shares: tuple[int, int] | None, file: Path) -> None:
    if shares is None:
        click.echo(f"\nBackup key of {file}:\n\n    {key}\n")
        click.echo(
            "Warning: " + BACKUP_KEY_WARNING.format(what="The backup key above is", them="it"),
            err=True,
        )
        return
    k, n = shares
    click.echo(f"\nBackup key of {file}, as {n} shares (any {k} of them restore it):\n")
    for i, share in enumerate(split_backup_key(key, k, n), start=1):
        click.echo(f"    share {i}: {share}")
    click.echo("")
    click.echo(
        "Warning: "
        + BACKUP_KEY_WARNING.format(
            what="The shares above are", them="each with a different person"
        ),
        err=True,
    )


@click.group()
def snapshot() -> None:
    """Back up the state machine to an encrypted file; inspect or restore one."""


@snapshot.command(name="save")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--endpoint",
    default=None,
    help="Take the image from this member (default: the leader, found through --endpoints).",
)
@click.option(
    "--serializable",
    is_flag=True,
    help="With --endpoint: skip the read barrier (works without a quorum; may be stale).",
)
@click.option(
    "--backup-key",
    envvar="CONCORD_BACKUP_KEY",
    default=None,
    help="Encrypt under this backup key (env CONCORD_BACKUP_KEY); default: a new one, printed.",
)
@click.option(
    "--shares",
    type=SHARES,
    default=None,
    help="Print the new backup key as N Shamir shares, any K of which restore (e.g. 2/3).",
)
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
@click.pass_obj
def snapshot_save(
    ctx: Ctx,
    *,
    file: Path,
    endpoint: str | None,
    serializable: bool,
    backup_key: str | None,
    shares: tuple[int, int] | None,
    overwrite: bool,
) -> None:
    """Write a consistent, encrypted backup of the cluster's state to FILE.

    The image is taken on the leader after a read barrier, so it holds every write
    acknowledged before this command started (or on --endpoint's member). FILE is written
    to FILE.tmp, fsynced and renamed. Without --backup-key a new key is printed once.
    """
    if serializable and endpoint is None:
        raise click.UsageError("--serializable goes with --endpoint (a member to read from)")
    if backup_key is not None and shares is not None:
        raise click.UsageError("--shares splits a new key; it does not go with --backup-key")
    if backup_key is not None:
        try:
            parse_backup_key(backup_key)
        except InvalidBackupKeyError as err:
            raise click.UsageError(f"--backup-key: {err}") from None
    if file.exists() and not overwrite:
        raise click.UsageError(f"{file} exists: choose another name, or pass --overwrite")
    if not file.absolute().parent.is_dir():
        raise click.UsageError(f"the directory of {file} does not exist")
    key = backup_key or new_backup_key()

    async def fetch() -> _Image:
        async with _connect.client(ctx) as c:
            return await _fetch_image(c, endpoint, serializable, ctx.timeout_s)

    image = _run(fetch())
    info = image.info
    try:
        data = encode_backup(
            image=image.data,
            backup_key=key,
            cluster_id=info.cluster_id,
            index=info.index,
            term=info.term,
            created_ms=int(time.time() * 1000),
            source_member=info.member_id,
            revision=info.revision,
            voters=info.voters,
            learners=info.learners,
            key_shares=shares or (0, 0),
        )
        write_backup(file, data)
    except OSError as err:
        fail(f"cannot write {file}: {err.strerror or err}")
    row: dict[str, Any] = {
        "file": str(file),
        "member": info.member_id,
        "index": info.index,
        "term": info.term,
        "revision": info.revision,
        "voters": ",".join(map(str, info.voters)),
        "image_bytes": len(image.data),
        "file_bytes": len(data),
    }
    columns = ["file", "member", "index", "term", "revision", "voters", "image_bytes"]
    if ctx.json:
        if backup_key is None:
            if shares is None:
                row["backup_key"] = key
            else:
                row["threshold"] = shares[0]
                row["backup_shares"] = split_backup_key(key, *shares)
        click.echo(json.dumps(row, indent=2))
        return
    emit(ctx, [row], columns)
    if backup_key is None:
        _show_new_key(key, shares, file)


# --- snapshot status ----------------------------------------------------------------------------


snapshot.add_command(snapshot_status)
snapshot.add_command(snapshot_restore)


@dataclass
class Survivor:
    """One member as `cluster recover` sees it."""

    where: str
    """The endpoint asked, or the data dir read."""
    member: int | None
    state: str
    """reachable / readable (usable), unreachable, locked, error."""
    role: str = ""
    term: int = 0
    last_term: int = 0
    last_index: int = 0
    commit: int = 0
    applied: int | None = None
    leader: int = 0
    voters: tuple[int, ...] = ()
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.state in ("reachable", "readable")

    def row(self) -> dict[str, Any]:
        usable = self.usable
        return {
            "where": self.where,
            "member": self.member if self.member is not None else "",
            "state": self.state,
            "role": self.role,
            "term": self.term if usable else "",
            "last_term": self.last_term if usable else "",
            "last_index": self.last_index if usable else "",
            "commit": self.commit if usable else "",
            "applied": "" if self.applied is None else self.applied,
            "voters": ",".join(map(str, self.voters)),
        }

    def json(self) -> dict[str, Any]:
        out = self.row()
        out["member"] = self.member
        out["applied"] = self.applied
        out["voters"] = list(self.voters)
        out["detail"] = self.detail
        return out


def pick_most_up_to_date(survivors: Sequence[Survivor]) -> Survivor | None:
    """The usable survivor whose log is most up to date by Raft's rule: the higher last log
    term wins, then the higher last index. Ties go to the higher commit index, then the
    lower member id, then the first given: deterministic, and any of the tied logs is as
    complete as the others. None if no survivor could be read."""
    usable = [s for s in survivors if s.usable]
    if not usable:
        return None
    order = {id(s): position for position, s in enumerate(usable)}

    def rank(s: Survivor) -> tuple[int, int, int, int, int]:
        member = s.member if s.member is not None else 2**63
        return (s.last_term, s.last_index, s.commit, -member, -order[id(s)])

    return max(usable, key=rank)


def _quorum_warnings(survivors: Sequence[Survivor], pick: Survivor) -> list[str]:
    out = [
        f"member {s.member} at {s.where} says it is the leader: the cluster has a quorum; do "
        "not force a new cluster"
        for s in survivors
        if s.usable and s.role == "leader"
    ]
    voters = set(pick.voters)
    alive: set[int] = set()
    for s in survivors:
        if s.usable and s.member is not None and s.member in voters:
            alive.add(s.member)
    if voters and len(alive) > len(voters) // 2:
        out.append(
            f"members {', '.join(map(str, sorted(alive)))} of the "
            f"{len(voters)} voters are {'reachable' if pick.state == 'reachable' else 'here'}: "
            "that is a quorum, and they can elect a leader by themselves (start or reconnect "
            "them). Forcing a new cluster throws the other members out"
        )
    return out


async def _probe(ctx: Ctx, endpoint: str, timeout_s: float) -> Survivor:
    client = Client(
        [endpoint],
        credentials=_connect.credentials(ctx),
        timeout_s=timeout_s,
        rpc_timeout_s=min(timeout_s, 2.0),
    )
    async with client as c:
        try:
            st: pb.StatusResponse = await c.call_endpoint(
                endpoint, lambda s: s.cluster.Status(pb.StatusRequest(), timeout=timeout_s)
            )
        except ConcordError as err:
            if err.locked:
                member: int | None = None
                with contextlib.suppress(ConcordError):
                    member = int((await c.autolock_status(endpoint)).member_id)
                return Survivor(endpoint, member, "locked", detail=err.message)
            state = "unreachable" if err.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else "error"
            return Survivor(endpoint, None, state, detail=str(err))
    return Survivor(
        endpoint,
        int(st.header.member_id),
        "reachable",
        role=st.role,
        term=int(st.header.raft_term),
        last_term=int(st.last_term),
        last_index=int(st.last_index),
        commit=int(st.commit_index),
        applied=int(st.applied_index),
        leader=int(st.leader),
        voters=tuple(int(v) for v in st.voters),
    )


def _inspect_dir(spec: str, unlock_keys: Sequence[str]) -> Survivor:
    member: int | None = None
    head, sep, rest = spec.partition("=")
    path = spec
    if sep and head.strip().isdigit():
        member, path = int(head), rest
    try:
        try:
            pos = log_position(path)
        except LockedError:
            if not unlock_keys:
                return Survivor(
                    path,
                    member,
                    "locked",
                    detail="autolock is on: give its unlock key (--unlock-key) or K of its "
                    "shares (--share, repeated)",
                )
            for key in unlock_keys:
                try:
                    pos = log_position(path, key)
                    break
                except WrongUnlockKeyError:
                    continue
            else:
                return Survivor(
                    path, member, "locked", detail="none of the unlock keys given opens it"
                )
    except (StorageError, OSError) as err:
        return Survivor(path, member, "error", detail=str(err))
    hs = pos.hard_state
    return Survivor(
        path,
        member,
        "readable",
        term=hs.term,
        last_term=pos.last_term,
        last_index=pos.last_index,
        commit=hs.commit,
        voters=tuple(sorted(pos.conf.voters)),
    )


def _run(coro: Any) -> Any:  # noqa: ANN401 (any coroutine's result)
    try:
        return asyncio.run(coro)
    except ConcordError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)


@click.command(name="recover")
@click.option(
    "--endpoints",
    "recover_endpoints",
    default=None,
    help="Client addresses of the members to ask (default: the global --endpoints).",
)
@click.option(
    "--data-dir",
    "data_dirs",
    multiple=True,
    help="Offline: read this stopped member's data dir instead; [ID=]DIR, repeatable.",
)
@click.option(
    "--unlock-key",
    "unlock_keys",
    multiple=True,
    help="Unlock key of an autolocked --data-dir; repeatable (each is tried on each).",
)
@click.option(
    "--share",
    "shares",
    multiple=True,
    help="A share of an autolocked --data-dir's unlock key; repeatable: K shares of each "
    "member's key (shares of several keys are told apart and each key rebuilt).",
)
@click.option(
    "--member-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Seconds to wait for each member before calling it unreachable.",
)
@click.pass_obj
def recover(
    ctx: Ctx,
    *,
    recover_endpoints: str | None,
    data_dirs: tuple[str, ...],
    unlock_keys: tuple[str, ...],
    shares: tuple[str, ...],
    member_timeout: float,
) -> None:
    """After losing a quorum: find the most up-to-date survivor and print how to restart it
    as a new one-member cluster (`concord-coordinator --force-new-cluster`).

    Online (--endpoints): asks each member for its own status, without a quorum. Offline
    (--data-dir, for stopped members): reads each WAL. Survivors are ranked by last log term,
    then last log index (Raft's "more up-to-date").
    """
    if data_dirs and recover_endpoints is not None:
        raise click.UsageError("give --endpoints (online) or --data-dir (offline), not both")
    if (unlock_keys or shares) and not data_dirs:
        raise click.UsageError(
            "--unlock-key and --share open a --data-dir (offline); online, each member "
            "answers for itself, locked or not"
        )
    keys = offline_unlock_keys(unlock_keys, shares)
    if data_dirs:
        survivors = [_inspect_dir(spec, keys) for spec in data_dirs]
    else:
        endpoints = ctx.endpoints
        if recover_endpoints is not None:
            endpoints = [e.strip() for e in recover_endpoints.split(",") if e.strip()]
        if not endpoints:
            raise click.UsageError("--endpoints: give at least one host:port")

        async def probe_all() -> list[Survivor]:
            return list(await asyncio.gather(*(_probe(ctx, e, member_timeout) for e in endpoints)))

        survivors = _run(probe_all())
    pick = pick_most_up_to_date(survivors)
    warnings = _quorum_warnings(survivors, pick) if pick is not None else []
    command = ""
    if pick is not None and not warnings:
        member = str(pick.member) if pick.member is not None else "<ID>"
        data_dir = pick.where if pick.state == "readable" else "<its data dir>"
        command = (
            f"concord-coordinator --id {member} --data-dir {data_dir} --force-new-cluster "
            "<its other usual flags>"
        )
    if ctx.json:
        out = {
            "survivors": [s.json() for s in survivors],
            "pick": None if pick is None else pick.json(),
            "quorum_reachable": bool(warnings),
            "command": command,
            "warnings": warnings,
        }
        click.echo(json.dumps(out, indent=2))
    else:
        columns = ["where", "member", "state", "role", "term", "last_term", "last_index"]
        columns += ["commit", "applied", "voters"]
        emit(ctx, [s.row() for s in survivors], columns)
        for s in survivors:
            if s.detail:
                click.echo(f"  {s.where}: {s.detail}", err=True)
        if pick is not None:
            who = f"member {pick.member if pick.member is not None else '?'} ({pick.where})"
            click.echo(
                f"\nmost up-to-date: {who}: last log term {pick.last_term}, last index "
                f"{pick.last_index}, commit {pick.commit}."
            )
        if command:
            click.echo(
                "Stop it, then restart it alone with the flags it always runs with plus "
                f"--force-new-cluster:\n\n    {command}\n\n"
                "Once it serves, wipe the other members' data dirs and add them back one at a "
                "time (member add, then promote)."
            )
        elif pick is not None:
            click.echo("A quorum is reachable: no recovery is needed (see the warnings).")
    for w in warnings:
        warn(w)
    if pick is None:
        fail("no survivor could be read: nothing to recover from (see the rows above)")
