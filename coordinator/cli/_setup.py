"""concordctl's offline set-up commands: `cluster init` and `join-token create|revoke|list`.

`cluster init --dir D` makes everything a new cluster needs before any member runs, as
`docker swarm init` does, but into files a person then copies to where they belong:

    D/ca.pem, D/ca-key.pem       the cluster CA (coordinator.runtime.tls.create_ca); the key
                                 signs certificates and belongs offline, never on a member
    D/member-I/tls/              member I's --tls-dir: ca.pem, member.pem, member-key.pem
    D/client/                    a client certificate for concordctl: --tls-dir D/client
    D/join-tokens.json           the hashes of the join tokens (JoinTokenStore), one issued

and prints the join token and a `concord-coordinator` command line per member (all on one
host, `--host`, ports from `--base-port`: three per member). Nothing here talks to a
cluster; `join-token` works on `D/join-tokens.json` and needs `D/ca.pem` (the token names
the CA's fingerprint). Joining over the network with a token is not built yet: the token
is issued and recorded for when it is.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shlex
import time
from pathlib import Path
from typing import Any

import click

from coordinator.runtime.tls import (
    CA_FILE,
    CA_KEY_FILE,
    JOIN_TOKEN_PREFIX,
    JoinToken,
    JoinTokenError,
    JoinTokenStore,
    TlsError,
    create_ca,
    issue_client_cert,
    issue_member_cert,
    write_ca,
    write_member_tls,
    write_pem,
)

from ._common import CLIENT_CERT_FILE, CLIENT_KEY_FILE, Ctx, emit, fail, warn

TOKENS_FILE = "join-tokens.json"
MEMBERS_MAX = 9


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@click.command(name="init")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the CA, certificates and join tokens (created if missing).",
)
@click.option("--members", type=click.IntRange(1, MEMBERS_MAX), default=3, show_default=True)
@click.option(
    "--dns",
    "dns_names",
    multiple=True,
    help="A DNS name members are reached by (repeat); added to every member certificate.",
)
@click.option("--cluster-id", default=None, help="Default: concord-<random>.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address in the printed command lines (an IP or a DNS name; it is certified).",
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65535 - 3 * MEMBERS_MAX),
    default=7070,
    show_default=True,
    help="Member I listens on BASE+3(I-1) (client), +1 (peer), +2 (metrics).",
)
@click.pass_obj
def cluster_init(
    ctx: Ctx,
    *,
    directory: Path,
    members: int,
    dns_names: tuple[str, ...],
    cluster_id: str | None,
    host: str,
    base_port: int,
) -> None:
    """Create a new cluster's CA, member and client certificates, and a join token."""
    if (directory / CA_FILE).exists() or (directory / CA_KEY_FILE).exists():
        fail(
            f"{directory} already holds a cluster CA ({directory / CA_FILE}); a second "
            "`cluster init` would make a new CA that the running members do not trust. Use "
            "another --dir, or delete that one first if it is unused"
        )
    for name in dns_names:
        if not name or any(c.isspace() for c in name) or "/" in name:
            raise click.BadParameter(f"{name!r} is not a DNS name", param_hint="--dns")
    cid = cluster_id or f"concord-{secrets.token_hex(4)}"
    if not cid.strip():
        raise click.BadParameter("must not be empty", param_hint="--cluster-id")
    ips = [host] if _is_ip(host) else []
    dns = [*dns_names, *([] if ips else [host])]
    try:
        ca = create_ca(cid)
        write_ca(directory, ca)
        for i in range(1, members + 1):
            cert = issue_member_cert(ca, f"member-{i}", dns, ips)
            write_member_tls(directory / f"member-{i}" / "tls", ca.cert_pem, cert)
        client = issue_client_cert(ca, "concordctl")
        write_pem(directory / "client" / CA_FILE, ca.cert_pem)
        write_pem(directory / "client" / CLIENT_KEY_FILE, client.key_pem)
        write_pem(directory / "client" / CLIENT_CERT_FILE, client.cert_pem)
        token = JoinTokenStore(directory / TOKENS_FILE).issue(ca.cert_pem, now_ms=_now_ms())
    except (OSError, TlsError, JoinTokenError, ValueError) as err:
        fail(f"cannot create the cluster files in {directory}: {err}")

    ports = {
        i: {k: base_port + 3 * (i - 1) + n for n, k in enumerate(("client", "peer", "metrics"))}
        for i in range(1, members + 1)
    }
    initial = ",".join(f"{i}={_host_port(host, p['peer'])}" for i, p in ports.items())
    commands = [
        shlex.join(
            [
                "concord-coordinator",
                "--id",
                str(i),
                "--name",
                f"member-{i}",
                "--cluster-id",
                cid,
                "--data-dir",
                str(directory / f"member-{i}" / "data"),
                "--tls-dir",
                str(directory / f"member-{i}" / "tls"),
                "--client-listen",
                _host_port(host, p["client"]),
                "--peer-listen",
                _host_port(host, p["peer"]),
                "--metrics-listen",
                _host_port(host, p["metrics"]),
                "--initial-cluster",
                initial,
            ]
        )
        for i, p in ports.items()
    ]
    endpoints = ",".join(_host_port(host, p["client"]) for p in ports.values())
    concordctl = shlex.join(
        ["concordctl", "--tls-dir", str(directory / "client"), "--endpoints", endpoints]
    )
    if ctx.json:
        doc: dict[str, Any] = {
            "cluster_id": cid,
            "dir": str(directory),
            "ca": str(directory / CA_FILE),
            "ca_key": str(directory / CA_KEY_FILE),
            "members": [
                {"id": i, "tls_dir": str(directory / f"member-{i}" / "tls"), "command": cmd}
                for i, cmd in zip(ports, commands, strict=True)
            ],
            "client_tls_dir": str(directory / "client"),
            "endpoints": endpoints.split(","),
            "join_token": str(token),
            "join_token_id": token.id,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        d = directory
        click.echo(f"Created cluster {cid!r} in {d}:")
        click.echo(f"  {d / CA_FILE}        the cluster CA certificate")
        click.echo(
            f"  {d / CA_KEY_FILE}    the CA key: it signs certificates; keep it offline, "
            "never on a member"
        )
        for i in ports:
            click.echo(f"  {d / f'member-{i}' / 'tls'}/  member {i}'s --tls-dir")
        click.echo(f"  {d / 'client'}/  a client certificate: concordctl --tls-dir {d / 'client'}")
        click.echo(f"  {d / TOKENS_FILE}  join tokens (hashes only)")
        click.echo("")
        click.echo(f"Join token (id {token.id}; `concordctl join-token` manages them):")
        click.echo(f"  {token}")
        click.echo("")
        click.echo(
            f"Start the members ({'all on ' + host if members > 1 else 'on ' + host}; each "
            "creates its data dir on first start):"
        )
        for cmd in commands:
            click.echo(f"  {cmd}")
        click.echo("")
        click.echo("Then talk to the cluster:")
        click.echo(f"  {concordctl} member list")
    if members % 2 == 0:
        warn(
            f"{members} members tolerate no more failures than {members - 1}: an even size "
            "buys nothing; prefer 3 or 5"
        )


# --- join tokens -------------------------------------------------------------------------------


def _store(directory: Path) -> tuple[JoinTokenStore, bytes]:
    try:
        ca_pem = (directory / CA_FILE).read_bytes()
    except FileNotFoundError:
        fail(
            f"no cluster CA in {directory} ({directory / CA_FILE} is missing): run "
            f"`concordctl cluster init --dir {directory}` first, or give the --dir it used"
        )
    except OSError as err:
        fail(f"cannot read {directory / CA_FILE}: {err.strerror}")
    return JoinTokenStore(directory / TOKENS_FILE), ca_pem


_DIR = click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The directory `concordctl cluster init` wrote (ca.pem, join-tokens.json).",
)


@click.group(name="join-token")
def join_token() -> None:
    """Join tokens (as `docker swarm join-token`), kept as hashes in DIR/join-tokens.json."""


@join_token.command(name="create")
@_DIR
@click.pass_obj
def join_token_create(ctx: Ctx, directory: Path) -> None:
    """Issue a new join token and print it (only its hash is kept)."""
    store, ca_pem = _store(directory)
    try:
        token = store.issue(ca_pem, now_ms=_now_ms())
    except (JoinTokenError, TlsError, OSError) as err:
        fail(str(err))
    if ctx.json:
        click.echo(json.dumps({"id": token.id, "token": str(token)}, indent=2))
    else:
        click.echo(str(token))


@join_token.command(name="revoke")
@_DIR
@click.argument("token_or_id")
@click.pass_obj
def join_token_revoke(ctx: Ctx, directory: Path, token_or_id: str) -> None:
    """Revoke a join token, given as the token itself or its id (`join-token list`)."""
    text = token_or_id.strip()
    if text.upper().startswith(JOIN_TOKEN_PREFIX):
        try:
            JoinToken.parse(text)
        except JoinTokenError as err:
            raise click.BadParameter(str(err), param_hint="TOKEN_OR_ID") from None
    store, _ = _store(directory)
    try:
        revoked = store.revoke(text, now_ms=_now_ms())
    except (JoinTokenError, OSError) as err:
        fail(f"{err}; `concordctl join-token list --dir {directory}` shows the ids")
    emit(ctx, [{"id": revoked.id, "revoked": True}], ["id", "revoked"])


@join_token.command(name="list")
@_DIR
@click.pass_obj
def join_token_list(ctx: Ctx, directory: Path) -> None:
    """The join tokens issued (ids only) and whether each is revoked."""
    store, _ = _store(directory)
    try:
        tokens = store.tokens()
    except JoinTokenError as err:
        fail(str(err))

    def when(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else ""

    rows = [
        {"id": t.id, "created": when(t.created_ms), "revoked": when(t.revoked_ms)} for t in tokens
    ]
    emit(ctx, rows, ["id", "created", "revoked"])
