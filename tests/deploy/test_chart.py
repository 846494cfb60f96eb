"""The chart against the live API server: lint, render, server-side dry run of every
manifest, and values.schema.json refusing bad values with a message that names them."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from coordinator.testing.controlplane import ControlPlane
from tests.deploy.chart import CHART, EXAMPLES, render

pytestmark = pytest.mark.kube

NON_DEFAULT = (
    "coordinator.replicas=5",
    "operator.enabled=false",
    "podDisruptionBudget.enabled=false",
    "coordinator.topologySpread.whenUnsatisfiable=DoNotSchedule",
    "coordinator.persistence.storageClassName=fast",
    "coordinator.extraArgs={--tick-ms=50}",
    "fullnameOverride=coord",
    "tls.secretName=my-certs",
    "networkPolicy.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
)

INJECTION = (
    "injection.failurePolicy=Fail",
    "injection.timeoutSeconds=2",
    "injection.namespaceSelector.matchLabels.team=a",
    "injection.sidecar.listenHost=$(POD_IP)",
    "injection.sidecar.endpoints=coord.example:7073",
)

MONITORING = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
)
MONITORING_APIS = (
    "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
)  # fmt: skip


def test_helm_lint_is_clean(control_plane: ControlPlane) -> None:
    done = control_plane.helm("lint", "--strict", str(CHART), "--kube-version", "1.34.12")
    assert "0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


def test_helm_template_offline_gives_policy_v1(control_plane: ControlPlane) -> None:
    """Without a server helm assumes old API versions; the chart names policy/v1 itself."""
    done = control_plane.helm("template", "concord", str(CHART), "--kube-version", "1.34.12")
    assert "apiVersion: policy/v1\nkind: PodDisruptionBudget" in done.stdout
    assert "policy/v1beta1" not in done.stdout


def test_force_new_cluster_reaches_only_the_named_ordinal(control_plane: ControlPlane) -> None:
    """Disaster recovery (docs/deploy.md): the flag is in the script only when asked for, and
    only for the one ordinal named, never for every member."""

    def script(*values: str) -> str:
        args = ["template", "concord", str(CHART), "--show-only", "templates/statefulset.yaml"]
        done = control_plane.helm(*args, *(a for v in values for a in ("--set", v)))
        sts = yaml.safe_load(done.stdout)
        return str(sts["spec"]["template"]["spec"]["containers"][0]["command"][2])

    assert "--force-new-cluster" not in script()
    forced = script("coordinator.forceNewClusterOrdinal=2")
    assert (
        'if [ "$ordinal" = "2" ]; then\n  set -- --force-new-cluster "$@"\n'
        'else\n  set -- --no-bootstrap "$@"'
    ) in forced


@pytest.mark.parametrize(
    "values", [(), NON_DEFAULT, INJECTION], ids=["default", "non-default", "injection"]
)
def test_every_manifest_passes_a_server_side_dry_run(
    control_plane: ControlPlane, kube_namespace: str, values: tuple[str, ...]
) -> None:
    objects = render(control_plane, kube_namespace, *values)
    kinds = sorted(o["kind"] for o in objects)
    expected = ["PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    if "operator.enabled=false" not in values:
        expected += ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]
        expected += ["MutatingWebhookConfiguration", "Service"]  # the sidecar injector
        expected.append("ConcordCluster")  # membership follows the StatefulSet through it
    # Workload identity, on by default: the members' ServiceAccount and its TokenReview grant.
    expected += ["ClusterRoleBinding", "ServiceAccount"]
    if "tls.secretName=my-certs" not in values:  # the CA bootstrap hook
        expected += ["ConfigMap", "Job", "Role", "RoleBinding", "ServiceAccount"]
    if "networkPolicy.enabled=true" in values:
        expected.append("NetworkPolicy")
    if "metrics.grafanaDashboard.enabled=true" in values:
        expected.append("ConfigMap")
    if "podDisruptionBudget.enabled=false" in values:
        expected.remove("PodDisruptionBudget")
    assert kinds == sorted(expected)
    done = control_plane.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        kube_namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )
    assert done.stdout.count("(server dry run)") == len(objects)
    sts = next(o for o in objects if o["kind"] == "StatefulSet")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    replicas = 5 if values == NON_DEFAULT else 3
    assert sts["spec"]["replicas"] == replicas
    script = sts["spec"]["template"]["spec"]["containers"][0]["command"][2]
    initial = re.search(r'--initial-cluster "([^"]*)"', script)
    assert initial is not None
    ids = [m.split("=", 1)[0] for m in initial.group(1).split(",")]
    assert ids == [str(i) for i in range(1, replicas + 1)]
    # One command line for every ordinal: those beyond --initial-cluster wait to be added.
    assert "--join-if-new" in script
    # Every ordinal up to maxReplicas (7) finds its certificate in the mounted Secret.
    tls_all = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls-all")
    keys = {i["key"] for i in tls_all["secret"]["items"]}
    assert {f"member-{n}.pem" for n in range(1, 8)} <= keys and "member-8.pem" not in keys
    if "operator.enabled=false" not in values:
        cluster = next(o for o in objects if o["kind"] == "ConcordCluster")
        assert cluster["spec"] == {"statefulSetName": sts["metadata"]["name"]}
    if values == INJECTION:
        (hook,) = next(o for o in objects if o["kind"] == "MutatingWebhookConfiguration")[
            "webhooks"
        ]
        assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 2
        assert hook["namespaceSelector"] == {"matchLabels": {"team": "a"}}
        assert "caBundle" not in hook["clientConfig"]  # the operator writes it
        operator = next(o for o in objects if o["kind"] == "Deployment")
        args = operator["spec"]["template"]["spec"]["containers"][0]["command"]
        # Escaped, so the operator's own container does not expand it.
        assert "--sidecar-listen-host=$$(POD_IP)" in args
        assert "--sidecar-endpoints=coord.example:7073" in args
        assert "--sidecar-token-audience=concord" in args


def test_injected_sidecars_dial_every_members_workload_port(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    """By default the sidecars get every member's workload port (the client port would ask
    them for a certificate they do not have), one per member so that a follower's redirect,
    which names the leader's host, has an endpoint on that host to go to; and the token
    audience the members check."""
    for values, replicas, port, audience in [
        ((), 3, 7073, "concord"),
        (
            ("coordinator.replicas=5", "workloadIdentity.port=7100", "workloadIdentity.audience=x"),
            5,
            7100,
            "x",
        ),
    ]:
        objects = render(control_plane, kube_namespace, *values)
        operator = next(o for o in objects if o["kind"] == "Deployment")
        args = operator["spec"]["template"]["spec"]["containers"][0]["command"]
        peers = f"concord-peers.{kube_namespace}.svc.cluster.local"
        wanted = ",".join(f"concord-{i}.{peers}:{port}" for i in range(replicas))
        assert f"--sidecar-endpoints={wanted}" in args
        assert f"--sidecar-token-audience={audience}" in args
        sts = next(o for o in objects if o["kind"] == "StatefulSet")
        script = sts["spec"]["template"]["spec"]["containers"][0]["command"][2]
        assert f'--workload-listen "$POD_IP:{port}"' in script
        assert f'--token-audience "{audience}"' in script


def test_injection_without_workload_identity_is_refused_with_why(
    control_plane: ControlPlane,
) -> None:
    """An injected sidecar has a token and a CA, no client certificate: without the
    members' workload port it could never talk to them, so the chart says so at render."""
    assert control_plane.helm_path is not None
    done = subprocess.run(
        [str(control_plane.helm_path), "template", "concord", str(CHART),
         "--set", "workloadIdentity.enabled=false"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "injection.enabled needs workloadIdentity.enabled" in done.stderr, done.stderr
    assert "Set workloadIdentity.enabled=true, or injection.enabled=false" in done.stderr
    for ok in (("injection.enabled=false",), ("operator.enabled=false",)):
        sets = [a for v in ("workloadIdentity.enabled=false", *ok) for a in ("--set", v)]
        control_plane.helm("template", "concord", str(CHART), *sets)


def test_workload_identity_gives_the_members_a_tokenreview_identity_and_a_port(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    values = ("networkPolicy.enabled=true",)  # workloadIdentity.enabled is the default
    objects = render(control_plane, kube_namespace, *values)
    done = control_plane.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        kube_namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )
    assert done.stdout.count("(server dry run)") == len(objects)
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    member_sa = next(a for a in accounts if a["metadata"]["name"].endswith("-coordinator"))
    binding = next(
        o
        for o in objects
        if o["kind"] == "ClusterRoleBinding" and o["metadata"]["name"].endswith("-tokenreview")
    )
    assert binding["metadata"]["name"] == f"concord-{kube_namespace}-tokenreview"
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": member_sa["metadata"]["name"],
            "namespace": kube_namespace,
        }
    ]
    pod = next(o for o in objects if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == member_sa["metadata"]["name"]
    container = pod["containers"][0]
    script = container["command"][2]
    assert "--workload-identity kubernetes" in script
    assert '--workload-listen "$POD_IP:7073"' in script
    assert {"name": "workload", "containerPort": 7073} in container["ports"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kube-api-access")
    assert mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    sources = next(v for v in pod["volumes"] if v["name"] == "kube-api-access")["projected"]
    assert {"token", "ca.crt"} <= {
        s.get("serviceAccountToken", {}).get("path")
        or next(iter(s.get("configMap", {}).get("items", [{}])), {}).get("path")
        for s in sources["sources"]
    }
    services = [
        o
        for o in objects
        if o["kind"] == "Service"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "coordinator"
    ]
    assert len(services) == 2 and all(
        any(p["name"] == "workload" and p["port"] == 7073 for p in svc["spec"]["ports"])
        for svc in services
    )
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    assert any(
        rule.get("ports") == [{"port": 7073}] and "from" not in rule
        for rule in policy["spec"]["ingress"]
    )
    # Off (with injection off too): no ServiceAccount for the members, no token, no port.
    plain = render(
        control_plane, kube_namespace, "workloadIdentity.enabled=false", "injection.enabled=false"
    )
    plain_pod = next(o for o in plain if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    assert (
        "serviceAccountName" not in plain_pod and plain_pod["automountServiceAccountToken"] is False
    )
    assert "--workload" not in plain_pod["containers"][0]["command"][2]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("workloadIdentity.port=0", "at '/workloadIdentity/port': minimum: got 0"),
        ("workloadIdentity.enable=true", "at '/workloadIdentity': additional properties 'enable'"),
        ("coordinator.replicas=4", "at '/coordinator/replicas': value must be one of 1, 3, 5, 7"),
        ("coordinator.replicas=0", "at '/coordinator/replicas': value must be one of 1, 3, 5, 7"),
        ("coordinator.replicas=three", "at '/coordinator/replicas': got string, want integer"),
        ("coordinator.ports.peer=70000", "at '/coordinator/ports/peer': maximum: got 70,000"),
        ("coordinator.replica=3", "at '/coordinator': additional properties 'replica'"),
        ("coordinator.logLevel=LOUD", "at '/coordinator/logLevel': value must be one of"),
        (
            "coordinator.topologySpread.whenUnsatisfiable=Maybe",
            "value must be one of 'ScheduleAnyway', 'DoNotSchedule'",
        ),
        ("coordinator.persistence.size=lots", "at '/coordinator/persistence/size'"),
        ("injection.failurePolicy=Never", "value must be one of 'Ignore', 'Fail'"),
        ("injection.sidecar.port=0", "at '/injection/sidecar/port': minimum"),
        ("coordinator.maxReplicas=8", "at '/coordinator/maxReplicas': maximum: got 8, want 7"),
        ("coordinator.maxReplicas=2", "at '/coordinator/maxReplicas': minimum: got 2, want 3"),
    ],
)
def test_values_schema_rejects_bad_values(
    control_plane: ControlPlane, value: str, message: str
) -> None:
    assert control_plane.helm_path is not None
    done = subprocess.run(
        [str(control_plane.helm_path), "template", "concord", str(CHART), "--set", value],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


def test_monitoring_objects_need_the_prometheus_operator(control_plane: ControlPlane) -> None:
    """Without the monitoring.coreos.com API the chart says so instead of failing on apply;
    with it, a ServiceMonitor on the peers Service and a PrometheusRule with six alerts,
    each with a runbook line."""
    assert control_plane.helm_path is not None
    sets = [a for v in MONITORING for a in ("--set", v)]
    helm = [str(control_plane.helm_path), "template", "concord", str(CHART), *sets]
    refused = subprocess.run(helm, capture_output=True, text=True, check=False, timeout=60)
    assert refused.returncode != 0
    assert "needs the prometheus-operator CRDs" in refused.stderr
    done = subprocess.run([*helm, *MONITORING_APIS], capture_output=True, text=True,
                          check=True, timeout=60)  # fmt: skip
    docs = {d["kind"]: d for d in yaml.safe_load_all(done.stdout) if d}
    monitor = docs["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"]["concord.dev/service"] == "peers"
    rules = docs["PrometheusRule"]["spec"]["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == [
        "ConcordNoLeader", "ConcordQuorumAtRisk", "ConcordFsyncSlow", "ConcordApplyLag",
        "ConcordMemberLocked", "ConcordSealingKeyStale",
    ]  # fmt: skip
    assert all(r["annotations"]["runbook"] for r in rules)


def test_examples_pass_a_server_side_dry_run(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert examples
    for example in examples:
        done = control_plane.kubectl(
            "apply", "--dry-run=server", "-n", kube_namespace, "-f", str(example)
        )
        assert "(server dry run)" in done.stdout
