"""The operator's path end to end, with real processes and mutual TLS: `concordctl cluster
init`, the three `concord-coordinator` command lines it prints, `member list` showing each
member's name and URLs, `cluster autolock on` on every member (one key each), a member
restarted locked, `concordctl unlock` given every endpoint, back in."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from coordinator.client import Client, ConcordError
from coordinator.runtime.tls import channel_credentials
from coordinator.testing.ports import free_port_block
from coordinator.testing.procs import MEMBER_MODULE

REPO = Path(__file__).resolve().parents[2]
CONCORDCTL = [sys.executable, "-m", "coordinator.cli.main"]
MEMBER = [sys.executable, "-m", MEMBER_MODULE]
KEY_RE = re.compile(r"member (\d+) at \S+: autolock is now on\. Its unlock key:\s+(\S+)")


def _free_base_port() -> int:
    """A base port with 12 free ports after it (cluster init lays members out from it)."""
    return free_port_block(12)


def _ctl(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CONCORDCTL, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        input=input,
    )


def _poll(cond: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # a bounded poll of other processes


class Members:
    def __init__(self, root: Path, commands: list[str]) -> None:
        self.root = root
        self.commands = commands
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, i: int) -> None:
        argv = [*shlex.split(self.commands[i - 1])[1:], "--tick-ms", "20"]
        with (self.root / f"member-{i}.log").open("ab") as log:
            self.procs[i] = subprocess.Popen(
                [*MEMBER, *argv],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def stop(self, i: int) -> None:
        proc = self.procs.pop(i)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, self.log(i)

    def log(self, i: int) -> str:
        return (self.root / f"member-{i}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def members(tmp_path: Path) -> Iterator[tuple[Members, dict[str, object]]]:
    init = _ctl(
        "-o", "json", "cluster", "init", "--dir", str(tmp_path / "c"),
        "--base-port", str(_free_base_port()),
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    doc = json.loads(init.stdout)
    m = Members(tmp_path, [x["command"] for x in doc["members"]])
    try:
        for i in (1, 2, 3):
            m.start(i)
        yield m, doc
    finally:
        m.close()


@pytest.mark.process
def test_init_start_autolock_restart_locked_and_unlock(
    members: tuple[Members, dict[str, object]],
) -> None:
    m, doc = members
    endpoints = doc["endpoints"]
    assert isinstance(endpoints, list)
    tls = ["--tls-dir", str(doc["client_tls_dir"]), "--endpoints", ",".join(endpoints)]

    def listed() -> bool:
        res = _ctl(*tls, "--timeout", "2", "-o", "json", "member", "list")
        return res.returncode == 0 and len(json.loads(res.stdout)) == 3

    _poll(listed, "a leader listing three members")

    # The members `cluster init` made were never admitted by a join: each lists itself.
    rows: list[dict[str, object]] = []

    def described() -> bool:
        nonlocal rows
        res = _ctl(*tls, "--timeout", "2", "-o", "json", "member", "list")
        rows = json.loads(res.stdout) if res.returncode == 0 else []
        return len(rows) == 3 and all(r["name"] and r["peer"] and r["client"] for r in rows)

    _poll(described, "every member listed with its name and URLs")
    by_id = {r["id"]: r for r in rows}
    # The followers asked the leader over its peer port (the leader listed itself).
    assert any("registered itself in the directory" in m.log(i) for i in (1, 2, 3))
    for i, endpoint in enumerate(endpoints, start=1):
        assert by_id[i]["name"] == f"member-{i}"
        assert by_id[i]["client"] == f"https://{endpoint}"
        assert str(by_id[i]["peer"]).startswith("https://127.0.0.1:")
    table = _ctl(*tls, "member", "list")
    assert (
        table.returncode == 0
        and "member-2" in table.stdout
        and f"https://{endpoints[2]}" in table.stdout
    )
    assert _ctl(*tls, "put", "k", "v").returncode == 0
    plain = _ctl("--endpoints", endpoints[0], "--timeout", "2", "get", "k")
    assert plain.returncode == 1  # no client certificate, no service

    on = _ctl(*tls, "cluster", "autolock", "on")
    assert on.returncode == 0, on.stderr
    keys = {int(i): k for i, k in KEY_RE.findall(on.stdout)}
    assert sorted(keys) == [1, 2, 3] and len(set(keys.values())) == 3  # one key per member

    m.stop(2)
    m.start(2)
    member2 = ["--tls-dir", str(doc["client_tls_dir"]), "--endpoints", endpoints[1]]

    def locked() -> bool:
        res = _ctl(*member2, "--timeout", "2", "-o", "json", "cluster", "autolock", "status")
        return res.returncode == 0 and json.loads(res.stdout)[0]["locked"] is True

    _poll(locked, "member 2 to come back locked")
    res = _ctl(*member2, "get", "k")
    assert res.returncode == 1 and "member is locked: run concordctl unlock" in res.stderr
    wrong = _ctl(*member2, "unlock", input=keys[1] + "\n")  # member 1's key
    assert wrong.returncode == 1 and "PERMISSION_DENIED: wrong unlock key" in wrong.stderr
    # Given every endpoint, as a person would: the two running members are fine as they are.
    right = _ctl(*tls, "-o", "json", "unlock", input=keys[2] + "\n")
    assert right.returncode == 0, right.stderr
    rows = {row["member"]: row for row in json.loads(right.stdout)}
    assert rows[2]["ok"] and rows[2]["result"] == "unlocked"
    for i in (1, 3):
        assert rows[i]["ok"] and rows[i]["result"].startswith("already unlocked"), rows[i]

    def serves() -> bool:
        res = _ctl(*member2, "--timeout", "2", "get", "k", "--serializable")
        return res.returncode == 0 and "v" in res.stdout

    _poll(serves, "member 2 to serve again")
    assert "unlocked through the client API" in m.log(2)
    assert keys[2] not in m.log(2)  # the key is never logged


SECRET = """\
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: prod}
stringData: {password: process-hunter2-secret}
"""


@pytest.mark.process
def test_init_start_seal_and_unseal_with_the_operator_certificate(
    members: tuple[Members, dict[str, object]],
) -> None:
    """Sealed secrets on real processes: `concordctl seal` with the cluster's certificate
    (fetched over mutual TLS with the client certificate), --validate, then Unseal with the
    operator's certificate from `cluster init` (and refused to the client's)."""

    m, doc = members
    endpoints = doc["endpoints"]
    assert isinstance(endpoints, list)
    tls = ["--tls-dir", str(doc["client_tls_dir"]), "--endpoints", ",".join(endpoints)]
    _poll(lambda: _ctl(*tls, "--timeout", "2", "status").returncode == 0, "the members to serve")

    sealed = _ctl(*tls, "--timeout", "30", "seal", input=SECRET)
    assert sealed.returncode == 0, sealed.stderr
    assert "process-hunter2-secret" not in sealed.stdout
    checked = _ctl(*tls, "seal", "--validate", input=sealed.stdout)
    assert checked.returncode == 0 and "password: ok" in checked.stdout, checked.stderr
    envelope = base64.b64decode(yaml.safe_load(sealed.stdout)["spec"]["encryptedData"]["password"])

    def creds(sub: str) -> grpc.ChannelCredentials:
        d = Path(str(doc["operator_tls_dir"])).parent / sub
        return channel_credentials(
            (d / "ca.pem").read_bytes(), (d / "client.pem").read_bytes(),
            (d / "client-key.pem").read_bytes(),
        )  # fmt: skip

    async def unseal(sub: str) -> bytes:
        async with Client(endpoints, credentials=creds(sub), timeout_s=30) as client:
            return (await client.unseal(envelope, "prod", "db")).plaintext

    assert asyncio.run(unseal("operator")) == b"process-hunter2-secret"
    with pytest.raises(ConcordError) as denied:
        asyncio.run(unseal("client"))
    assert denied.value.code == "PERMISSION_DENIED"
    assert "concord://role/operator" in denied.value.message
    for i in (1, 2, 3):
        assert "process-hunter2-secret" not in m.log(i)
