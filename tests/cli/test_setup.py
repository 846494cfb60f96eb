"""`concordctl cluster init` (offline) and the input checks of `concordctl join-token`, with
click's CliRunner. (`join-token` against a running cluster: tests/process/test_process_join.py.)"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from coordinator.cli.main import cli
from coordinator.daemon.config import ConfigError, build_parser, config_from_args
from coordinator.pki import OPERATOR_ROLE, load_member_tls, new_join_token, roles_of


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
        assert tls.member_id == i  # bound to its member id
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
        assert cfg.join_listen == m["join_address"] and cfg.ca_key_file == d / "ca-key.pem"
    client = x509.load_pem_x509_certificate((d / "client" / "client.pem").read_bytes())
    client.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    assert (d / "client" / "ca.pem").read_bytes() == ca_pem
    assert roles_of(client) == frozenset()
    # The operator's identity: the one certificate Secrets.Unseal answers plaintext to.
    operator = x509.load_pem_x509_certificate((d / "operator" / "client.pem").read_bytes())
    operator.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    assert roles_of(operator) == frozenset({OPERATOR_ROLE})
    assert doc["operator_tls_dir"] == str(d / "operator")
    assert (d / "operator" / "client-key.pem").stat().st_mode & 0o777 == 0o600
    assert cfg.sealing_key_renew_days == 30.0
    renew = build_parser().parse_args([*argv[1:], "--sealing-key-renew-days", "-1"])
    with pytest.raises(ConfigError, match="sealing-key-renew-days"):
        config_from_args(renew)

    # No token yet (tokens live in the running cluster): the commands to get one and to join.
    assert "join_token" not in doc
    assert shlex.split(doc["join_token_command"])[-2:] == ["join-token", "create"]
    token = str(new_join_token(ca_pem))
    argv = [token if a == "TOKEN" else a for a in shlex.split(doc["join_command"])]
    joiner = config_from_args(build_parser().parse_args(argv[1:]))
    assert joiner.join is not None and str(joiner.join.token) == token
    assert joiner.join.address == doc["members"][0]["join_address"]
    assert joiner.id == 0 and joiner.initial_cluster == {}


def test_init_prints_commands_for_people_and_refuses_to_overwrite(tmp_path: Path) -> None:
    d = tmp_path / "c"
    res = ctl("cluster", "init", "--dir", str(d), "--members", "4", "--base-port", "9000")
    assert res.exit_code == 0, res.output
    assert "CONCORD-JOIN-1-" not in res.stdout
    assert "join-token create" in res.stdout
    commands = [line.strip() for line in res.stdout.splitlines() if "concord-coordinator" in line]
    assert len(commands) == 5  # four members, and the command a fifth one joins with
    assert "--client-listen 127.0.0.1:9012 " in commands[3]
    assert "--join-listen 127.0.0.1:9015 " in commands[3]
    assert "--join 127.0.0.1:9003 --join-token TOKEN" in commands[4]
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


def test_join_token_commands_check_their_input_before_sending(tmp_path: Path) -> None:
    damaged = ctl("join-token", "revoke", "CONCORD-JOIN-1-abc-def")
    assert damaged.exit_code == 2 and "damaged" in damaged.stderr
    nobody = ctl("--endpoints", "127.0.0.1:1", "--timeout", "0.5", "join-token", "list")
    assert nobody.exit_code == 1 and nobody.stderr.startswith("Error: UNAVAILABLE")
    offline = ctl("join-token", "create", "--dir", str(tmp_path))
    assert offline.exit_code == 2  # the offline variant is gone: tokens live in the cluster
