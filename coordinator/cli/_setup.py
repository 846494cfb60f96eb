"""concordctl's set-up command `cluster init`: offline, it writes files (`join-token
create|list|revoke`, against a running cluster, are in `_jointoken.py`).

`cluster init --dir D` makes everything a new cluster needs before any member runs, as
`docker swarm init` does, but into files a person then copies to where they belong:

    D/ca.pem, D/ca-key.pem       the cluster CA (coordinator.pki.create_ca); the key
                                 signs certificates: give it (--ca-key-file) only to the
                                 members that sign joining members' certificates
    D/member-I/tls/              member I's --tls-dir: ca.pem, member.pem (bound to member id
                                 I), member-key.pem
    D/client/                    a client certificate for concordctl: --tls-dir D/client
    D/operator/                  the operator's client certificate (role URI
                                 concord://role/operator): the one identity Secrets.Unseal
                                 answers plaintext to; give it to the operator only

and prints a `concord-coordinator` command line per member (all on one host, `--host`, ports
from `--base-port`: four per member, client, peer, metrics and join), with `--ca-key-file`
and `--join-listen` so that each member can let new members join. Join tokens live in the
cluster's replicated state (hashes only), so there is none until the cluster runs: the
output ends with the `concordctl join-token create` command to run then, and the command
line a new member joins with.

"""

from __future__ import annotations

import json
import secrets
import shlex
from pathlib import Path
from typing import Any

import click

from coordinator.pki import (
    CA_FILE,
    CA_KEY_FILE,
    OPERATOR_ROLE,
    TlsError,
    create_ca,
    is_ip_address,
    issue_client_cert,
    issue_member_cert,
    write_ca,
    write_member_tls,
    write_pem,
)

from ._common import CLIENT_CERT_FILE, CLIENT_KEY_FILE, Ctx, fail, warn

MEMBERS_MAX = 9
PORTS_PER_MEMBER = 4
_PORT_NAMES = ("client", "peer", "metrics", "join")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_cluster_tls(
    directory: Path, cluster_id: str, members: int, *, dns: list[str], ips: list[str]
) -> None:
    """The CA, member I's TLS dir (member-I/tls, its certificate bound to member id I) and a
    client certificate (client/), as `cluster init` lays them out; `make run`'s demo cluster
    uses the same, so that it runs with mutual TLS as a real one does."""
    ca = create_ca(cluster_id)
    write_ca(directory, ca)
    for i in range(1, members + 1):
        cert = issue_member_cert(ca, f"member-{i}", dns, ips, member_id=i)
        write_member_tls(directory / f"member-{i}" / "tls", ca.cert_pem, cert)
    client = issue_client_cert(ca, "concordctl")
    # The operator's identity (role URI concord://role/operator): the one caller that
    # Secrets.Unseal answers plaintext to.
    operator = issue_client_cert(ca, "concord-operator", roles=[OPERATOR_ROLE])
    for sub, cert in (("client", client), ("operator", operator)):
        write_pem(directory / sub / CA_FILE, ca.cert_pem)
        write_pem(directory / sub / CLIENT_KEY_FILE, cert.key_pem)
        write_pem(directory / sub / CLIENT_CERT_FILE, cert.cert_pem)


@click.command(name="init")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the CA and the certificates (created if missing).",
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
    type=click.IntRange(1, 65535 - PORTS_PER_MEMBER * (MEMBERS_MAX + 1)),
    default=7070,
    show_default=True,
    help="Member I listens on BASE+4(I-1) (client), +1 (peer), +2 (metrics), +3 (join).",
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
    """Create a new cluster's CA and its member and client certificates."""
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
    ips = [host] if is_ip_address(host) else []
    dns = [*dns_names, *([] if ips else [host])]
    try:
        write_cluster_tls(directory, cid, members, dns=dns, ips=ips)
    except (OSError, TlsError, ValueError) as err:
        fail(f"cannot create the cluster files in {directory}: {err}")

    def ports_of(i: int) -> dict[str, int]:
        first = base_port + PORTS_PER_MEMBER * (i - 1)
        return {k: first + n for n, k in enumerate(_PORT_NAMES)}

    ports = {i: ports_of(i) for i in range(1, members + 1)}
    initial = ",".join(f"{i}={_host_port(host, p['peer'])}" for i, p in ports.items())

    def listen_args(p: dict[str, int]) -> list[str]:
        return [
            "--client-listen",
            _host_port(host, p["client"]),
            "--peer-listen",
            _host_port(host, p["peer"]),
            "--metrics-listen",
            _host_port(host, p["metrics"]),
        ]

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
                *listen_args(p),
                "--join-listen",
                _host_port(host, p["join"]),
                "--ca-key-file",
                str(directory / CA_KEY_FILE),
                "--initial-cluster",
                initial,
            ]
        )
        for i, p in ports.items()
    ]
    endpoints = ",".join(_host_port(host, p["client"]) for p in ports.values())
    concordctl = ["concordctl", "--tls-dir", str(directory / "client"), "--endpoints", endpoints]
    token_command = shlex.join([*concordctl, "join-token", "create"])
    new_id = members + 1
    join_command = shlex.join(
        [
            "concord-coordinator",
            "--id",
            "0",
            "--data-dir",
            str(directory / f"member-{new_id}" / "data"),
            "--tls-dir",
            str(directory / f"member-{new_id}" / "tls"),
            *listen_args(ports_of(new_id)),
            "--join",
            _host_port(host, ports[1]["join"]),
            "--join-token",
            "TOKEN",
        ]
    )
    if ctx.json:
        doc: dict[str, Any] = {
            "cluster_id": cid,
            "dir": str(directory),
            "ca": str(directory / CA_FILE),
            "ca_key": str(directory / CA_KEY_FILE),
            "members": [
                {
                    "id": i,
                    "tls_dir": str(directory / f"member-{i}" / "tls"),
                    "join_address": _host_port(host, ports[i]["join"]),
                    "command": cmd,
                }
                for i, cmd in zip(ports, commands, strict=True)
            ],
            "client_tls_dir": str(directory / "client"),
            "operator_tls_dir": str(directory / "operator"),
            "endpoints": endpoints.split(","),
            "join_token_command": token_command,
            "join_command": join_command,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        d = directory
        click.echo(f"Created cluster {cid!r} in {d}:")
        click.echo(f"  {d / CA_FILE}        the cluster CA certificate")
        click.echo(
            f"  {d / CA_KEY_FILE}    the CA key: it signs certificates; only members that "
            "sign joining members' certificates get it (--ca-key-file)"
        )
        for i in ports:
            click.echo(f"  {d / f'member-{i}' / 'tls'}/  member {i}'s --tls-dir")
        click.echo(f"  {d / 'client'}/  a client certificate: concordctl --tls-dir {d / 'client'}")
        click.echo(f"  {d / 'operator'}/  the operator's certificate (it alone may unseal secrets)")
        click.echo("")
        click.echo(
            f"Start the members ({'all on ' + host if members > 1 else 'on ' + host}; each "
            "creates its data dir on first start):"
        )
        for cmd in commands:
            click.echo(f"  {cmd}")
        click.echo("")
        click.echo("Then talk to the cluster:")
        click.echo(f"  {shlex.join(concordctl)} member list")
        click.echo("")
        click.echo("To add a member later, issue a join token (the cluster keeps its hash only):")
        click.echo(f"  {token_command}")
        click.echo("and start the new member with it (a new data dir; it gets its certificate):")
        click.echo(f"  {join_command}")
    if members % 2 == 0:
        warn(
            f"{members} members tolerate no more failures than {members - 1}: an even size "
            "buys nothing; prefer 3 or 5"
        )
