"""`helm install` of the chart on the real control plane, its pods run by the node agent:
the real StatefulSet controller, scheduler and PV controller place three members on three
Nodes, the members (real processes, mutual TLS) elect a leader and answer `concordctl` at
their pods' addresses; a deleted member pod is recreated by the StatefulSet and rejoins from
its claim while writes keep working.

The release runs the operator too (the chart's default): it reaches the API server from its pod
with its own ServiceAccount token, and mirrors a Lease taken through the members into the
Lease's status."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.nodeagent import POD_NETWORK, NodeAgent
from tests.deploy.chart import CHART, CONCORDCTL, EXAMPLES, make_tls_secret, member_host

pytestmark = [pytest.mark.kube, pytest.mark.process]

RELEASE = "concord"
MEMBERS = 3
WAIT = "--timeout=180s"


@dataclass
class Release:
    namespace: str
    client_tls: Path
    install_to_ready_s: float
    members: int = MEMBERS

    def endpoints(self) -> str:
        hosts = (member_host(RELEASE, self.namespace, i) for i in range(self.members))
        return ",".join(f"{h}:7070" for h in hosts)


def _ctl(agent: NodeAgent, release: Release, *args: str) -> str:
    """concordctl over mutual TLS, resolving the members' names as a pod would."""
    argv = [
        CONCORDCTL,
        "--tls-dir",
        str(release.client_tls),
        "--endpoints",
        release.endpoints(),
        "-o",
        "json",
        *args,
    ]
    done = agent.run(argv, timeout_s=60)
    assert done.returncode == 0, f"concordctl {' '.join(args)}: {done.stderr}"
    return done.stdout


def _members(agent: NodeAgent, release: Release) -> list[dict[str, object]]:
    got = json.loads(_ctl(agent, release, "member", "list"))
    members: list[dict[str, object]] = got["members"] if isinstance(got, dict) else got
    return members


def _healthy_members(agent: NodeAgent, release: Release) -> list[dict[str, object]]:
    """`member list` once every member is listed by its pod name, one Leader and the rest
    Reachable; a member lists its name a moment after it starts, so this asks again (each
    call takes a round of concordctl) until then, for up to a minute."""
    want_names = [f"{RELEASE}-{i}" for i in range(release.members)]
    want_statuses = ["Leader"] + ["Reachable"] * (release.members - 1)
    deadline = time.perf_counter() + 60.0
    while True:
        members = _members(agent, release)
        names = sorted(str(m["name"]) for m in members)
        statuses = sorted(str(m["status"]) for m in members)
        if (names, statuses) == (want_names, want_statuses):
            return members
        assert time.perf_counter() < deadline, f"members not settled: {members}"


def _get(agent: NodeAgent, release: Release, key: str) -> str:
    (row,) = json.loads(_ctl(agent, release, "get", key))
    return str(row["value"])


def _client_tls(plane: ControlPlane, namespace: str, into: Path) -> Path:
    """The client certificate the chart's CA bootstrap made, as NOTES.txt fetches it."""
    data = plane.kubectl_json("get", "secret", "-n", namespace, f"{RELEASE}-tls")["data"]
    for name in ("ca.pem", "client.pem", "client-key.pem"):
        (into / name).write_bytes(base64.b64decode(data[name]))
        (into / name).chmod(0o600)
    return into


@pytest.fixture(scope="module")
def release(
    control_plane: ControlPlane, node_agent: NodeAgent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    namespace = f"d-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    try:
        started = time.perf_counter()
        control_plane.helm("install", RELEASE, str(CHART), "-n", namespace)
        control_plane.kubectl("rollout", "status", "-n", namespace, f"statefulset/{RELEASE}", WAIT)
        elapsed = time.perf_counter() - started
        client = _client_tls(control_plane, namespace, tmp_path_factory.mktemp("client"))
        print(f"\nhelm install -> {MEMBERS} Ready pods: {elapsed:.1f} s")
        yield Release(namespace, client, elapsed)
    finally:
        control_plane.helm("uninstall", RELEASE, "-n", namespace, "--wait=false", check=False)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_install_gives_a_three_member_cluster(
    control_plane: ControlPlane, node_agent: NodeAgent, release: Release
) -> None:
    pods = control_plane.kubectl_json(
        "get", "pods", "-n", release.namespace, "-l", "app.kubernetes.io/component=coordinator"
    )["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == [f"{RELEASE}-{i}" for i in range(3)]
    for pod in pods:
        status = pod["status"]
        assert status["phase"] == "Running"
        assert ipaddress.ip_address(status["podIP"]) in POD_NETWORK
        ready = {c["type"]: c["status"] for c in status["conditions"]}
        assert ready["Ready"] == "True" and ready["PodScheduled"] == "True"
        (container,) = status["containerStatuses"]
        assert container["ready"] and container["started"] and "running" in container["state"]
    # Spread over the three Nodes (topologySpreadConstraints on kubernetes.io/hostname).
    assert len({p["spec"]["nodeName"] for p in pods}) == 3
    claims = control_plane.kubectl_json("get", "pvc", "-n", release.namespace)["items"]
    assert sorted(c["status"]["phase"] for c in claims) == ["Bound"] * 3

    # The CA bootstrap's split: members' and client's certificates in one Secret, the CA key
    # alone in another that no pod mounts.
    tls = control_plane.kubectl_json("get", "secret", "-n", release.namespace, f"{RELEASE}-tls")
    assert "ca-key.pem" not in tls["data"]
    assert sorted(tls["data"]) == sorted(
        ["ca.pem", "cluster-id", "client.pem", "client-key.pem", "operator.pem", "operator-key.pem"]
        # Every ordinal the StatefulSet may be scaled to (coordinator.maxReplicas, 7).
        + [f"member-{n}{k}.pem" for n in range(1, 8) for k in ("", "-key")]
    )
    ca = control_plane.kubectl_json("get", "secret", "-n", release.namespace, f"{RELEASE}-ca")
    assert sorted(ca["data"]) == ["ca-key.pem", "ca.pem"]
    for pod in pods:
        mounted = [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v]
        assert mounted == [f"{RELEASE}-tls"]

    _healthy_members(node_agent, release)
    _ctl(node_agent, release, "put", "install", "ok")
    assert _get(node_agent, release, "install") == "ok"


def test_the_operator_runs_from_the_chart_and_mirrors_a_lock(
    control_plane: ControlPlane, node_agent: NodeAgent, release: Release
) -> None:
    ns = release.namespace
    control_plane.kubectl("rollout", "status", "-n", ns, f"deployment/{RELEASE}-operator", WAIT)
    lease = {
        "apiVersion": "concord.dev/v1alpha1",
        "kind": "Lease",
        "metadata": {"name": "jobs", "namespace": ns},
        "spec": {"ttlSeconds": 30},
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(lease))
    waited = control_plane.kubectl(
        "wait", "-n", ns, "clease/jobs", "--for=condition=Ready", "--timeout=90s", check=False
    )
    logs = sorted(node_agent.state_dir.glob(f"pods/{ns}_{RELEASE}-operator-*/operator.log"))
    assert waited.returncode == 0, "\n".join(p.read_text()[-4000:] for p in logs)
    # A holder through the members (as a pod's app would): its token shows in the status.
    token_file = f"/tmp/concord-token-{uuid.uuid4().hex[:8]}"
    argv = [CONCORDCTL, "--tls-dir", str(release.client_tls), "--endpoints", release.endpoints()]
    child = node_agent.spawn(
        [
            *argv,
            "lock",
            f"k8s/{ns}/jobs",
            "--",
            "sh",
            "-c",
            f"echo $CONCORD_FENCING_TOKEN >{token_file}; sleep 60",
        ],
        Path(token_file + ".log"),
    )
    try:
        deadline = time.monotonic() + 60
        token = ""
        while time.monotonic() < deadline:
            if Path(token_file).exists() and (token := Path(token_file).read_text().strip()):
                break
            time.sleep(0.2)
        assert token, "the lock was never granted"
        while time.monotonic() < deadline:
            status = control_plane.kubectl_json("get", "clease", "jobs", "-n", ns).get("status", {})
            if str(status.get("fencingToken", "")) == token:
                break
            time.sleep(0.2)
        assert str(status.get("fencingToken", "")) == token, status
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
        Path(token_file).unlink(missing_ok=True)


def test_deleted_member_pod_rejoins_from_its_claim(
    control_plane: ControlPlane, node_agent: NodeAgent, release: Release, tmp_path: Path
) -> None:
    ns = release.namespace
    leader = next(m for m in _members(node_agent, release) if m["status"] == "Leader")
    victim = str(leader["name"])
    _ctl(node_agent, release, "put", "before", "1")
    old = control_plane.kubectl_json("get", "pod", "-n", ns, victim)
    old_ip = node_agent.pod_ip(ns, victim)
    writer = Writer(node_agent, release, tmp_path)
    started = time.perf_counter()
    control_plane.kubectl("delete", "pod", "-n", ns, victim, "--wait=true", WAIT)
    # Writes go on through the two survivors (a new leader) while the pod is away.
    _ctl(node_agent, release, "put", "during", "2")
    control_plane.kubectl(
        "wait",
        "-n",
        ns,
        "--for=jsonpath={.status.readyReplicas}=3",
        WAIT,
        f"statefulset/{RELEASE}",
    )
    control_plane.kubectl("wait", "-n", ns, "--for=condition=Ready", WAIT, f"pod/{victim}")
    back_s = time.perf_counter() - started
    try:
        summary = writer.stop()
    finally:
        writer.kill()
    print(
        f"\nleader pod {victim} deleted -> recreated and Ready: {back_s:.1f} s; writes "
        f"acknowledged {summary['acked']}, longest write outage "
        f"{summary['longest_gap_s']:.2f} s, failed puts {len(summary['errors'])}"
    )
    assert summary["missing"] == [], "acknowledged writes lost"
    new = control_plane.kubectl_json("get", "pod", "-n", ns, victim)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    # Same claim, so same data: it restarted as the same member, not a new one.
    claim = f"data-{victim}"
    for pod in (old, new):
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert vols["data"]["persistentVolumeClaim"]["claimName"] == claim
    assert old_ip is not None
    _healthy_members(node_agent, release)  # the same three members, all back
    _ctl(node_agent, release, "put", "after", "3")
    for key, value in (("before", "1"), ("during", "2"), ("after", "3")):
        assert _get(node_agent, release, key) == value


def _evict(plane: ControlPlane, namespace: str, pod: str) -> tuple[bool, str]:
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": namespace},
    }
    done = plane.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
        input=json.dumps(body), check=False,
    )  # fmt: skip
    return done.returncode == 0, done.stderr


def test_pdb_refuses_an_eviction_that_would_take_a_second_member(
    control_plane: ControlPlane, node_agent: NodeAgent, release: Release
) -> None:
    ns = release.namespace
    control_plane.kubectl(
        "wait", "-n", ns, "--for=jsonpath={.status.disruptionsAllowed}=1", WAIT,
        f"poddisruptionbudget/{RELEASE}",
    )  # fmt: skip
    ok, why = _evict(control_plane, ns, f"{RELEASE}-0")
    assert ok, why
    ok, why = _evict(control_plane, ns, f"{RELEASE}-1")
    assert not ok
    assert "would violate the pod's disruption budget" in why
    control_plane.kubectl(
        "wait", "-n", ns, "--for=jsonpath={.status.readyReplicas}=3", WAIT,
        f"statefulset/{RELEASE}",
    )  # fmt: skip
    _ctl(node_agent, release, "put", "after-eviction", "ok")


def test_install_with_own_secret_and_one_member(
    control_plane: ControlPlane,
    node_agent: NodeAgent,
    kube_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Non-default values: certificates from the user's Secret (no bootstrap Job), a single
    member, no PDB (one member cannot tolerate any disruption anyway)."""
    ns = kube_namespace
    client = make_tls_secret(control_plane, ns, RELEASE, 1, tmp_path_factory.mktemp("own"))
    control_plane.helm(
        "install", RELEASE, str(CHART), "-n", ns, "--set", "operator.enabled=false",
        "--set", f"tls.secretName={RELEASE}-tls", "--set", "coordinator.replicas=1",
        "--set", "podDisruptionBudget.enabled=false",
    )  # fmt: skip
    try:
        control_plane.kubectl("rollout", "status", "-n", ns, f"statefulset/{RELEASE}", WAIT)
        jobs = control_plane.kubectl_json("get", "jobs", "-n", ns)["items"]
        assert jobs == []
        _healthy_members(node_agent, Release(ns, client, 0.0, members=1))
    finally:
        control_plane.helm("uninstall", RELEASE, "-n", ns, "--wait=false", check=False)


class Writer:
    """tests/deploy/writer.py in the background, where the members' names resolve."""

    def __init__(self, agent: NodeAgent, release: Release, workdir: Path) -> None:
        self.out = workdir / "writer.json"
        self.proc = agent.spawn(
            [sys.executable, "-m", "tests.deploy.writer", release.endpoints(),
             str(release.client_tls), str(self.out)],
            workdir / "writer.log",
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # after the first acknowledged write
        assert first.strip() == "writing", (workdir / "writer.log").read_text()

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=180)  # also closes the pipe
        summary: dict[str, Any] = json.loads(self.out.read_text())
        return summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def test_rolling_update_keeps_writes_going(
    control_plane: ControlPlane, node_agent: NodeAgent, release: Release, tmp_path: Path
) -> None:
    """A pod-template change restarts the members one at a time (highest ordinal first),
    each Ready before the next; a steady writer loses nothing."""
    ns = release.namespace
    before = {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in control_plane.kubectl_json(
            "get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=coordinator"
        )["items"]
    }
    writer = Writer(node_agent, release, tmp_path)
    try:
        started = time.perf_counter()
        control_plane.helm(
            "upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values",
            "--set", "coordinator.podAnnotations.restartedAt=rolling-update-test",
        )  # fmt: skip
        control_plane.kubectl("rollout", "status", "-n", ns, f"statefulset/{RELEASE}", WAIT)
        rolled_s = time.perf_counter() - started
        summary = writer.stop()
    finally:
        writer.kill()
    after = {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in control_plane.kubectl_json(
            "get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=coordinator"
        )["items"]
    }
    assert after.keys() == before.keys()
    assert all(after[name] != uid for name, uid in before.items()), "not every member restarted"
    print(
        f"\nrolling update of {MEMBERS} members: {rolled_s:.1f} s; writes acknowledged "
        f"{summary['acked']}, longest write outage {summary['longest_gap_s']:.2f} s, "
        f"failed puts {len(summary['errors'])} {summary['errors'][:3]}"
    )
    assert summary["missing"] == [], "acknowledged writes lost"
    assert summary["acked"] > 0
    _healthy_members(node_agent, release)


def _wait_members(
    agent: NodeAgent, release: Release, want: dict[int, str], timeout_s: float = 120.0
) -> list[dict[str, object]]:
    """`member list` until it shows exactly the ids of `want` with those roles, every one
    Leader or Reachable (asked again each concordctl round)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        members = _members(agent, release)
        got = {int(str(m["id"])): str(m["role"]) for m in members}
        statuses = {str(m["status"]) for m in members}
        if got == want and statuses <= {"Leader", "Reachable"}:
            return members
        assert time.perf_counter() < deadline, f"membership not reached {want}: {members}"
        time.sleep(0.5)


def _wait_recreated(plane: ControlPlane, namespace: str, pod: str, old_uid: str) -> None:
    """Until pod `pod` is a new one (another uid) and Ready."""
    deadline = time.perf_counter() + 120
    while True:
        got = plane.kubectl("get", "pod", "-n", namespace, pod, "-o", "json", check=False)
        if got.returncode == 0:
            obj = json.loads(got.stdout)
            ready = {c["type"]: c["status"] for c in obj["status"].get("conditions", [])}
            if obj["metadata"]["uid"] != old_uid and ready.get("Ready") == "True":
                return
        assert time.perf_counter() < deadline, f"pod {pod} not back"
        time.sleep(0.3)


def _ready_replicas(plane: ControlPlane, namespace: str, count: int) -> None:
    plane.kubectl(
        "wait", "-n", namespace, f"--for=jsonpath={{.status.readyReplicas}}={count}", WAIT,
        f"statefulset/{RELEASE}",
    )  # fmt: skip


def test_scaling_changes_the_membership_with_writes_running(
    control_plane: ControlPlane, node_agent: NodeAgent, release: Release, tmp_path: Path
) -> None:
    """`kubectl scale` 3 -> 5 -> 3 with a writer running: the operator adds ordinals 3 and 4
    as learners and promotes them once caught up (5 voters), a joined member's pod deleted
    comes back from its own claim, then 5 -> 3 with member 5 leading removes members 5 and 4
    (3 voters, ids 1-3);
    no acknowledged write is lost. Then the PDB at 3: one eviction allowed, a second (which
    would leave 1 of 3) refused with 429. Then 3 -> 5 -> 3 once more: the scaled-away
    ordinals come back on their retained claims, readmitted as the same members. Last,
    3 -> 1 in one go loses the quorum: the operator does nothing and says what to do
    (Membership Blocked, an Event); scaling back to 3 heals it."""
    ns = release.namespace
    control_plane.kubectl("rollout", "status", "-n", ns, f"deployment/{RELEASE}-operator", WAIT)
    voters3 = {1: "voter", 2: "voter", 3: "voter"}
    voters5 = {**voters3, 4: "voter", 5: "voter"}
    _wait_members(node_agent, release, voters3)
    writer = Writer(node_agent, release, tmp_path)
    try:
        started = time.perf_counter()
        control_plane.kubectl("scale", "-n", ns, f"statefulset/{RELEASE}", "--replicas=5")
        members = _wait_members(node_agent, release, voters5)
        up_s = time.perf_counter() - started
        _ready_replicas(control_plane, ns, 5)
        names = sorted(str(m["name"]) for m in members)
        assert names == [f"{RELEASE}-{i}" for i in range(5)]

        # A joined member restarts from its own data, as the same member (same command line).
        joined = f"{RELEASE}-3"
        old_uid = control_plane.kubectl_json("get", "pod", "-n", ns, joined)["metadata"]["uid"]
        restarted = time.perf_counter()
        control_plane.kubectl("delete", "pod", "-n", ns, joined, "--wait=true", WAIT)
        _wait_recreated(control_plane, ns, joined, old_uid)
        _wait_members(node_agent, release, voters5)
        rejoin_s = time.perf_counter() - restarted

        # The hard case of a scale-down: the leader is among the members that go.
        _ctl(node_agent, release, "member", "transfer", "5")
        started = time.perf_counter()
        control_plane.kubectl("scale", "-n", ns, f"statefulset/{RELEASE}", "--replicas=3")
        _wait_members(node_agent, release, voters3)
        down_s = time.perf_counter() - started
        _ready_replicas(control_plane, ns, 3)
        summary = writer.stop()
    finally:
        writer.kill()
    print(
        f"\nscale 3 -> 5: 5 voters after {up_s:.1f} s; joined member {joined} deleted -> "
        f"back as a voter from its claim in {rejoin_s:.1f} s; scale 5 -> 3 (member 5 leading): "
        f"3 voters after "
        f"{down_s:.1f} s; writes acknowledged {summary['acked']}, longest write outage "
        f"{summary['longest_gap_s']:.2f} s, failed puts {len(summary['errors'])} "
        f"{summary['errors'][:3]}"
    )
    assert summary["missing"] == [], "acknowledged writes lost"
    assert summary["acked"] > 0
    # The operator's status follows the members at its next look (it said "4 of 4 voters,
    # Scaling" just after the members showed 3 once on a loaded machine): wait for it.
    _wait_membership(control_plane, ns, "InSync", insync_voters=3)
    view = control_plane.kubectl_json("get", "ccluster", "-n", ns, RELEASE)["status"]
    assert view["voters"] == 3, view
    # The claims of the removed members stay (the operator never deletes data).
    claims = {
        c["metadata"]["name"] for c in control_plane.kubectl_json("get", "pvc", "-n", ns)["items"]
    }
    assert {f"data-{RELEASE}-{i}" for i in range(5)} <= claims

    # The PDB with the 3 members left: one eviction keeps the quorum and is allowed, a
    # second would leave 1 of 3 and is refused (HTTP 429) until the first is back.
    control_plane.kubectl(
        "wait", "-n", ns, "--for=jsonpath={.status.disruptionsAllowed}=1", WAIT,
        f"poddisruptionbudget/{RELEASE}",
    )  # fmt: skip
    victim = f"{RELEASE}-1"
    old_uid = control_plane.kubectl_json("get", "pod", "-n", ns, victim)["metadata"]["uid"]
    evicted = time.perf_counter()
    ok, why = _evict(control_plane, ns, victim)
    assert ok, why
    ok, why = _evict(control_plane, ns, f"{RELEASE}-2")
    assert not ok and "TooManyRequests" in why, why
    _wait_recreated(control_plane, ns, victim, old_uid)
    _wait_members(node_agent, release, voters3)
    back_s = time.perf_counter() - evicted
    print(f"eviction of {RELEASE}-1 allowed, of {RELEASE}-2 refused (429); back in {back_s:.1f} s")

    # Up again: ordinals 3 and 4 come back on their retained claims as members 4 and 5, which
    # were removed; the operator readmits them (the same members, their old pods gone) and
    # they catch up from their own data. Then down to 3 again.
    started = time.perf_counter()
    control_plane.kubectl("scale", "-n", ns, f"statefulset/{RELEASE}", "--replicas=5")
    _wait_members(node_agent, release, voters5)
    again_s = time.perf_counter() - started
    control_plane.kubectl("scale", "-n", ns, f"statefulset/{RELEASE}", "--replicas=3")
    _wait_members(node_agent, release, voters3)
    _ready_replicas(control_plane, ns, 3)
    print(f"scale 3 -> 5 again on the retained claims: 5 voters after {again_s:.1f} s")
    _ctl(node_agent, release, "put", "after-scaling", "ok")

    # 3 -> 1 in one go: pods 1 and 2 go at once. Usually the quorum goes with them before
    # the operator acts, and then it can remove nothing: it says so, and what to do
    # (condition and Event). If it sees the new replica count while the two still run (their
    # pods not yet marked for deletion), it may remove 3 and then 2, each change committed
    # with a quorum of the configuration it changes, and reach one voter: also correct. Or it
    # removes 3 in time and then the pods go, leaving 2 voters and no quorum: Blocked, asking
    # to scale back up to 2. What must never happen is anything else (a removal without a
    # quorum, a lost write).
    started = time.perf_counter()
    control_plane.kubectl("scale", "-n", ns, f"statefulset/{RELEASE}", "--replicas=1")
    outcome = _wait_membership(control_plane, ns, "Blocked", "InSync", insync_voters=1)
    blocked_s = time.perf_counter() - started
    control_plane.kubectl(
        "wait", "-n", ns, "--for=delete", WAIT, f"pod/{RELEASE}-1", f"pod/{RELEASE}-2"
    )
    view = control_plane.kubectl_json("get", "ccluster", "-n", ns, RELEASE)["status"]
    if outcome["reason"] == "Blocked":
        # The two pods really went (the quorum with them), and the operator removed nothing.
        blocked = _wait_membership(control_plane, ns, "Blocked")
        view = control_plane.kubectl_json("get", "ccluster", "-n", ns, RELEASE)["status"]
        voters = sorted(m["id"] for m in view["members"])
        # None removed, or 3 removed before the pods went; never a voter the quorum needed.
        assert voters in ([1, 2, 3], [1, 2]), view
        ask = f"Scale it back up to {len(voters)} "
        assert ask in blocked["message"], blocked
        events = control_plane.kubectl_json(
            "get", "events", "-n", ns, "--field-selector",
            f"reason=MembershipBlocked,involvedObject.name={RELEASE}",
        )["items"]  # fmt: skip
        assert any(ask in e["message"] for e in events), events
        removed = "nothing removed" if len(voters) == 3 else "member 3 removed before the pods went"
        said = f"Membership Blocked (what to do, in an Event) after {blocked_s:.1f} s, {removed}"
    else:
        assert "1 voters" in outcome["message"], outcome
        assert [m["id"] for m in view["members"]] == [1], view
        said = f"members 3 and 2 removed before their pods went, 1 voter after {blocked_s:.1f} s"
    control_plane.kubectl("scale", "-n", ns, f"statefulset/{RELEASE}", "--replicas=3")
    _ready_replicas(control_plane, ns, 3)
    _wait_members(node_agent, release, voters3)
    _wait_membership(control_plane, ns, "InSync")
    healed_s = time.perf_counter() - started
    print(f"scale 3 -> 1: {said}; scaled back to 3, voters 1-3 healthy after {healed_s:.1f} s")
    assert _get(node_agent, release, "after-scaling") == "ok"


def _wait_membership(
    plane: ControlPlane, namespace: str, *reasons: str, insync_voters: int | None = None
) -> dict[str, Any]:
    """The ConcordCluster's Membership condition, once it has one of these reasons (InSync
    only at `insync_voters` voters, if given: the InSync from before a scale is not it)."""
    deadline = time.perf_counter() + 90
    while True:
        status = plane.kubectl_json("get", "ccluster", "-n", namespace, RELEASE).get("status", {})
        found = {c["type"]: c for c in status.get("conditions", [])}.get("Membership")
        stale = (
            found is not None
            and found["reason"] == "InSync"
            and insync_voters is not None
            and status.get("voters") != insync_voters
        )
        if found is not None and found["reason"] in reasons and not stale:
            return found
        assert time.perf_counter() < deadline, f"Membership never {' or '.join(reasons)}: {status}"
        time.sleep(0.5)


def test_alerts_and_dashboard_use_only_metrics_the_members_export(
    control_plane: ControlPlane, node_agent: NodeAgent, release: Release
) -> None:
    """Every series the PrometheusRule's alerts and the Grafana dashboard's panels read is one
    a live member serves."""
    assert control_plane.helm_path is not None
    done = subprocess.run(
        [str(control_plane.helm_path), "template", RELEASE, str(CHART), "-n",
         release.namespace, "--set", "metrics.prometheusRule.enabled=true",
         "--set", "metrics.grafanaDashboard.enabled=true",
         "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
         "--show-only", "templates/prometheusrule.yaml",
         "--show-only", "templates/dashboard.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    docs = {d["kind"]: d for d in yaml.safe_load_all(done.stdout) if d}
    rules = docs["PrometheusRule"]["spec"]["groups"][0]["rules"]
    dashboard = json.loads(docs["ConfigMap"]["data"]["concord.json"])
    exprs = [r["expr"] for r in rules] + [
        t["expr"] for panel in dashboard["panels"] for t in panel["targets"]
    ]

    def series(expr: str) -> set[str]:
        return {
            re.sub(r"_(bucket|sum|count|total)$", "", name)
            for name in re.findall(r"\bconcord_[a-z_]+", expr)
        }

    alerts = set().union(*(series(r["expr"]) for r in rules))
    used = set().union(*(series(e) for e in exprs))
    url = f"http://{member_host(RELEASE, release.namespace, 0)}:7072/metrics"
    fetch = f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())"
    page = node_agent.run([sys.executable, "-c", fetch])
    assert page.returncode == 0, page.stderr
    # The text format names a counter's family with its _total suffix: compare without it.
    exported = series(" ".join(re.findall(r"^# TYPE (concord_[a-z_]+) ", page.stdout, re.M)))
    assert len(alerts) >= 6 and len(used) >= 16
    # The sealing-key age is exported as a family even before the first key exists (no
    # sample then), so this holds on a fresh release too.
    assert "concord_sealing_key_age_seconds" in alerts
    assert used <= exported, f"series no member exports: {sorted(used - exported)}"


def _pod_uids(plane: ControlPlane, namespace: str) -> dict[str, str]:
    pods = plane.kubectl_json(
        "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=coordinator"
    )["items"]
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}


def test_autolocked_members_unlock_from_the_secret_after_a_restart(
    control_plane: ControlPlane, node_agent: NodeAgent, release: Release
) -> None:
    """Autolock on (concordctl prints each member's unlock key once), the keys in a Secret
    of the user's, `helm upgrade --set autolock.unlockKeySecret=...`: the rolling restart
    brings every member up locked, and each unlocks itself from its key file and is Ready."""
    ns = release.namespace
    before = _pod_uids(control_plane, ns)
    turned_on = json.loads(_ctl(node_agent, release, "cluster", "autolock", "on"))
    keys = {f"member-{o['member']}": o["unlock_key"] for o in turned_on}
    assert sorted(keys) == ["member-1", "member-2", "member-3"]
    control_plane.kubectl(
        "create", "secret", "generic", "concord-unlock", "-n", ns,
        *(f"--from-literal={k}={v}" for k, v in keys.items()),
    )  # fmt: skip
    control_plane.helm(
        "upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values",
        "--set", "autolock.unlockKeySecret=concord-unlock",
    )  # fmt: skip
    control_plane.kubectl("rollout", "status", "-n", ns, f"statefulset/{RELEASE}", WAIT)
    status = json.loads(_ctl(node_agent, release, "cluster", "autolock", "status"))
    assert [(s["autolock"], s["locked"]) for s in status] == [(True, False)] * 3
    after = _pod_uids(control_plane, ns)
    # Every member restarted on its autolocked data dir (a member without its key would
    # never be Ready, and the rollout would not have finished).
    assert all(after[name] != uid for name, uid in before.items())
    _ctl(node_agent, release, "put", "after-autolock", "ok")


def test_example_job_takes_turns_under_the_lock(
    control_plane: ControlPlane, node_agent: NodeAgent, release: Release
) -> None:
    """examples/lock-guarded-job.yaml: two pods started together run their work one after
    the other, each under its own, larger fencing token."""
    ns = release.namespace
    control_plane.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "lock-guarded-job.yaml"))
    control_plane.kubectl("wait", "-n", ns, "--for=condition=Complete", WAIT, "job/nightly-report")
    runs = []
    for log in node_agent.state_dir.glob(f"pods/{ns}_nightly-report-*/report.log"):
        fields = {
            line.split()[0]: line.split()[1:]
            for line in log.read_text().splitlines()
            if line.startswith(("start ", "end "))
        }
        runs.append((float(fields["start"][1]), float(fields["end"][1]), int(fields["start"][0])))
    assert len(runs) == 2, runs
    (_, end1, token1), (start2, _, token2) = sorted(runs)
    assert end1 <= start2, f"the work overlapped: {runs}"
    assert token1 < token2
