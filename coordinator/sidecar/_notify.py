"""How the app learns that its secret files changed, after the swap: a signal to a process, or
an HTTP POST, or nothing (the app watches `..data` itself, as with any Kubernetes volume).

Spec (`--secrets-notify`, repeatable; `CONCORD_SECRETS_NOTIFY`):

- `none`: the files only.
- `signal:TARGET:SIG`: send SIG (`HUP`, `SIGHUP`, `USR1`, or a number) to TARGET: an
  absolute path is a pid file (read at each notification, so a restarted app is found), any
  other word a process name, matched against each process's `comm` and the base name of its
  argv[0] (the sidecar itself excluded). Another container's processes are visible only with
  the pod's `shareProcessNamespace: true`.
- `http:URL`: POST a JSON body naming what changed (names, revisions, key names; never a
  value) to URL, which must be `http://` on a loopback address with a port (the sidecar
  never calls out of the pod, as for a lock's loss callback). Any 2xx is success.

A notification that fails (no such process, a refused connection, a 5xx) is logged and
counted (`concord_sidecar_secret_notifications_total{method,result}`), never retried and
never fatal: the files are already in place, and the next change notifies again.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from ._loopback import is_loopback_http

HTTP_TIMEOUT_S = 5.0


class NotifyError(Exception):
    """A notification did not reach its target (the message says why)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One secret whose files were swapped. Never carries a value."""

    name: str
    revision: int
    """The coordinator revision of the record delivered."""
    generation: int
    """The SealedSecret's generation it came from."""
    keys: tuple[str, ...]
    path: str

    def view(self) -> dict[str, object]:
        return {
            "name": self.name,
            "revision": self.revision,
            "generation": self.generation,
            "keys": list(self.keys),
            "path": self.path,
        }


class Notifier(Protocol):
    method: str
    """`signal` or `http`: the metric's label."""

    async def notify(self, namespace: str, changes: Sequence[Change]) -> str:
        """Tell the app; returns what was done (for the log). NotifyError if it failed."""
        ...

    async def close(self) -> None: ...


class SignalNotifier:
    method = "signal"

    def __init__(self, target: str, signum: signal.Signals, proc: Path = Path("/proc")) -> None:
        self.target = target
        self.signum = signum
        self.proc = proc

    async def notify(self, namespace: str, changes: Sequence[Change]) -> str:
        pids = self._pids()
        if not pids:
            raise NotifyError(f"no process {self._what()} to send {self.signum.name} to")
        sent = []
        for pid in pids:
            try:
                os.kill(pid, self.signum)
                sent.append(pid)
            except ProcessLookupError:
                continue  # exited between the lookup and the signal
            except PermissionError as err:
                raise NotifyError(f"cannot signal pid {pid} ({self._what()}): {err}") from None
        if not sent:
            raise NotifyError(f"{self._what()} exited before it could be signalled")
        return f"sent {self.signum.name} to pid {', '.join(map(str, sent))}"

    async def close(self) -> None:
        return None

    def _what(self) -> str:
        return f"in pid file {self.target}" if self.target.startswith("/") else repr(self.target)

    def _pids(self) -> list[int]:
        if self.target.startswith("/"):
            try:
                text = Path(self.target).read_text().strip()
            except OSError as err:
                raise NotifyError(f"cannot read the pid file {self.target}: {err}") from None
            if not text.isdigit():
                raise NotifyError(f"the pid file {self.target} holds no pid: {text[:40]!r}")
            return [int(text)]
        me = os.getpid()
        found = []
        for entry in self.proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            with contextlib.suppress(OSError):
                comm = (entry / "comm").read_text().strip()
                argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
                if self.target in {comm, os.path.basename(argv0)}:
                    found.append(int(entry.name))
        return sorted(found)


class HttpNotifier:
    method = "http"

    def __init__(self, url: str) -> None:
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    async def notify(self, namespace: str, changes: Sequence[Change]) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
            )
        body = {"namespace": namespace, "changed": [c.view() for c in changes]}
        try:
            async with self._session.post(self.url, json=body) as resp:
                if not 200 <= resp.status < 300:
                    raise NotifyError(f"POST {self.url} answered {resp.status}")
                return f"POST {self.url}: {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as err:
            raise NotifyError(f"POST {self.url} failed: {err!r}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def parse_notify(spec: str) -> Notifier | None:
    """A `--secrets-notify` value as a Notifier (None for `none`); ValueError saying what is
    wrong with it."""
    spec = spec.strip()
    if spec == "none":
        return None
    kind, sep, rest = spec.partition(":")
    if kind == "signal" and sep:
        target, sep, sig = rest.rpartition(":")
        if not sep or not target:
            raise ValueError(f"{spec!r}: a signal notification is signal:TARGET:SIG")
        return SignalNotifier(target, _signal(sig))
    if kind == "http" and sep:
        return HttpNotifier(_loopback_url(rest))
    raise ValueError(f"{spec!r}: --secrets-notify is none, signal:PIDFILE_OR_NAME:SIG or http:URL")


def _signal(raw: str) -> signal.Signals:
    text = raw.strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError):
        raise ValueError(f"{raw!r} is not a signal (HUP, USR1, SIGTERM, 10, ...)") from None


def _loopback_url(raw: str) -> str:
    if not is_loopback_http(raw):
        raise ValueError(
            f"{raw!r}: the notification URL must be http://127.0.0.1:PORT/... (or localhost, "
            "::1): the sidecar calls only loopback addresses"
        )
    return raw
