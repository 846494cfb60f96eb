"""Bad command lines and bad input: exit 2 with a message that says what to fix, before
anything is sent (so no cluster is needed: the endpoint below has nobody listening)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from coordinator.cli.main import cli
from coordinator.storage import KeyStore, split_unlock_key
from tests.cli.threaded import free_port

NOWHERE = f"127.0.0.1:{free_port()}"


def ctl(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--endpoints", NOWHERE, "--timeout", "0.5", *args], input=input)


@pytest.fixture(scope="module")
def unlock_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    key = KeyStore.create(tmp_path_factory.mktemp("keys") / "data", autolock=True).unlock_key
    assert key is not None
    return key


def test_malformed_unlock_keys_are_refused_locally(unlock_key: str) -> None:
    cases = [
        (["unlock", "--key", "hunter2"], "--key: not an unlock key: it must start with"),
        (["unlock", "--key", "CONCORD-UNLOCK-ABCDEFGH"], "truncated or doubled paste?"),
        (["unlock", "--key", unlock_key[:-4] + "AAAA"], "checksum does not match"),
        (["unlock", "--key", unlock_key, "--share", "x"], "either --key or --share, not both"),
    ]
    for args, message in cases:
        res = ctl(*args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.stderr, (args, res.stderr)
        assert unlock_key not in res.output  # a secret is never echoed


def test_bad_shares_are_refused_locally(unlock_key: str) -> None:
    shares = split_unlock_key(unlock_key, 2, 3)
    other = split_unlock_key(unlock_key, 2, 3)
    mistyped = shares[1][:-2] + ("A" if shares[1][-2] != "A" else "B") + shares[1][-1]
    cases = [
        (["--share", shares[0]], "1 distinct share(s) given; this key needs 2"),
        (["--share", shares[0], "--share", shares[0]], "1 distinct share(s) given"),
        (["--share", shares[0], "--share", mistyped], "share #2 is mistyped"),
        (["--share", shares[0], "--share", other[1]], "come from different splits"),
        (["--share", "CONCORD-UNLOCK-X"], "share #1 is not an unlock-key share"),
    ]
    for args, message in cases:
        res = ctl("unlock", *args)
        assert res.exit_code == 2, (args, res.output)
        assert "cannot rebuild the unlock key from the shares" in res.stderr
        assert message in res.stderr, (args, res.stderr)


def test_unlock_needs_some_key_on_stdin() -> None:
    res = ctl("unlock", input="")
    assert res.exit_code == 2 and "no unlock key given" in res.stderr
    res = ctl("unlock", input="one\ntwo\n")
    assert res.exit_code == 2 and "read 2 lines from stdin" in res.stderr
    res = ctl("unlock", input="nonsense\n")
    assert res.exit_code == 2
    assert "the unlock key read from stdin: not an unlock key" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cluster", "autolock", "on", "--shares", "3/2"], "is not K/N with 2 <= K <= N <= 255"),
        (["cluster", "autolock", "on", "--shares", "1/3"], "is not K/N"),
        (["cluster", "autolock", "on", "--shares", "two"], "is not K/N"),
        (["cluster", "autolock", "off", "--shares", "2/3"], "--shares goes with `autolock on`"),
        (["cluster", "autolock", "maybe"], "'maybe' is not one of 'on', 'off', 'status'"),
        (["cluster", "rotate-unlock-key", "--shares", "2/256"], "is not K/N"),
        (["lease", "grant", "0"], "the TTL must be > 0"),
        (["lease", "grant", "-5"], "'-5': the TTL must be > 0"),
        (["lease", "grant", "0ms"], "the TTL must be > 0"),
        (["lease", "grant", "soon"], "'soon' is not a duration"),
        (["lease", "revoke", "0"], "0 is not in the range x>=1"),
        (["lease", "ttl", "abc"], "'abc' is not a valid integer range"),
        (["member", "remove", "0"], "0 is not in the range x>=1"),
        (["member", "add", "4", "m4"], "Missing argument 'PEER_URL'"),
        (["elect", "jobs"], "give VALUE to campaign with"),
        (["elect", "--leader", "jobs", "me"], "--leader takes only NAME"),
        (["watch", "k", "--rev", "0"], "0 is not in the range x>=1"),
        (["--timeout", "0", "status"], "0.0 is not in the range x>0"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    res = ctl(*args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr


def test_a_tls_dir_without_certificates_is_a_usage_error(tmp_path: Path) -> None:
    res = ctl("--tls-dir", str(tmp_path), "status")
    assert res.exit_code == 2
    assert "must hold ca.pem and client.pem + client-key.pem" in res.stderr
    res = ctl("--tls-dir", str(tmp_path / "missing"), "status")
    assert res.exit_code == 2
    assert f"TLS directory '{tmp_path / 'missing'}' does not exist" in res.stderr
    assert "--tls-dir" in res.stderr


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ("127.0.0.1:99999", "bad endpoint '127.0.0.1:99999': the port 99999 is out of range"),
        ("127.0.0.1:2379,localhost", "bad endpoint 'localhost': expected host:port"),
        (" , ", "give at least one endpoint"),
    ],
)
def test_bad_endpoints_are_usage_errors(endpoints: str, message: str) -> None:
    res = CliRunner().invoke(cli, ["--endpoints", endpoints, "get", "k"])
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    res = CliRunner().invoke(cli, ["get", "k"], env={"CONCORD_ENDPOINTS": endpoints})
    assert res.exit_code == 2, res.output


def test_an_unreachable_cluster_is_a_failure_not_a_usage_error() -> None:
    res = ctl("get", "k")
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: UNAVAILABLE: nothing listens on {NOWHERE}")
