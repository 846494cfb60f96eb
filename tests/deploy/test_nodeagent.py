"""The node agent on the real control plane: a Pod scheduled onto one of its Nodes runs as
processes with the pod's address, env (downward API, Secret, ConfigMap, `$(VAR)`), volumes
(Secret and ConfigMap files, an emptyDir that outlives a restart), its DNS name, probes of
three kinds reflected in Ready, restartPolicy with a restart count, and on delete SIGTERM,
SIGKILL after the grace period, then the object removed."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.nodeagent import DEFAULT_NODES, POD_NETWORK, NodeAgent
from coordinator.testing.procs import orphan_proof

pytestmark = [pytest.mark.kube, pytest.mark.process]

WAIT = "--timeout=120s"

# First run: exits 3 (restartPolicy OnFailure brings it back). Second run: writes what it
# sees into the emptyDir, waits until its own DNS name resolves, marks itself ready for the
# exec probe, then ignores SIGTERM so only the SIGKILL after the grace period ends it.
SCRIPT = """
if [ ! -e /data/ran ]; then touch /data/ran; exit 3; fi
echo "$POD_NAME $POD_NAMESPACE $POD_IP $GREETING $FROM_SECRET $FROM_CONFIG" > /data/env
cat /etc/t/secret/token /etc/t/config/mode > /data/files
until getent hosts "web.sub.$POD_NAMESPACE.svc.cluster.local" > /data/dns; do sleep 0.2; done
getent hosts web.sub > /data/short
touch /data/ready
trap '' TERM
while true; do sleep 0.2; done
"""


def _pod(namespace: str) -> dict[str, object]:
    field = [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_IP", "status.podIP"),
    ]
    env = [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}} for n, p in field]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent-test", "namespace": namespace, "labels": {"app": "t"}},
        "spec": {
            "hostname": "web",
            "subdomain": "sub",
            "restartPolicy": "OnFailure",
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/none:1",
                    "command": ["bash", "-c", SCRIPT],
                    "env": [
                        *env,
                        {"name": "GREETING", "value": "hello-$(POD_NAME)"},
                        {
                            "name": "FROM_SECRET",
                            "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}},
                        },
                        {
                            "name": "FROM_CONFIG",
                            "valueFrom": {"configMapKeyRef": {"name": "c", "key": "mode"}},
                        },
                    ],
                    "readinessProbe": {
                        "exec": {"command": ["test", "-f", "/data/ready"]},
                        "periodSeconds": 1,
                    },
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "secret", "mountPath": "/etc/t/secret", "readOnly": True},
                        {"name": "config", "mountPath": "/etc/t/config"},
                    ],
                },
                {
                    "name": "web",
                    "image": "registry.invalid/none:1",
                    "command": ["python3", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
                    "env": env,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/", "port": "http"},
                        "periodSeconds": 1,
                    },
                    "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                },
            ],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "secret", "secret": {"secretName": "s"}},
                {"name": "config", "configMap": {"name": "c"}},
            ],
        },
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_pod_runs_as_processes(
    control_plane: ControlPlane, node_agent: NodeAgent, kube_namespace: str
) -> None:
    ns = kube_namespace
    nodes = control_plane.kubectl_json("get", "nodes", "-l", "node.concord.dev/agent=true")
    ready = {
        n["metadata"]["name"]: {c["type"]: c["status"] for c in n["status"]["conditions"]}
        for n in nodes["items"]
    }
    assert sorted(ready) == sorted(DEFAULT_NODES)
    assert all(conditions["Ready"] == "True" for conditions in ready.values())
    control_plane.kubectl("create", "secret", "generic", "s", "-n", ns, "--from-literal=token=t0k")
    control_plane.kubectl("create", "configmap", "c", "-n", ns, "--from-literal=mode=fast")
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sub", "namespace": ns},
        "spec": {"clusterIP": "None", "selector": {"app": "t"}, "ports": [{"port": 8080}]},
    }
    for obj in (headless, _pod(ns)):
        control_plane.kubectl("create", "-f", "-", input=json.dumps(obj))
    control_plane.kubectl("wait", "-n", ns, "--for=condition=Ready", WAIT, "pod/agent-test")

    pod = control_plane.kubectl_json("get", "pod", "-n", ns, "agent-test")
    status = pod["status"]
    ip = status["podIP"]
    assert ipaddress.ip_address(ip) in POD_NETWORK
    assert status["phase"] == "Running" and status["hostIP"] == "127.0.0.1"
    assert pod["spec"]["nodeName"] in DEFAULT_NODES
    by_name = {c["name"]: c for c in status["containerStatuses"]}
    assert by_name["main"]["restartCount"] == 1
    assert by_name["main"]["lastState"]["terminated"]["exitCode"] == 3
    assert by_name["web"]["restartCount"] == 0
    assert all(c["ready"] for c in by_name.values())

    (data,) = node_agent.state_dir.glob(f"pods/{ns}_agent-test_*/volumes/data")
    assert (data / "env").read_text().split() == [
        "agent-test",
        ns,
        ip,
        "hello-agent-test",
        "t0k",
        "fast",
    ]
    assert (data / "files").read_text() == "t0kfast"
    assert (data / "dns").read_text().split()[0] == ip
    assert (data / "short").read_text().split()[0] == ip  # the namespace's short name

    # Names resolve for clients of the test too (the same hosts file): the pod's own web server.
    done = node_agent.run(
        [
            "python3",
            "-c",
            "import urllib.request, sys; "
            f"print(urllib.request.urlopen('http://web.sub.{ns}.svc:8080/').status)",
        ]
    )
    assert done.stdout.strip() == "200", done.stderr

    pids = node_agent.pids()[f"{ns}/agent-test"]
    assert len(pids) == 2
    started = time.perf_counter()
    control_plane.kubectl("delete", "pod", "-n", ns, "agent-test", "--wait=true", WAIT)
    took_s = time.perf_counter() - started
    # main ignores SIGTERM: it lasts the 2 s grace period, then SIGKILL; the agent then deletes
    # the object (grace 0), which is what `kubectl delete --wait` waited for.
    assert 2.0 <= took_s < 30.0
    assert not any(_alive(pid) for pid in pids)


def test_the_cli_registers_nodes_and_stops_on_sigterm(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """`python -m coordinator.testing.nodeagent`: Nodes Ready while it runs, gone after
    SIGTERM, exit status 0."""
    if control_plane.existing:
        pytest.skip("registers Nodes: only on the tests' own control plane")
    argv = [sys.executable, "-m", "coordinator.testing.nodeagent", "--kubeconfig",
            str(control_plane.kubeconfig), "--state-dir", str(tmp_path / "state"),
            "--nodes", "cli-node-a,cli-node-b"]  # fmt: skip
    proc = subprocess.Popen(orphan_proof(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for node in ("cli-node-a", "cli-node-b"):
            control_plane.kubectl("wait", "--for=create", WAIT, f"node/{node}")
            control_plane.kubectl("wait", "--for=condition=Ready", WAIT, f"node/{node}")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = control_plane.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert "node/cli-node-a" not in left and "node/cli-node-b" not in left


def _simple_pod(namespace: str, name: str, policy: str, script: str, **extra: Any) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/none:1",
                    "command": ["bash", "-c", script],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    **extra,
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }
    return json.dumps(pod)


def test_init_containers_never_and_liveness(
    control_plane: ControlPlane, node_agent: NodeAgent, kube_namespace: str
) -> None:
    """Init containers run first, to completion; restartPolicy Never leaves a failed
    container failed (phase Failed, its exit code); a failing liveness probe restarts one."""
    ns = kube_namespace
    once = json.loads(_simple_pod(ns, "once", "Never", "test -e /data/init && exit 4"))
    once["spec"]["initContainers"] = [
        {
            "name": "init",
            "image": "registry.invalid/none:1",
            "command": ["bash", "-c", "echo done > /data/init"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }
    ]
    sick_then_well = (
        "if [ -e /data/once ]; then rm -f /data/sick; else touch /data/once /data/sick; fi\n"
        "exec sleep 1000"
    )
    liveness = {"exec": {"command": ["test", "!", "-e", "/data/sick"]}, "periodSeconds": 1,
                "failureThreshold": 2}  # fmt: skip
    control_plane.kubectl("create", "-f", "-", input=json.dumps(once))
    control_plane.kubectl(
        "create", "-f", "-",
        input=_simple_pod(ns, "sick", "Always", sick_then_well, livenessProbe=liveness),
    )  # fmt: skip
    control_plane.kubectl("wait", "-n", ns, "--for=jsonpath={.status.phase}=Failed", WAIT,
                          "pod/once")  # fmt: skip
    status = control_plane.kubectl_json("get", "pod", "-n", ns, "once")["status"]
    (init,) = status["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0
    (main,) = status["containerStatuses"]
    assert main["state"]["terminated"]["exitCode"] == 4 and main["restartCount"] == 0

    control_plane.kubectl(
        "wait", "-n", ns, "--for=jsonpath={.status.containerStatuses[0].restartCount}=1",
        WAIT, "pod/sick",
    )  # fmt: skip
    control_plane.kubectl("wait", "-n", ns, "--for=condition=Ready", WAIT, "pod/sick")
    (main,) = control_plane.kubectl_json("get", "pod", "-n", ns, "sick")["status"][
        "containerStatuses"
    ]
    assert "running" in main["state"] and main["restartCount"] == 1


FETCH = (
    "import os, urllib.request\n"
    "url = 'http://' + os.environ['POD_IP'] + ':8081/'\n"
    "print(urllib.request.urlopen(url, timeout=5).status)\n"
)


def test_native_sidecars_and_endpoint_slices(
    control_plane: ControlPlane, node_agent: NodeAgent, kube_namespace: str
) -> None:
    """A native sidecar (an init container with restartPolicy Always) starts before the next
    init container and runs beside the main one; when the main one is done (restartPolicy
    Never) the sidecar is stopped and the pod Succeeded. A Service selecting the pod gets
    an FQDN EndpointSlice with the pod's address, its named target port resolved from the
    sidecar's ports: what the API server reads to call a webhook through its Service."""
    ns = kube_namespace
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    fetch = {"image": "registry.invalid/none:1", "command": ["python3", "-c", FETCH], "env": env}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sidecars", "namespace": ns, "labels": {"app": "sc"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "initContainers": [
                {
                    "name": "side",
                    "image": "registry.invalid/none:1",
                    "restartPolicy": "Always",
                    "command": ["python3", "-m", "http.server", "8081", "--bind", "$(POD_IP)"],
                    "env": env,
                    "ports": [{"name": "side-http", "containerPort": 8081}],
                    "startupProbe": {
                        "httpGet": {"path": "/", "port": "side-http"},
                        "periodSeconds": 1,
                    },
                },
                {"name": "uses-it", **fetch},
            ],
            "containers": [
                {
                    "name": "main",
                    **fetch,
                    "command": ["bash", "-c", f'python3 -c "{FETCH}" && sleep 2'],
                }
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sc", "namespace": ns},
        "spec": {
            "selector": {"app": "sc"},
            "ports": [{"name": "web", "port": 443, "targetPort": "side-http"}],
        },
    }
    control_plane.kubectl("create", "-f", "-", input=json.dumps(service))
    control_plane.kubectl("create", "-f", "-", input=json.dumps(pod))
    control_plane.kubectl(
        "wait", "-n", ns, "--for=jsonpath={.status.containerStatuses[0].started}=true", WAIT,
        "pod/sidecars",
    )  # fmt: skip
    ip = control_plane.kubectl_json("get", "pod", "-n", ns, "sidecars")["status"]["podIP"]
    control_plane.kubectl(
        "wait", "-n", ns, "--for=jsonpath={.endpoints[0].addresses[0]}=" + ip, WAIT,
        "endpointslice/sc-nodeagent",
    )  # fmt: skip
    eps = control_plane.kubectl_json("get", "endpointslice", "-n", ns, "sc-nodeagent")
    assert eps["addressType"] == "FQDN"
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "sc"
    assert eps["ports"] == [{"name": "web", "port": 8081, "protocol": "TCP"}]
    control_plane.kubectl(
        "wait", "-n", ns, "--for=jsonpath={.status.phase}=Succeeded", WAIT, "pod/sidecars"
    )
    status = control_plane.kubectl_json("get", "pod", "-n", ns, "sidecars")["status"]
    side, uses = status["initContainerStatuses"]
    assert side["restartCount"] == 0 and "terminated" in side["state"]
    assert uses["state"]["terminated"]["exitCode"] == 0
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
