"""Process test: a fourth member joins a running 3-member cluster over the network with a join
token (as `docker swarm join --token`), catches up, is promoted to voter, serves a
linearizable read of a key written before it joined, and restarts without its token.

The three members run with `--ca-key-file` and `--join-listen`, and certificates bound to
their ids. Tokens are made and revoked with `concordctl` itself. A wrong token (a real
process, which must exit 1 saying so), a revoked one and another cluster's one (the joiner's
code, in process, against the real members) are refused with their messages. Every wait is
bounded and waits for a condition.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.client import MemberList
from coordinator.daemon.join import JoinAsk, JoinError, JoinSettings, join_cluster
from coordinator.pki import (
    CA_FILE,
    JoinToken,
    create_ca,
    issue_member_cert,
    load_member_tls,
    new_join_token,
    write_ca,
    write_member_tls,
    write_pem,
)
from coordinator.testing.ports import free_ports
from coordinator.testing.process_cluster import REPO, MemberProcess, ProcessCluster, run
from coordinator.testing.procs import member_argv

pytestmark = pytest.mark.process

JOINER = 4


class JoinableCluster(ProcessCluster):
    """Members that let others join (CA key, join port, id-bound certificates), and room
    for members that join with a token."""

    def __init__(self, root: Path, size: int = 3, **options: object) -> None:
        super().__init__(root, size, **options)  # type: ignore[arg-type]
        write_ca(root / "ca", self.ca)
        self.join_ports: dict[int, int] = {}
        for m, port in zip(self.members.values(), free_ports(size), strict=True):
            bound = issue_member_cert(self.ca, f"member-{m.id}", member_id=m.id)
            write_member_tls(m.tls_dir, self.ca.cert_pem, bound)
            self.join_ports[m.id] = port
            m.extra_args += [
                "--ca-key-file",
                str(root / "ca" / "ca-key.pem"),
                "--join-listen",
                f"127.0.0.1:{port}",
            ]
        self.joiners: set[int] = set()
        self.join_args: dict[int, list[str]] = {}
        """Used at a joiner's next start only (a restart needs no token)."""
        self.client_dir = root / "client"
        write_pem(self.client_dir / CA_FILE, self.ca.cert_pem)
        write_pem(self.client_dir / "client.pem", self.client_cert.cert_pem)
        write_pem(self.client_dir / "client-key.pem", self.client_cert.key_pem)

    def add_joiner(self, slot: int, join_address: str, token: str) -> MemberProcess:
        client, peer, metrics_port = free_ports(3)
        m = MemberProcess(
            slot,
            client,
            peer,
            metrics_port,
            self.root / f"data-{slot}",
            self.root / f"tls-{slot}",
            self.root / f"member-{slot}.log",
        )
        self.members[slot] = m
        self.joiners.add(slot)
        self.join_args[slot] = ["--join", join_address, "--join-token", token]
        return m

    def command(self, m: MemberProcess) -> list[str]:
        if m.id not in self.joiners:
            return super().command(m)
        args = [
            "--id", "0",
            "--data-dir", str(m.data_dir),
            "--tls-dir", str(m.tls_dir),
            "--client-listen", m.client_address,
            "--peer-listen", m.peer_address,
            "--metrics-listen", f"127.0.0.1:{m.metrics_port}",
            "--tick-ms", str(self.tick_ms),
            "--election-ticks", str(self.election_ticks),
            "--log-level", self.log_level,
            *self.join_args.pop(m.id, []),
            *m.extra_args,
        ]  # fmt: skip
        return member_argv(args)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """concordctl against the first three members, with the client certificate."""
        endpoints = ",".join(self.endpoints(range(1, self.size + 1)))
        return subprocess.run(
            [
                sys.executable, "-m", "coordinator.cli.main",
                "--tls-dir", str(self.client_dir),
                "--endpoints", endpoints,
                "--timeout", "20",
                *args,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip


@pytest.fixture
def joinable(tmp_path: Path) -> Iterator[JoinableCluster]:
    cluster = JoinableCluster(tmp_path / "cluster", 3, tick_ms=50)
    try:
        cluster.start_all()
        yield cluster
    except BaseException:
        print(f"member logs:{cluster.log_tails(chars=6000)}")
        raise
    finally:
        cluster.close()


def roles(resp: MemberList) -> dict[int, str]:
    return {m.id: m.role for m in resp.members}


def test_a_member_joins_with_a_token_is_promoted_serves_reads_and_restarts_without_it(
    joinable: JoinableCluster,
) -> None:
    cluster = joinable

    async def prepare() -> int:
        await cluster.wait_ready(timeout_s=60)
        leader = await cluster.leader(timeout_s=60)
        async with cluster.client() as c:
            await c.put(b"written-before-the-join", b"v1")
        return leader

    leader = run(prepare(), 120)
    follower = next(i for i in (1, 2, 3) if i != leader)
    join_address = f"127.0.0.1:{cluster.join_ports[follower]}"  # forwarded to the leader

    # Tokens through concordctl: printed once; listed by id; one revoked.
    made = cluster.ctl("-o", "json", "join-token", "create")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    revoked = cluster.ctl("join-token", "create")
    assert revoked.returncode == 0, revoked.stderr
    revoked_token = revoked.stdout.strip()
    revoked_id = JoinToken.parse(revoked_token).id
    assert cluster.ctl("join-token", "revoke", revoked_id).returncode == 0
    listed = cluster.ctl("-o", "json", "join-token", "list")
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rows[JoinToken.parse(token).id]["revoked"] == ""
    assert rows[revoked_id]["revoked"] != ""
    assert token not in listed.stdout

    # A wrong token: the joining process exits 1 and says why; nothing was admitted.
    forged = JoinToken(1, JoinToken.parse(token).ca_fingerprint, "b" * 32)
    wrong = cluster.add_joiner(5, join_address, str(forged))
    cluster.start(5)
    assert wrong.popen is not None and wrong.popen.wait(60) == 1, wrong.log()
    wrong.expected_running = False
    assert "join token not valid for this cluster" in wrong.log()
    assert not (wrong.tls_dir / "member.pem").exists()

    # A revoked token and another cluster's token, through the joiner's own code.
    async def refused(text: str) -> str:
        settings = JoinSettings(join_address, JoinToken.parse(text), False, 20.0)
        ask = JoinAsk(0, "", "https://127.0.0.1:1", "https://127.0.0.1:2")
        with pytest.raises(JoinError) as err:
            await join_cluster(settings, ask)
        return str(err.value)

    assert f"join token {revoked_id} was revoked at" in run(refused(revoked_token), 60)
    foreign = str(new_join_token(create_ca("elsewhere").cert_pem))
    assert "wrong cluster, or someone in the middle" in run(refused(foreign), 60)

    # The real join: a learner first, then a voter once caught up.
    joiner = cluster.add_joiner(JOINER, join_address, token)
    cluster.start(JOINER)

    async def joined_and_promoted() -> bytes | None:
        await cluster.wait_ready([JOINER], timeout_s=60)
        async with cluster.client(range(1, 4)) as c:

            async def voter() -> bool:
                return roles(await c.members()).get(JOINER) == "voter"

            await cluster.wait(voter, 60, f"member {JOINER} promoted to voter")
            await c.put(b"written-after-the-join", b"v2")
        async with cluster.client([JOINER]) as only_the_joiner:
            kv = await only_the_joiner.get(b"written-before-the-join")  # linearizable
            return kv.value if kv is not None else None

    assert run(joined_and_promoted(), 180) == b"v1"
    tls = load_member_tls(joiner.tls_dir)
    assert tls.member_id == JOINER
    assert (joiner.tls_dir / "member-key.pem").stat().st_mode & 0o777 == 0o600
    log = joiner.log()
    assert f"joined cluster 'process-test' as member {JOINER}" in log
    assert "promoted to voter" in log

    # A restart needs neither the token nor --initial-cluster: its data dir knows.
    assert cluster.terminate(JOINER) == 0

    async def write_while_down() -> None:
        async with cluster.client(range(1, 4)) as c:
            await c.put(b"written-while-it-was-down", b"v3")

    run(write_while_down(), 60)
    cluster.restart(JOINER)

    async def back() -> tuple[bytes | None, bytes | None]:
        await cluster.wait_ready([JOINER], timeout_s=60)
        async with cluster.client([JOINER]) as c:
            down = await c.get(b"written-while-it-was-down")
            before = await c.get(b"written-before-the-join")
            return (down.value if down else None, before.value if before else None)

    assert run(back(), 120) == (b"v3", b"v1")
    restart_log = joiner.current_log()
    assert "joining the cluster" not in restart_log
    assert "--join-token" not in " ".join(cluster.command(joiner))
