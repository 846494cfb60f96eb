"""`concordctl cluster init` and `concordctl join-token`: offline, with click's CliRunner."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from coordinator.cli.main import cli
from coordinator.runtime.member import build_parser, config_from_args
from coordinator.runtime.tls import (
    JoinTokenError,
    JoinTokenStore,
    load_member_tls,
    verify_join_token,
)


def ctl(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_init_writes_a_working_cluster_layout(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    res = ctl("-o", "json", "cluster", "init", "--dir", str(d), "--dns", "concord.example")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["members"]) == 3 and doc["cluster_id"].startswith("concord-")
    ca_pem = (d / "ca.pem").read_bytes()
    assert (d / "ca-key.pem").stat().st_mode & 0o777 == 0o600

    for i, m in enumerate(doc["members"], start=1):
        tls = load_member_tls(Path(m["tls_dir"]))  # the CA signed it, key and cert match
        sans = x509.load_pem_x509_certificate(tls.cert_pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert "concord.example" in sans.value.get_values_for_type(x509.DNSName)
        assert not (Path(m["tls_dir"]) / "ca-key.pem").exists()
        argv = shlex.split(m["command"])
        assert argv[0] == "concord-coordinator"
        cfg = config_from_args(build_parser().parse_args(argv[1:]))
        assert cfg.id == i and cfg.tls_dir == Path(m["tls_dir"]) and not cfg.insecure
        assert cfg.cluster_id == doc["cluster_id"]
        assert sorted(cfg.initial_cluster) == [1, 2, 3]
        assert cfg.client_listen == doc["endpoints"][i - 1]
    client = x509.load_pem_x509_certificate((d / "client" / "client.pem").read_bytes())
    client.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    assert (d / "client" / "ca.pem").read_bytes() == ca_pem

    token = verify_join_token(doc["join_token"], ca_pem, JoinTokenStore(d / "join-tokens.json"))
    assert token.id == doc["join_token_id"]


def test_init_prints_commands_for_people_and_refuses_to_overwrite(tmp_path: Path) -> None:
    d = tmp_path / "c"
    res = ctl("cluster", "init", "--dir", str(d), "--members", "4", "--base-port", "9000")
    assert res.exit_code == 0, res.output
    assert "CONCORD-JOIN-1-" in res.stdout
    commands = [line.strip() for line in res.stdout.splitlines() if "concord-coordinator" in line]
    assert len(commands) == 4
    assert "--client-listen 127.0.0.1:9009" in commands[3]
    assert "an even size buys nothing" in res.stderr

    again = ctl("cluster", "init", "--dir", str(d))
    assert again.exit_code == 1
    assert "already holds a cluster CA" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--members", "0"], "0 is not in the range 1<=x<=9"),
        (["--members", "10"], "10 is not in the range 1<=x<=9"),
        (["--dns", "has space"], "is not a DNS name"),
    ],
)
def test_init_rejects_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    res = ctl("cluster", "init", "--dir", str(tmp_path / "c"), *args)
    assert res.exit_code == 2
    assert message in res.stderr
    assert not (tmp_path / "c" / "ca.pem").exists()


def test_join_tokens_create_list_revoke(tmp_path: Path) -> None:
    d = tmp_path / "c"
    assert ctl("cluster", "init", "--dir", str(d), "--members", "1").exit_code == 0
    store = JoinTokenStore(d / "join-tokens.json")
    ca_pem = (d / "ca.pem").read_bytes()

    made = ctl("-o", "json", "join-token", "create", "--dir", str(d))
    assert made.exit_code == 0, made.output
    doc = json.loads(made.stdout)
    verify_join_token(doc["token"], ca_pem, store)

    listed = ctl("-o", "json", "join-token", "list", "--dir", str(d))
    rows = json.loads(listed.stdout)
    assert len(rows) == 2 and all(r["revoked"] == "" for r in rows)

    res = ctl("join-token", "revoke", "--dir", str(d), doc["id"])
    assert res.exit_code == 0, res.output
    with pytest.raises(JoinTokenError, match="was revoked"):
        verify_join_token(doc["token"], ca_pem, store)
    plain = ctl("join-token", "create", "--dir", str(d))
    token = plain.stdout.strip()
    assert ctl("join-token", "revoke", "--dir", str(d), token).exit_code == 0  # by the token
    with pytest.raises(JoinTokenError, match="was revoked"):
        verify_join_token(token, ca_pem, store)

    unknown = ctl("join-token", "revoke", "--dir", str(d), "0123456789ab")
    assert unknown.exit_code == 1
    assert "no join token with id '0123456789ab'" in unknown.stderr
    assert "join-token list" in unknown.stderr
    damaged = ctl("join-token", "revoke", "--dir", str(d), "CONCORD-JOIN-1-abc-def")
    assert damaged.exit_code == 2 and "damaged" in damaged.stderr

    nowhere = ctl("join-token", "create", "--dir", str(tmp_path / "nothing"))
    assert nowhere.exit_code == 1
    assert "no cluster CA in" in nowhere.stderr and "cluster init" in nowhere.stderr
