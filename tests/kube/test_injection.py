"""The pure sidecar injection (concord_operator.injection): what an annotated pod gets, that
it is idempotent, and what makes it leave a pod alone. No cluster."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from concord_operator.injection import (
    Injected,
    Refused,
    Settings,
    Skipped,
    inject,
    secret_names,
    wanted,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = Settings(image="reg/concord-sidecar:1.2", endpoints="concord.concord.svc:7070")


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }


def injected(p: dict[str, Any], settings: Settings = SETTINGS) -> dict[str, Any]:
    outcome = inject(p, settings)
    assert isinstance(outcome, Injected), outcome
    return outcome.pod


def test_an_annotated_pod_gets_a_native_sidecar_first() -> None:
    before = pod({"concord.dev/inject": "true"}, initContainers=[{"name": "init", "image": "i"}])
    original = copy.deepcopy(before)
    after = injected(before)
    assert before == original  # the input is not modified
    init = after["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["concord-sidecar", "init"]
    side = init[0]
    assert side["restartPolicy"] == "Always"
    assert side["image"] == "reg/concord-sidecar:1.2"
    assert side["args"] == [
        "--listen=127.0.0.1:7490",
        "--probe-listen=$(POD_IP):7491",
        "--endpoints=concord.concord.svc:7070",
        "--tls-dir=/etc/concord/tls",
        "--token-file",
        "/var/run/secrets/concord/token",
    ]
    assert side["startupProbe"]["httpGet"] == {"path": "/startupz", "port": "concord-probe"}
    assert side["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert side["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert side["ports"] == [{"name": "concord-probe", "containerPort": 7491}]
    assert {m["mountPath"] for m in side["volumeMounts"]} == {
        "/var/run/secrets/concord",
        "/etc/concord/tls",
    }
    volumes = {v["name"]: v for v in after["spec"]["volumes"]}
    assert volumes["concord-token"]["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "concord", "expirationSeconds": 3600, "path": "token"}}
    ]
    assert volumes["concord-ca"]["configMap"]["name"] == "concord-ca"
    assert "concord-secrets" not in volumes
    for c in [after["spec"]["containers"][0], init[1]]:
        assert {"name": "CONCORD_SIDECAR_URL", "value": "http://127.0.0.1:7490"} in c["env"]
        assert "volumeMounts" not in c
    assert after["metadata"]["annotations"]["concord.dev/injected"] == SETTINGS.image


def test_secrets_annotation_adds_the_in_memory_volume_everywhere() -> None:
    after = injected(
        pod(
            {"concord.dev/inject": "true", "concord.dev/secrets": " db, api-key ,db"},
            containers=[{"name": "a", "image": "a"}, {"name": "b", "image": "b"}],
        )
    )
    side = after["spec"]["initContainers"][0]
    assert side["args"][-2:] == ["--secrets-dir", "/run/secrets"]
    assert {"name": "CONCORD_SECRETS", "value": "db,api-key"} in side["env"]
    assert {"name": "concord-secrets", "mountPath": "/run/secrets"} in side["volumeMounts"]
    volumes = {v["name"]: v for v in after["spec"]["volumes"]}
    assert volumes["concord-secrets"] == {
        "name": "concord-secrets",
        "emptyDir": {"medium": "Memory"},
    }
    for c in after["spec"]["containers"]:
        assert c["volumeMounts"] == [
            {"name": "concord-secrets", "mountPath": "/run/secrets", "readOnly": True}
        ]


def test_injection_is_idempotent() -> None:
    once = injected(pod({"concord.dev/inject": "true", "concord.dev/secrets": "db"}))
    assert inject(once, SETTINGS) == Skipped("already injected")


@pytest.mark.parametrize("value", [None, "false", "False", "no", "disabled", "0"])
def test_opted_out_or_unannotated_pods_are_skipped(value: str | None) -> None:
    annotations = {} if value is None else {"concord.dev/inject": value}
    assert isinstance(inject(pod(annotations), SETTINGS), Skipped)


@pytest.mark.parametrize(
    ("annotations", "spec", "says"),
    [
        ({"concord.dev/inject": "maybe"}, {}, "neither true nor false"),
        ({"concord.dev/secrets": ""}, {}, "is empty"),
        ({"concord.dev/secrets": "Bad_Name"}, {}, "'Bad_Name'"),
        (
            {},
            {"containers": [{"name": "concord-sidecar", "image": "x"}]},
            "already has a container",
        ),
        (
            {},
            {"volumes": [{"name": "concord-token", "emptyDir": {}}]},
            "volume named concord-token",
        ),
        ({}, {"hostNetwork": True}, "hostNetwork"),
        (
            {"concord.dev/secrets": "db"},
            {
                "containers": [
                    {"name": "a", "volumeMounts": [{"name": "v", "mountPath": "/run/secrets/"}]}
                ]
            },
            "container a already mounts /run/secrets",
        ),
    ],
)
def test_pods_injection_would_break_are_refused_with_a_reason(
    annotations: dict[str, str], spec: dict[str, Any], says: str
) -> None:
    outcome = inject(pod({"concord.dev/inject": "true", **annotations}, **spec), SETTINGS)
    assert isinstance(outcome, Refused)
    assert says in outcome.reason


def test_an_app_keeps_its_own_sidecar_url() -> None:
    mine = {"name": "CONCORD_SIDECAR_URL", "value": "http://127.0.0.1:9"}
    after = injected(pod({"concord.dev/inject": "true"}, containers=[{"name": "a", "env": [mine]}]))
    assert after["spec"]["containers"][0]["env"] == [mine]


def test_a_pod_ip_listener_gives_the_apps_their_pod_ip() -> None:
    """Where pods share one loopback (the node agent), the API listens on the pod IP."""
    settings = Settings(image="i", endpoints="e:1", listen_host="$(POD_IP)")
    after = injected(pod({"concord.dev/inject": "true"}), settings)
    env = after["spec"]["containers"][0]["env"]
    assert env == [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "CONCORD_SIDECAR_URL", "value": "http://$(POD_IP):7490"},
    ]
    assert after["spec"]["initContainers"][0]["args"][0] == "--listen=$(POD_IP):7490"


def test_annotation_parsing() -> None:
    assert wanted({}) is False
    assert wanted({"concord.dev/inject": " TRUE "}) is True
    assert wanted({"concord.dev/inject": "perhaps"}) is None
    assert secret_names("a,b.c, a") == ["a", "b.c"]
    assert isinstance(secret_names(",,"), str)


@pytest.mark.parametrize("example", ["leader-election.yaml", "sealed-secret-reader.yaml"])
def test_the_examples_pod_templates_are_injected(example: str) -> None:
    """What the webhook makes of the examples' pod templates (their annotations are read
    as meant: no Refused for a typo)."""
    docs = yaml.safe_load_all((EXAMPLES / example).read_text())
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    after = injected(deployment["spec"]["template"])
    (side,) = after["spec"]["initContainers"]
    assert side["name"] == "concord-sidecar"
    if example == "sealed-secret-reader.yaml":
        assert {"name": "CONCORD_SECRETS", "value": "db-credentials"} in side["env"]
