"""The test control plane's processes: a `Component` (etcd, kube-apiserver, ...) started
orphan-proof with its log, and asking one over HTTPS whether it answers."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from coordinator.testing.procs import orphan_proof


@dataclass
class Component:
    """One control-plane process: its command line, log and (while it runs) its Popen."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_after_s: float | None = None
    """Seconds from this component's start until it answered its readiness check."""

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                orphan_proof(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A group of its own: Ctrl-C on the test run reaches pytest only, and stop()
                # can signal the whole group by the PID we hold.
                start_new_session=True,
            )
        self.started_at = time.perf_counter()

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-chars:]

    def rss_mib(self) -> float | None:
        """Resident set size now, from /proc (None when not running or not on Linux)."""
        if not self.running() or self.pid is None:
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL after `grace_s`; always reaps it."""
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _http_status(url: str, context: ssl.SSLContext) -> int | None:
    """The status of GET `url`, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ssl.SSLError):
        return None
