"""`concord-operator`'s command line, without a cluster: flags, their environment variables,
and usage errors (exit status 2 before anything is contacted)."""

from pathlib import Path

import pytest

from concord_operator.__main__ import parse_args


def test_flags_fall_back_to_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCORD_ENDPOINTS", "a:1, b:2")
    monkeypatch.setenv("CONCORD_TLS_DIR", "/tls")
    monkeypatch.setenv("KUBECONFIG", "/kc")
    monkeypatch.setenv("CONCORD_NAMESPACES", "x,y")
    monkeypatch.setenv("POD_NAME", "operator-0")
    args = parse_args([])
    assert args.endpoints == ["a:1", "b:2"]
    assert args.tls_dir == Path("/tls")
    assert args.kubeconfig == Path("/kc")
    assert args.namespace == ["x", "y"]
    assert args.identity == "operator-0"
    assert (args.http_host, args.http_port) == ("0.0.0.0", 8080)
    assert args.status_interval_seconds == 0.5


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCORD_ENDPOINTS", "a:1")
    args = parse_args(["--endpoints", "c:3", "--http-listen", "127.0.0.1:9", "--namespace", "n"])
    assert args.endpoints == ["c:3"]
    assert (args.http_host, args.http_port) == ("127.0.0.1", 9)
    assert args.namespace == ["n"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        ([], "--endpoints"),
        (["--endpoints", "a:1", "--http-listen", "nope"], "host:port"),
    ],
)
def test_usage_errors_exit_2_with_what_to_fix(
    argv: list[str], said: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONCORD_ENDPOINTS", raising=False)
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


def test_the_certificate_configmap_goes_to_the_operators_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert parse_args(["--endpoints", "a:1", "--namespace", "n"]).operator_namespace == "n"
    assert parse_args(["--endpoints", "a:1"]).operator_namespace == "default"
    monkeypatch.setenv("POD_NAMESPACE", "concord")
    args = parse_args(["--endpoints", "a:1", "--namespace", "n"])
    assert args.operator_namespace == "concord"
    assert args.sealing_certificate_configmap == "concord-sealing-certificate"
    assert args.sealing_certificate_interval_seconds == 60.0
