"""`concordctl`: the command line for people (tables by default, `-o json` for scripts).

This module only assembles the `concordctl` group (its global options) from the two kinds of
commands, kept apart as etcd keeps etcdctl and etcdutl (.importlinter checks it):

- online, talking to a cluster through `coordinator.client` and never importing the storage
  or the runtime: keys, leases, sequences, members, status (`_commands.py`), locks and
  elections (`_hold_commands.py`), `txn` (`_txn.py`), `unlock` and `cluster autolock|rotate-*-key`
  (`_keys.py`), `join-token` (`_jointoken.py`), `seal` (`_seal.py`; where it gets the
  certificate: `_seal_cert.py`); they share `_connect.py`;
- offline, working on files and never importing the client or gRPC: `cluster init`
  (`_setup.py`), `rafttool` (`_rafttool.py`), `snapshot status|restore` (`_restore.py`).

`snapshot save` and `cluster recover` (`_recovery.py`) are both: save streams an image from
the cluster into a sealed backup file (the storage's format), recover reads either the live
members or stopped members' data dirs. Exit statuses and output helpers: `_common.py`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from coordinator.client import InvalidArgument, parse_endpoints

from ._commands import COMMANDS
from ._common import Ctx, emit
from ._connect import run
from ._jointoken import join_token
from ._keys import autolock, rotate_data_key, rotate_unlock_key, unlock
from ._rafttool import rafttool
from ._recovery import recover, snapshot
from ._seal import seal
from ._setup import cluster_init
from ._txn import txn

__all__ = ["Ctx", "cli", "emit", "main", "run"]

DEFAULT_ENDPOINTS = "127.0.0.1:2379"


@click.group()
@click.option(
    "--endpoints",
    envvar="CONCORD_ENDPOINTS",
    default=DEFAULT_ENDPOINTS,
    show_default=True,
    help="Comma-separated client addresses of any members (env CONCORD_ENDPOINTS).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Give up after this many seconds without an answer.",
)
@click.option(
    "--connect-timeout",
    "connect_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Give up after this many seconds if no member accepts a connection (members that "
    "were just started are still opening their ports).",
)
@click.option(
    "--tls-dir",
    envvar="CONCORD_TLS_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="ca.pem + client.pem + client-key.pem for mutual TLS (env CONCORD_TLS_DIR).",
)
@click.pass_context
def cli(
    click_ctx: click.Context,
    *,
    endpoints: str,
    output: str,
    timeout_s: float,
    connect_timeout_s: float,
    tls_dir: Path | None,
) -> None:
    """Talk to a Concord cluster: keys, compare-and-swap, leases, locks, elections,
    sequences, members, each member's keys (unlock, autolock), and sealed secrets (seal)."""
    try:
        eps = parse_endpoints(endpoints)
    except InvalidArgument as err:
        raise click.BadParameter(err.message, param_hint="--endpoints") from None
    click_ctx.obj = Ctx(eps, output, timeout_s, tls_dir, connect_timeout_s)


@cli.group()
def cluster() -> None:
    """Set up a cluster (`init`), manage each member's encryption keys, recover from a lost
    quorum (`recover`)."""


for command in COMMANDS:
    cli.add_command(command)
cluster.add_command(cluster_init)
cluster.add_command(autolock)
cluster.add_command(rotate_unlock_key)
cluster.add_command(rotate_data_key)
cluster.add_command(recover)
cli.add_command(snapshot)
cli.add_command(unlock)
cli.add_command(join_token)
cli.add_command(txn)
cli.add_command(rafttool)  # offline: reads a data directory, no cluster needed
cli.add_command(seal)


def main() -> None:
    # A reader that goes away (`concordctl watch k | head -1`) ends the command quietly. Not
    # by restoring SIGPIPE's default action: gRPC's sockets would then kill the process too
    # (a write racing a connection's close, as when a watch is cancelled), so only stdout's
    # BrokenPipeError is handled, as the Python documentation recommends.
    try:
        cli(prog_name="concordctl")
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
