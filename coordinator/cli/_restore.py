"""concordctl's offline backup commands `snapshot status FILE` and `snapshot restore FILE`
(etcdutl's side of etcd's split): they read a backup file and write a new member data dir,
and never talk to a cluster. `snapshot save` (online) and the rest of disaster recovery are
in `_recovery.py`, which also says what the backup file holds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from coordinator.fsm import SnapshotDecodeError, StateMachine
from coordinator.runtime.addresses import ConfigError, parse_initial_cluster
from coordinator.runtime.recovery import restore_data_dir
from coordinator.storage import (
    BackupError,
    BackupShareError,
    InvalidBackupKeyError,
    StorageError,
    WrongBackupKeyError,
)
from coordinator.storage.backup import (
    BackupHeader,
    combine_backup_key_shares,
    parse_backup_key,
    read_backup,
    read_backup_header,
)

from ._common import EXIT_FAILED, Ctx, emit, fail, warn

BACKUP_KEY_WARNING = (
    "{what} shown only this once and stored nowhere: store {them} now, apart from the backup "
    "file. Without the key the backup cannot be restored; with it, anyone holding the file can "
    "read everything in it."
)


# --- backup keys from the command line ----------------------------------------------------------


def _read_secret_lines(prompt: str) -> list[str]:
    if sys.stdin.isatty():
        return [str(click.prompt(prompt, hide_input=True, err=True))]
    return [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]


def backup_key_from(key: str | None, shares: Sequence[str]) -> str:
    """The backup key from --backup-key, or from --backup-share (k of them), or read from a
    prompt/stdin; a malformed key or share is a usage error (nothing was read)."""
    if key is not None and shares:
        raise click.UsageError("give either --backup-key or --backup-share, not both")
    if key is None and not shares:
        lines = _read_secret_lines("Backup key")
        if not lines:
            raise click.UsageError(
                "no backup key given: pass --backup-key (or env CONCORD_BACKUP_KEY), "
                "--backup-share (repeated), or type it at the prompt / pipe it into stdin"
            )
        if all(line.upper().startswith("CONCORD-BACKUP-SHARE-") for line in lines):
            shares = lines
        elif len(lines) == 1:
            key = lines[0]
        else:
            raise click.UsageError(
                f"read {len(lines)} lines from stdin: expected one backup key, or its shares "
                "one per line"
            )
    if shares:
        try:
            return combine_backup_key_shares(shares)
        except BackupShareError as err:
            raise click.UsageError(
                f"cannot rebuild the backup key from the shares: {err}"
            ) from None
    assert key is not None
    try:
        parse_backup_key(key)
    except InvalidBackupKeyError as err:
        raise click.UsageError(f"--backup-key: {err}") from None
    return key


def _key_options(fn: Any) -> Any:  # noqa: ANN401 (click decorators are untyped)
    fn = click.option(
        "--backup-share",
        "backup_shares",
        multiple=True,
        help="A share of the backup key; repeat for K shares (from `save --shares K/N`).",
    )(fn)
    return click.option(
        "--backup-key",
        envvar="CONCORD_BACKUP_KEY",
        default=None,
        help="The backup key (CONCORD-BACKUP-...; env CONCORD_BACKUP_KEY).",
    )(fn)


# --- snapshot save ------------------------------------------------------------------------------


def _header_rows(path: Path, h: BackupHeader) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.created_ms / 1000))
    k, n = h.key_shares
    return {
        "file": str(path),
        "format_version": h.format_version,
        "cluster_id": h.cluster_id,
        "index": h.index,
        "term": h.term,
        "revision": h.revision,
        "created": created,
        "source_member": h.source_member,
        "members": h.members,
        "voters": ",".join(map(str, h.voters)),
        "learners": ",".join(map(str, h.learners)),
        "image_bytes": h.image_bytes,
        "backup_key": f"{k} of {n} shares" if n else "a single key",
    }


def _read_backup_or_fail(path: Path, key: str) -> tuple[BackupHeader, bytes]:
    try:
        return read_backup(path, key)
    except WrongBackupKeyError as err:
        fail(f"wrong backup key: {err}")
    except BackupError as err:
        fail(str(err))


@click.command(name="status")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_key_options
@click.pass_obj
def snapshot_status(
    ctx: Ctx, *, file: Path, backup_key: str | None, backup_shares: tuple[str, ...]
) -> None:
    """Print FILE's header; with its backup key, also verify every record and the checksum."""
    verify = backup_key is not None or bool(backup_shares)
    if verify:
        key = backup_key_from(backup_key, backup_shares)
        header, image = _read_backup_or_fail(file, key)
        row = _header_rows(file, header)
        row["checksum"] = "verified (every record authenticated, SHA-256 matches)"
        try:
            StateMachine().restore(image)
            row["image"] = "decodes"
        except SnapshotDecodeError as err:
            row["image"] = f"does not decode: {err}"
    else:
        try:
            header = read_backup_header(file)
        except BackupError as err:
            fail(str(err))
        row = _header_rows(file, header)
        row["checksum"] = "not verified (give --backup-key to verify)"
    if ctx.json:
        click.echo(json.dumps(row, indent=2))
    else:
        emit(ctx, [{"field": k, "value": v} for k, v in row.items()], ["field", "value"])
    if str(row.get("image", "decodes")) != "decodes":
        sys.exit(EXIT_FAILED)


# --- snapshot restore ---------------------------------------------------------------------------


@click.command(name="restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The new member's data dir (created; refused if it is not empty).",
)
@click.option("--id", "member_id", type=click.IntRange(min=1), required=True, help="Its --id.")
@click.option(
    "--initial-cluster",
    required=True,
    help="ID=HOST:PORT,... the new cluster's voters and peer addresses (the same for all).",
)
@click.option("--name", default=None, help="Its --name, for the printed start command.")
@click.option(
    "--cluster-id",
    default=None,
    help="The new cluster's --cluster-id, for the printed command (default: the backup's).",
)
@click.option(
    "--autolock", is_flag=True, help="Wrap the new key ring under a new unlock key (printed)."
)
@_key_options
@click.pass_obj
def snapshot_restore(
    ctx: Ctx,
    *,
    file: Path,
    data_dir: Path,
    member_id: int,
    initial_cluster: str,
    name: str | None,
    cluster_id: str | None,
    autolock: bool,
    backup_key: str | None,
    backup_shares: tuple[str, ...],
) -> None:
    """Create member --id's data dir of a NEW cluster from backup FILE (offline).

    Run it once per member, each with its own --id and --data-dir and the same
    --initial-cluster; then start every member with concord-coordinator as usual. The new
    data dir gets its own new keys; keys, leases (with a full TTL again), locks, sequences
    and the watch history come from the backup; the configuration and the member directory
    become the --initial-cluster members; join tokens from the backup are revoked.
    """
    try:
        peers = parse_initial_cluster(initial_cluster)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    if member_id not in peers:
        raise click.UsageError(
            f"--id {member_id} is not in --initial-cluster ({', '.join(map(str, peers))})"
        )
    key = backup_key_from(backup_key, backup_shares)
    header, image = _read_backup_or_fail(file, key)
    try:
        restored = restore_data_dir(
            image,
            index=header.index,
            term=header.term,
            data_dir=data_dir,
            initial_cluster=peers,
            autolock=autolock,
        )
    except StorageError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot create {data_dir}: {err.strerror or err}")
    cid = cluster_id or header.cluster_id or "<CLUSTER-ID>"
    command = (
        f"concord-coordinator --id {member_id}"
        + (f" --name {name}" if name else "")
        + f" --data-dir {data_dir} --initial-cluster {initial_cluster} --cluster-id {cid}"
        + f" --peer-listen {peers[member_id]} --client-listen HOST:PORT --tls-dir DIR"
    )
    row = {
        "data_dir": str(data_dir),
        "member": member_id,
        "index": restored.index,
        "term": restored.term,
        "voters": ",".join(map(str, restored.voters)),
        "join_tokens_revoked": restored.join_tokens_revoked,
        "start": command,
    }
    if ctx.json:
        if restored.unlock_key is not None:
            row["unlock_key"] = restored.unlock_key
        click.echo(json.dumps(row, indent=2))
        return
    emit(ctx, [row], ["data_dir", "member", "index", "term", "voters"])
    click.echo(
        f"\nrestored from {file} (index {header.index}, term {header.term}, taken from member "
        f"{header.source_member} of cluster {header.cluster_id!r}). Restore every member of "
        "the new cluster the same way, then start each (with its usual listen and TLS flags):"
        f"\n\n    {command}\n"
    )
    if restored.join_tokens_revoked:
        click.echo(
            f"{restored.join_tokens_revoked} join token(s) valid in the backup are revoked in "
            "the new cluster (the backup may predate a revocation); once it runs, create new "
            "ones with `concordctl join-token create`.\n"
        )
    if restored.unlock_key is not None:
        click.echo(f"Unlock key of {data_dir} (autolock):\n\n    {restored.unlock_key}\n")
        warn(
            "the unlock key above is shown only this once and stored nowhere: store it now. "
            "The member serves nothing until it is given (--unlock-key-file or concordctl unlock)"
        )


# --- cluster recover ----------------------------------------------------------------------------
