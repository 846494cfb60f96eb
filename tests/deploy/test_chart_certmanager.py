"""The chart with `tls.certManager.enabled` against the live API server, with cert-manager's
own CRDs (v1.21.1, vendored in fixtures/cert-manager/) installed for this module only.

Nothing here runs cert-manager's controller (it cannot be built here: one of its modules is
not served by the module proxy). So the Certificates are checked for what cert-manager would
issue from them (`issue_like_cert_manager`), and the members' own code judges that:
`load_member_tls` as the member with that id, the peer port's `peer_refusal`, `roles_of` and
Unseal's `operator_refusal` for the operator's certificate."""

from __future__ import annotations

import json
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from coordinator.pki import (
    OPERATOR_ROLE,
    create_ca,
    issue_client_cert,
    issue_member_cert,
    load_member_tls,
    member_uri,
    roles_of,
    write_member_tls,
)
from coordinator.runtime.raft_servicer import peer_refusal
from coordinator.server._secrets import operator_refusal
from coordinator.testing.controlplane import ControlPlane
from tests.deploy.certmanager import EXTENDED, KEY_USAGES, issue_like_cert_manager
from tests.deploy.chart import CHART, member_host, render

pytestmark = pytest.mark.kube

CREATE_ISSUER = ("tls.certManager.enabled=true", "tls.certManager.createIssuer=true")
CLUSTER_ISSUER = (
    "tls.certManager.enabled=true",
    "tls.certManager.issuerRef.name=corp-ca",
    "tls.certManager.issuerRef.kind=ClusterIssuer",
)


def _dry_run(plane: ControlPlane, namespace: str, objects: list[dict[str, Any]]) -> None:
    done = plane.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )
    assert done.stdout.count("(server dry run)") == len(objects), done.stdout


def _by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str], list[str]]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        set(names.get_values_for_type(x509.DNSName)),
        {str(ip) for ip in names.get_values_for_type(x509.IPAddress)},
        names.get_values_for_type(x509.UniformResourceIdentifier),
    )


def _usages(cert: x509.Certificate) -> set[str]:
    """A certificate's key usages in cert-manager's words."""
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    return {name for attr, name in KEY_USAGES.items() if getattr(ku, attr)} | {
        EXTENDED[oid] for oid in eku
    }


def _auth(cert_pem: bytes) -> dict[str, list[bytes]]:
    """What gRPC gives a servicer about a TLS caller presenting `cert_pem`."""
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [cert_pem]}


@pytest.mark.parametrize("values", [CREATE_ISSUER, CLUSTER_ISSUER], ids=["own-ca", "issuer-ref"])
def test_cert_manager_manifests_pass_a_server_side_dry_run(
    control_plane: ControlPlane,
    kube_namespace: str,
    cert_manager_crds: None,
    values: tuple[str, ...],
) -> None:
    """Every manifest, the Certificates and Issuers among them, is accepted by the API server
    with cert-manager's CRDs; no CA bootstrap is rendered, nothing mounts a CA key, and the
    members and the operator mount cert-manager's Secrets."""
    objects = render(control_plane, kube_namespace, *values)
    kinds = sorted(o["kind"] for o in objects)
    expected = ["PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    expected += ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]
    expected += ["MutatingWebhookConfiguration", "Service", "ConcordCluster"]
    expected += ["Certificate"] * (7 + 2)  # maxReplicas members, the operator, a client
    expected += ["ClusterRoleBinding", "ServiceAccount"]  # workload identity, on by default
    if values == CREATE_ISSUER:
        expected += ["Issuer", "Issuer", "Certificate"]  # self-signed, CA; the CA's certificate
    assert kinds == sorted(expected)  # no Job, Role or ConfigMap: no CA bootstrap
    _dry_run(control_plane, kube_namespace, objects)

    certificates = _by_name(objects, "Certificate")
    issuer = (
        {"name": "concord-issuer", "kind": "Issuer", "group": "cert-manager.io"}
        if values == CREATE_ISSUER
        else {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    )
    leaves = {n: c for n, c in certificates.items() if n != "concord-root-ca"}
    assert all(c["spec"]["issuerRef"] == issuer for c in leaves.values())
    if values == CREATE_ISSUER:
        root = certificates["concord-root-ca"]["spec"]
        assert root["isCA"] is True and root["privateKey"]["rotationPolicy"] == "Never"
        assert root["issuerRef"]["name"] == "concord-selfsigned"
        ca_issuer = _by_name(objects, "Issuer")["concord-issuer"]
        assert ca_issuer["spec"] == {"ca": {"secretName": "concord-root-ca"}}
    # No pod mounts the CA's Secret.
    pods = [
        o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("StatefulSet", "Deployment")
    ]
    mounted = json.dumps([p["volumes"] for p in pods])
    # (kube-root-ca.crt, the API server's CA for TokenReviews, is another matter.)
    assert '"concord-root-ca"' not in mounted and '"concord-tls"' not in mounted

    sts = next(o for o in objects if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    tls_all = next(v for v in sts["volumes"] if v["name"] == "tls-all")["projected"]
    secrets = {s["secret"]["name"]: s["secret"] for s in tls_all["sources"]}
    assert list(secrets) == [f"concord-member-{n}-tls" for n in range(1, 8)]
    for n in range(1, 8):
        source = secrets[f"concord-member-{n}-tls"]
        assert source["optional"] is True  # pods start before cert-manager issued them
        assert source["items"] == [
            {"key": "tls.crt", "path": f"member-{n}.pem"},
            {"key": "tls.key", "path": f"member-{n}-key.pem"},
            {"key": "ca.crt", "path": f"member-{n}-ca.pem"},
        ]
        assert certificates[f"concord-member-{n}"]["spec"]["secretName"] == source["name"]
    script = sts["containers"][0]["command"][2]
    # The start script reads exactly the paths the volume gives (member N's: "$own" + ...).
    assert 'own="/etc/concord/tls/member-$id"' in script
    assert 'cp "$own-ca.pem" "$tls/ca.pem"' in script
    assert 'cp "/etc/concord/tls/member-$id.pem" "$tls/member.pem"' in script
    assert 'cp "/etc/concord/tls/member-$id-key.pem" "$tls/member-key.pem"' in script
    # No Secret holds a cluster id here: the chart names it.
    assert f'cluster_id="{kube_namespace}-concord"' in script and "cluster-id)" not in script

    operator = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    client_tls = next(v for v in operator["volumes"] if v["name"] == "client-tls")["secret"]
    assert client_tls["secretName"] == certificates["concord-operator"]["spec"]["secretName"]
    assert client_tls["items"] == [
        {"key": "ca.crt", "path": "ca.pem"},
        {"key": "tls.crt", "path": "client.pem"},
        {"key": "tls.key", "path": "client-key.pem"},
    ]


def test_certificates_carry_what_the_members_check(
    control_plane: ControlPlane, kube_namespace: str, cert_manager_crds: None, tmp_path: Path
) -> None:
    """Each member's Certificate asks for what `issue_member_cert` puts in a member
    certificate for that member's names, and what cert-manager makes of it is accepted by
    the member with that id only, and by the peer port; the operator's is an operator to
    Unseal and refused by the peer port."""
    objects = render(control_plane, kube_namespace, *CREATE_ISSUER)
    certificates = _by_name(objects, "Certificate")
    ca = create_ca("test")
    service = [
        f"concord.{kube_namespace}.svc.cluster.local",
        f"concord.{kube_namespace}.svc",
        f"concord.{kube_namespace}",
        "concord",
    ]
    for ordinal in range(7):
        member_id = ordinal + 1
        spec = certificates[f"concord-member-{member_id}"]["spec"]
        host = member_host("concord", kube_namespace, ordinal)
        names = [host, host.removesuffix(".cluster.local"), *service]
        reference = issue_member_cert(ca, f"member-{member_id}", names, member_id=member_id).cert
        issued = issue_like_cert_manager(ca, spec)
        assert _sans(issued.cert) == _sans(reference)
        assert _sans(issued.cert)[2] == [member_uri(member_id)]
        assert _usages(issued.cert) == _usages(reference) == set(spec["usages"])
        # The member with this id starts with it; the member with another id refuses it.
        tls_dir = tmp_path / f"member-{member_id}"
        write_member_tls(tls_dir, ca.cert_pem, issued)
        assert load_member_tls(tls_dir).member_id == member_id
        assert peer_refusal(_auth(issued.cert_pem)) == ""

    operator = issue_like_cert_manager(ca, certificates["concord-operator"]["spec"])
    reference = issue_client_cert(ca, "concord-operator", roles=[OPERATOR_ROLE]).cert
    assert roles_of(operator.cert) == {OPERATOR_ROLE}
    assert (
        _usages(operator.cert)
        == _usages(reference)
        == {"digital signature", "key agreement", "client auth"}
    )
    assert operator_refusal(_auth(operator.cert_pem)) == ""
    assert "client certificate" in peer_refusal(_auth(operator.cert_pem))

    client = issue_like_cert_manager(ca, certificates["concord-client"]["spec"])
    assert roles_of(client.cert) == frozenset()
    assert "has roles: none" in operator_refusal(_auth(client.cert_pem))
    assert "client certificate" in peer_refusal(_auth(client.cert_pem))


def test_cert_manager_needs_its_crds(control_plane: ControlPlane) -> None:
    """Without cert-manager.io/v1 the chart says so rather than failing on apply."""
    assert control_plane.helm_path is not None
    sets = [a for v in CREATE_ISSUER for a in ("--set", v)]
    helm = [str(control_plane.helm_path), "template", "concord", str(CHART), *sets]
    refused = subprocess.run(helm, capture_output=True, text=True, check=False, timeout=60)
    assert refused.returncode != 0
    assert "tls.certManager.enabled needs cert-manager's CRDs" in refused.stderr
    api = ["--api-versions", "cert-manager.io/v1/Certificate"]
    done = subprocess.run([*helm, *api], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ("tls.certManager.enabled=true",),
            "at '/tls/certManager/issuerRef/name': minLength: got 0, want 1",
        ),
        (
            (*CREATE_ISSUER, "tls.certManager.issuerRef.name=corp-ca"),
            "at '/tls/certManager/issuerRef/name': value must be ''",
        ),
        (
            ("tls.certManager.createIssuer=true",),
            "at '/tls/certManager/enabled': value must be true",
        ),
        ((*CREATE_ISSUER, "tls.secretName=mine"), "at '/tls/secretName': value must be ''"),
        ((*CREATE_ISSUER, "tls.certManager.duration=1y"), "at '/tls/certManager/duration'"),
        ((*CREATE_ISSUER, "tls.certManager.clusterId=a b"), "at '/tls/certManager/clusterId'"),
        ((*CREATE_ISSUER, "tls.certManager.issuer.name=x"), "additional properties 'issuer'"),
    ],
    ids=[
        "no-issuer",
        "both-issuers",
        "issuer-while-off",
        "secret-too",
        "duration",
        "cluster-id",
        "typo",
    ],
)
def test_values_schema_refuses_bad_cert_manager_values(
    control_plane: ControlPlane, values: tuple[str, ...], message: str
) -> None:
    assert control_plane.helm_path is not None
    sets = [a for v in values for a in ("--set", v)]
    done = subprocess.run(
        [str(control_plane.helm_path), "template", "concord", str(CHART), *sets],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


def test_notes_tell_where_the_certificates_are_and_when_to_restart(
    control_plane: ControlPlane, kube_namespace: str, cert_manager_crds: None
) -> None:
    sets = [a for v in CREATE_ISSUER for a in ("--set", v)]
    done = control_plane.helm(
        "install", "concord", str(CHART), "-n", kube_namespace, "--dry-run=server", *sets
    )
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "Certificates concord-member-1..7" in notes
    assert "Secret concord-root-ca, mounted by nothing" in notes
    assert "rollout restart statefulset/concord deployment/concord-operator" in notes
    assert "get secret concord-client-tls" in notes
    assert "cluster init" not in notes  # nothing for the user to make by hand


def test_start_script_waits_for_its_secret_then_takes_only_its_own_files(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The members' start script under cert-manager, run with its two directories moved under
    tmp_path and `exec concord-coordinator` replaced by `exec echo`: it waits while its own
    files are missing (cert-manager issues after the pods exist), then copies member 2's
    pair and the CA issued with it, and starts with the chart's cluster id; an ordinal with
    no Certificate exits 3 at once."""
    sets = [a for v in (*CREATE_ISSUER, "coordinator.maxReplicas=3") for a in ("--set", v)]
    done = control_plane.helm(
        "template", "concord", str(CHART), "-n", "ns", "--show-only", "templates/statefulset.yaml",
        "--api-versions", "cert-manager.io/v1/Certificate", *sets,
    )  # fmt: skip
    sts = yaml.safe_load(done.stdout)
    script = str(sts["spec"]["template"]["spec"]["containers"][0]["command"][2])
    mounted, tls = tmp_path / "etc", tmp_path / "run"
    mounted.mkdir()
    tls.mkdir()
    script = script.replace("/etc/concord/tls", str(mounted)).replace("/run/concord/tls", str(tls))
    script = script.replace("exec concord-coordinator", "exec echo")
    env = {"PATH": "/usr/bin:/bin", "POD_NAMESPACE": "ns", "POD_IP": "127.0.0.1"}

    beyond = subprocess.run(
        ["sh", "-c", script, "concord-coordinator"],
        env={**env, "POD_NAME": "concord-3"},
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert beyond.returncode == 3 and "no certificate for member 4" in beyond.stderr

    proc = subprocess.Popen(
        ["sh", "-c", script, "concord-coordinator"],
        env={**env, "POD_NAME": "concord-1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        # It says what it waits for, then waits (bounded: a silent script fails, never hangs).
        readable, _, _ = select.select([proc.stderr], [], [], 30)
        assert readable, "the start script said nothing within 30 s"
        line = proc.stderr.readline()
        assert "waiting for Secret concord-member-2-tls" in line
        assert proc.poll() is None
        for n in (1, 2, 3):  # the projected volume: every member's files
            for suffix in (".pem", "-key.pem", "-ca.pem"):
                (mounted / f"member-{n}{suffix}").write_text(f"{n}{suffix}")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert {p.name: p.read_text() for p in tls.iterdir()} == {
        "ca.pem": "2-ca.pem",
        "member.pem": "2.pem",
        "member-key.pem": "2-key.pem",
    }
    assert "--id 2 --name concord-1 --cluster-id ns-concord " in out
