"""What every concordctl command shares, online or offline: the global options, printing, exit
statuses (`_connect.py` runs a client for the commands that talk to a cluster).

Output. Tables for people by default; `-o json` prints JSON for scripts (a list of objects,
or one object per line for a stream). Diagnostics go to stderr, one line each, starting
with "Error:" or "Warning:".

Exit status:
- 0: done;
- 1: the cluster (or a member) refused or failed, or what was asked for is absent (a key,
  a leader): the message is the service's, with the gRPC status name;
- 2: the command line or its input is wrong (a malformed unlock key or share, a TTL <= 0,
  too few shares...): nothing was sent anywhere (click's usage errors);
- 130: interrupted (Ctrl-C) before the command could finish what it set out to do.

TLS. `--tls-dir DIR` (env CONCORD_TLS_DIR) holds `ca.pem` and a client certificate,
`client.pem` + `client-key.pem` (as `concordctl cluster init` writes them), or a member's
`member.pem` + `member-key.pem`; the client library reads it (`Client.from_tls_dir`), and a
missing directory or file is a usage error (2). Without it, concordctl speaks plaintext
(`--insecure` members only). Endpoints are checked (host:port, port 1-65535) before anything
is dialled: a bad one is a usage error too.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

T = TypeVar("T")

CLIENT_CERT_FILE = "client.pem"
"""What `cluster init` writes for clients; the names the client library looks for."""
CLIENT_KEY_FILE = "client-key.pem"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Ctx:
    endpoints: list[str]
    output: str
    timeout_s: float
    tls_dir: Path | None = None
    connect_timeout_s: float = 5.0

    @property
    def json(self) -> bool:
        return self.output == "json"


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


def emit(ctx: Ctx, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if ctx.json:
        click.echo(json.dumps(list(rows), indent=2))
        return
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in rows:
        click.echo(
            "  ".join(
                str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)
            ).rstrip()
        )


@contextmanager
def interrupts() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM, for commands that run until interrupted and then
    clean up (elect resigns, watch ends quietly). Only in the main thread."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)


async def wait_first(task: asyncio.Future[T], stop: asyncio.Event) -> bool:
    """Wait for `task` or `stop`; True if `task` finished first (it is left running if not)."""
    stopper = asyncio.ensure_future(stop.wait())
    waits: list[asyncio.Future[Any]] = [task, stopper]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    return task.done()
