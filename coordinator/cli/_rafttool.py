"""`concordctl rafttool dump`: a member's data directory, decrypted and decoded for a person
(Swarm's swarm-rafttool, for Concord), offline.

`coordinator.storage.dump` reads the records (it knows the files and the keys, not what an
entry means); this module decodes what they carry with the state machine's own codec, which
the storage layer may not import:

- a log entry: its term and index and the command, as `kind field=value ...` (fields left at
  their defaults are not shown; byte strings as quoted, escaped text when they are UTF-8,
  else as hex, and shortened past `VALUE_CHARS_MAX`), with the proposing client's session
  and the leader's timestamp;
- a snapshot: its index, term and configuration, and a census of the state it holds (how many
  keys, leases, locks, ...), never the image itself;
- hard states, segment headers, snapshot marks and a torn tail, one line each.

With `-o json` every record is one JSON object per line, with the command's fields in full
(bytes as a string when UTF-8, else `{"base64": ...}`), for scripts.

The keys: the data dir's own key file, or with autolock its unlock key (`--unlock-key`) or K of
the key's Shamir shares (`--share`, repeated, as `concordctl unlock` takes them).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import re
import time
from typing import Any

import click

from coordinator.fsm import CommandDecodeError, Envelope, SnapshotDecodeError, StateMachine
from coordinator.raft import ConfState, EntryKind
from coordinator.storage import (
    DumpRecord,
    LockedError,
    StorageError,
    WrongUnlockKeyError,
    dump,
)

from ._common import EXIT_INTERRUPTED, Ctx, fail
from ._keyshares import offline_unlock_keys

VALUE_CHARS_MAX = 64
"""A byte string longer than this is shortened in the human output (never in JSON)."""


@click.group()
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
@click.option(
    "--share",
    "shares",
    multiple=True,
    help="A share of the unlock key, for an autolocked member; repeat for K shares.",
)
@click.pass_obj
def rafttool_dump(ctx: Ctx, data_dir: str, unlock_key: str | None, shares: tuple[str, ...]) -> None:
    """Decrypt and print every snapshot and log record of DATA_DIR, decoded: one line per
    record (term, index, the command), a snapshot as a census of what it holds. Read-only:
    it may run beside a live member."""
    if unlock_key is not None and shares:
        raise click.UsageError("give either --unlock-key or --share, not both")
    keys = offline_unlock_keys([unlock_key] if unlock_key is not None else [], shares)
    if len(keys) > 1:
        raise click.UsageError(
            "--share: the shares come from more than one split (another member's key?); a "
            "data dir has one unlock key: give K shares of it"
        )
    source = ""
    try:
        for rec in dump(data_dir, keys[0] if keys else None):
            if ctx.json:
                click.echo(json.dumps(record_json(rec)))
                continue
            if rec.source != source:
                source = rec.source
                click.echo(f"# {source}")
            click.echo(record_line(rec))
    except LockedError:
        fail(
            f"{data_dir} is autolocked: give its unlock key (--unlock-key, or env "
            "CONCORD_UNLOCK_KEY) or K of its shares (--share S1 --share S2 ...)"
        )
    except WrongUnlockKeyError as err:
        fail(f"{err}; nothing was read")
    except StorageError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot read {data_dir}: {err.strerror or err}: {err.filename or ''}".rstrip(": "))
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)


# --- one line for a person ------------------------------------------------------------------------


def record_line(rec: DumpRecord) -> str:
    at = f"@{rec.offset}"
    match rec.type:
        case "ENTRY":
            return f"term={rec.term} index={rec.index} {entry_text(rec)}"
        case "SNAPSHOT":
            census = _snapshot_census(rec.data)
            what = (
                " ".join(f"{k}={n}" for k, n in census.items())
                if isinstance(census, dict)
                else census
            )
            return (
                f"term={rec.term} index={rec.index} snapshot {_conf(rec.conf)} "
                f"(data key {rec.key_id}) holds {what}"
            )
        case "HARD_STATE" | "SEGMENT_HEADER":
            hs = rec.hard_state
            state = f"term={hs.term} vote={hs.vote} commit={hs.commit}" if hs else ""
            kind = "hard state" if rec.type == "HARD_STATE" else "segment header, hard state"
            return f"{at} {kind} {state}"
        case "SNAPSHOT_MARK":
            reset = "; the log restarts from it" if rec.note else ""
            return (
                f"{at} snapshot mark: snapshot at term={rec.term} index={rec.index} "
                f"{_conf(rec.conf)}{reset}"
            )
        case "TORN":
            return f"{at} TORN tail, never acknowledged (the next start cuts it): {rec.note}"
        case _:
            return f"{at} {rec.type} term={rec.term} index={rec.index}"


def entry_text(rec: DumpRecord) -> str:
    """What a log entry says: the command, a configuration, or a new leader's no-op."""
    if rec.kind is EntryKind.CONF:
        try:
            return f"configuration {_conf(ConfState.decode(rec.data))}"
        except ValueError as err:
            return f"configuration, undecodable ({err}): {show_bytes(rec.data)}"
    if not rec.data:
        return "no-op (a new leader's first entry)"
    try:
        env = Envelope.decode(rec.data)
    except CommandDecodeError as err:
        return f"undecodable command ({err}): {show_bytes(rec.data)}"
    session = f"client {env.client_id} seq {env.seq}, " if env.client_id else ""
    return f"{command_text(env.command)}  [{session}{_when(env.leader_time_ms)}]"


def command_text(command: object) -> str:
    """`kind field=value ...`, the fields at their default values left out."""
    return " ".join([kind_name(command), *_fields_text(command)])


def kind_name(command: object) -> str:
    """`Put` -> `put`, `LeaseGrant` -> `lease-grant`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", type(command).__name__).lower()


def _fields_text(obj: object) -> list[str]:
    out = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        out.append(f"{f.name}={_value_text(value)}")
    return out


def _value_text(value: object) -> str:
    if isinstance(value, bytes):
        return show_bytes(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, tuple):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"{kind_name(value)}({' '.join(_fields_text(value))})"
    return str(value)


def show_bytes(data: bytes, limit: int = VALUE_CHARS_MAX) -> str:
    """Quoted, escaped text if `data` is UTF-8, else `hex:...`; past `limit` characters
    shortened, saying how much was left out."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        shown = data[: limit // 2].hex()
        rest = len(data) - limit // 2
        return f"hex:{shown}" + (f"...(+{rest} bytes)" if rest > 0 else "")
    if len(text) <= limit:
        return _quote(text)
    return _quote(text[:limit]) + f"...(+{len(text) - limit} chars)"


def _quote(text: str) -> str:
    # JSON's escaping: control characters and quotes escaped, other Unicode kept readable.
    return json.dumps(text, ensure_ascii=False)


def _conf(conf: ConfState | None) -> str:
    if conf is None:
        return ""
    voters = ",".join(str(v) for v in sorted(conf.voters))
    learners = ",".join(str(v) for v in sorted(conf.learners))
    return f"voters={{{voters}}}" + (f" learners={{{learners}}}" if learners else "")


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _snapshot_census(data: bytes) -> dict[str, int] | str:
    """Counts per kind of what a snapshot holds, or why they cannot be had."""
    if not data:
        return "empty (the state before the first entry)"
    fsm = StateMachine()
    try:
        fsm.restore(data)
    except SnapshotDecodeError as err:
        return f"undecodable image of {len(data)} bytes ({err})"
    return {"revision": fsm.revision, **fsm.census()}


# --- JSON -----------------------------------------------------------------------------------------


def record_json(rec: DumpRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "source": rec.source,
        "offset": rec.offset,
        "type": rec.type,
        "index": rec.index,
        "term": rec.term,
        "key_id": rec.key_id,
    }
    if rec.conf is not None:
        out["voters"] = sorted(rec.conf.voters)
        out["learners"] = sorted(rec.conf.learners)
    if rec.hard_state is not None:
        hs = rec.hard_state
        out["hard_state"] = {"term": hs.term, "vote": hs.vote, "commit": hs.commit}
    if rec.note:
        out["note"] = rec.note
    if rec.type == "SNAPSHOT":
        census = _snapshot_census(rec.data)
        out["bytes"] = len(rec.data)
        out["census" if isinstance(census, dict) else "error"] = census
    if rec.type == "ENTRY":
        out.update(_entry_json(rec))
    return out


def _entry_json(rec: DumpRecord) -> dict[str, Any]:
    kind = rec.kind.name if rec.kind is not None else ""
    if rec.kind is EntryKind.CONF:
        try:
            conf = ConfState.decode(rec.data)
        except ValueError as err:
            return {"entry": kind, "error": str(err), "data": _bytes_json(rec.data)}
        return {
            "entry": kind,
            "voters": sorted(conf.voters),
            "learners": sorted(conf.learners),
        }
    if not rec.data:
        return {"entry": kind, "command": None}
    try:
        env = Envelope.decode(rec.data)
    except CommandDecodeError as err:
        return {"entry": kind, "error": str(err), "data": _bytes_json(rec.data)}
    return {
        "entry": kind,
        "client_id": env.client_id,
        "seq": env.seq,
        "leader_time_ms": env.leader_time_ms,
        "command": _value_json(env.command),
    }


def _value_json(value: object) -> Any:  # noqa: ANN401 (any JSON value)
    if isinstance(value, bytes):
        return _bytes_json(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, tuple):
        return [_value_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _value_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"kind": kind_name(value), **fields}
    return value


def _bytes_json(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}
