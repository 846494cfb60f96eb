"""The sidecar's name mapping for pods with a workload token: every name and key the app
gives becomes `k8s/<namespace>/...` in the coordinator (the operator's objects of that
namespace, and the only ones the coordinator lets the pod touch), while every answer shows
the app's own names. Against a real in-process cluster, answers checked against the spec."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import pytest

from coordinator.client import InvalidArgument
from coordinator.pki import create_ca
from coordinator.sidecar._main import client_from, name_prefix, parser
from coordinator.sidecar._namespace import pod_namespace, token_namespace
from coordinator.sidecar._secretfiles import config_from
from tests.sidecar.harness import Rig, with_rig

PREFIX = "k8s/team-a/"


def test_the_apps_names_are_the_namespaces_objects(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        got = await r.api.call("POST", "/v1/locks/nightly", {"ttl_ms": 5_000})
        assert got.status == 201 and got.json()["name"] == "nightly"
        token = got.json()["fencing_token"]
        info = await r.client.lock_info(PREFIX + "nightly")
        assert [h.fencing_token for h in info.holders] == [token]
        assert (await r.client.lock_info("nightly")).holders == ()
        shown = await r.api.call("GET", "/v1/locks/nightly")
        assert shown.json()["name"] == "nightly" and shown.json()["holders"][0]["mine"]
        fence = await r.api.call("POST", "/v1/locks/nightly/fence", {"fencing_token": token})
        assert fence.json()["current"] is True

        led = await r.api.call("POST", "/v1/elections/boss/campaign", {"value": "me"})
        assert led.status == 201
        leader = await r.client.leader(PREFIX + "boss")
        assert leader is not None and leader.value == b"me"
        assert (await r.api.call("GET", "/v1/elections/boss/leader")).json()["name"] == "boss"

        assert (await r.api.call("POST", "/v1/sequences/ids", {"start": 7})).status == 201
        assert (await r.api.call("POST", "/v1/sequences/ids/next", {})).json()["values"] == [7]
        assert (await r.client.sequence_get(PREFIX + "ids")).next == 8

        assert (await r.api.call("PUT", "/v1/kv/mode", {"value": "a"})).status == 200
        cas = await r.api.call("POST", "/v1/kv/mode", {"value": "b", "expected_value": "a"})
        assert cas.status == 200 and cas.json()["key"] == "mode"
        kv = await r.client.get((PREFIX + "mode").encode())
        assert kv is not None and kv.value == b"b"
        assert await r.client.get(b"mode") is None
        view = await r.api.call("GET", "/v1/kv/mode")
        assert view.json()["key"] == "mode" and view.json()["value"] == "b"
        stale = await r.api.call("POST", "/v1/kv/mode", {"value": "c", "expected_value": "a"})
        assert stale.status == 412 and stale.json()["current"]["key"] == "mode"
        # Readiness reads its probe key inside the namespace too.
        assert (await r.api.call("GET", "/readyz")).status == 200

    with_rig(tmp_path, scenario, prefix=PREFIX)


def _jwt(claims: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256'})}.{part(claims)}.c2ln"


def test_the_namespace_comes_from_the_flag_the_environment_or_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(_jwt({"kubernetes.io": {"namespace": "from-claim"}}))
    assert token_namespace(token_file.read_text()) == "from-claim"
    assert token_namespace(_jwt({"sub": "system:serviceaccount:from-sub:app"})) == "from-sub"
    assert token_namespace("not a jwt") == ""

    def prefix(*argv: str, env: dict[str, str] | None = None) -> str:
        args: argparse.Namespace = parser().parse_args(list(argv))
        return name_prefix(args, env or {})

    with_token = ("--token-file", str(token_file))
    assert prefix(*with_token) == "k8s/from-claim/"
    assert prefix(*with_token, env={"POD_NAMESPACE": "from-env"}) == "k8s/from-env/"
    assert prefix(*with_token, "--namespace", "from-flag") == "k8s/from-flag/"
    assert prefix() == ""  # a client certificate: names as given, as before
    token_file.write_text("opaque")
    with pytest.raises(SystemExit):
        prefix(*with_token)


def test_secrets_are_read_from_the_identitys_namespace(tmp_path: Path) -> None:
    """One namespace for names and secrets: a second source could only disagree with the
    namespace the coordinator scopes the token to (and then every read is refused)."""
    token_file = tmp_path / "token"
    token_file.write_text(_jwt({"kubernetes.io": {"namespace": "from-claim"}}))

    def both(*argv: str, env: dict[str, str] | None = None) -> tuple[str, str]:
        args: argparse.Namespace = parser().parse_args(["--secrets", "db", *argv])
        cfg = config_from(args, env or {})
        assert cfg is not None
        return name_prefix(args, env or {}), cfg.namespace

    with_token = ("--token-file", str(token_file))
    assert both(*with_token) == ("k8s/from-claim/", "from-claim")
    assert both(*with_token, env={"POD_NAMESPACE": "from-env"}) == ("k8s/from-env/", "from-env")
    assert both(*with_token, "--namespace", "from-flag") == ("k8s/from-flag/", "from-flag")
    # A client certificate maps no names; its secrets still need a namespace.
    assert both("--namespace", "shop") == ("k8s/shop/", "shop")
    assert both(env={"POD_NAMESPACE": "shop"}) == ("", "shop")
    sa_file = tmp_path / "namespace"
    sa_file.write_text("from-file\n")
    assert pod_namespace(None, None, {}, sa_file) == "from-file"
    assert pod_namespace(None, str(token_file), {}, sa_file) == "from-claim"
    # The old second knob is gone.
    with pytest.raises(SystemExit):
        parser().parse_args(["--secrets", "db", "--secrets-namespace", "x"])


def test_the_injected_tls_dir_with_only_the_ca_is_enough_for_a_token_client(
    tmp_path: Path,
) -> None:
    """The injector mounts only ca.pem (the CA ConfigMap) at --tls-dir: with --token-file
    the sidecar trusts it and asks for no client certificate."""
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "ca.pem").write_bytes(create_ca("injected").cert_pem)
    token_file = tmp_path / "token"
    token_file.write_text(_jwt({"kubernetes.io": {"namespace": "team-a"}}))
    args = parser().parse_args(
        ["--endpoints", "m-0:7073,m-1:7073", "--tls-dir", str(tls), "--token-file", str(token_file)]
    )
    client = client_from(args)
    assert client.token_file is not None and Path(client.token_file) == token_file
    assert client.endpoints == ["m-0:7073", "m-1:7073"]
    # Without the CA there is nothing to trust: said at once, naming the file (serve()
    # turns it into exit 2), not a TLS failure at the first call.
    (tls / "ca.pem").unlink()
    with pytest.raises(InvalidArgument, match=r"cannot read the CA file .*ca\.pem"):
        client_from(args)
