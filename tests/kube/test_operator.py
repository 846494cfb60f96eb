"""The operator end to end: `python -m concord_operator` as a real process, against the real
control plane (tests/kube/fixtures.py) and a real 3-member coordinator cluster with mutual TLS
(coordinator/testing/process_cluster.py).
Locks, elections and sequences are taken through the client
library, as pods do through the sidecar, and the tests watch what the operator makes of them
in Kubernetes.

Timing-dependent by nature (processes, an API server, leases with TTLs): every wait is a
bounded poll of a condition, and the figures worth knowing (status lag, writes under a hot
lock) are printed (`pytest -s`), never asserted against a wall-clock target except the
issue's own bounds (a holder visible within about a second; at most one status write per
object per 0.5 s).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from coordinator.client import ConcordError
from coordinator.testing.controlplane import ControlPlane
from coordinator.testing.process_cluster import ProcessCluster
from coordinator.testing.procs import histogram_buckets, histogram_quantile, metric
from tests.kube.operator_harness import (
    KubeObjects,
    OperatorProcess,
    client_tls_dir,
    condition,
    eventually,
)

# Real processes and real timing, as the process tests: out of `make test-fast` too.
pytestmark = [pytest.mark.kube, pytest.mark.process]

StartOperator = Callable[..., OperatorProcess]
STATUS_INTERVAL_S = 0.5


@pytest.fixture
def start_operator(
    tmp_path: Path,
    coord: ProcessCluster,
    control_plane: ControlPlane,
    kube_namespace: str,
) -> Iterator[StartOperator]:
    """start_operator(name, *extra_args) -> a running operator; all stopped at teardown, and
    their logs printed if the test failed."""
    made: list[OperatorProcess] = []
    tls = client_tls_dir(coord)

    def start(name: str = "op-1", *extra: str) -> OperatorProcess:
        op = OperatorProcess(
            tmp_path,
            name,
            coord.endpoints(),
            tls,
            control_plane.kubeconfig,
            kube_namespace,
            *extra,
        )
        made.append(op.start())
        return op

    try:
        yield start
    finally:
        for op in made:
            op.stop()
        # Shown by pytest only when the test failed.
        for op in made:
            print(f"--- operator {op.name} ---\n{op.log()[-6000:]}")


StartLonely = Callable[[ProcessCluster], OperatorProcess]


@pytest.fixture
def start_operator_without_coordinator(
    tmp_path: Path, control_plane: ControlPlane, kube_namespace: str
) -> Iterator[StartLonely]:
    """An operator for a coordinator cluster that is not running (yet); stopped at teardown."""
    made: list[OperatorProcess] = []

    def start(cluster: ProcessCluster) -> OperatorProcess:
        op = OperatorProcess(
            tmp_path,
            "lonely",
            cluster.endpoints(),
            client_tls_dir(cluster),
            control_plane.kubeconfig,
            kube_namespace,
        )
        made.append(op.start())
        return op

    try:
        yield start
    finally:
        for op in made:
            op.stop()
            print(f"--- operator {op.name} ---\n{op.log()[-6000:]}")


def logs(*ops: OperatorProcess) -> Callable[[], str]:
    return lambda: "".join(f"\n--- {op.name} ---\n{op.log()}" for op in ops)


def serving(op: OperatorProcess) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await op.readyz() == 200

    return check


def ready(kube: KubeObjects, plural: str, name: str) -> Callable[[], bool]:
    return lambda: condition(kube.status(plural, name), "Ready").get("status") == "True"


def lock_name(kube: KubeObjects, name: str) -> str:
    return f"k8s/{kube.namespace}/{name}"


# --- locks -------------------------------------------------------------------------------------


def test_a_lock_taken_through_the_client_shows_in_the_lease_status(
    coord: ProcessCluster,
    kube: KubeObjects,
    start_operator: StartOperator,
    control_plane: ControlPlane,
) -> None:
    op = start_operator()

    async def scenario() -> None:
        kube.create("leases", "Lease", "db", {"ttlSeconds": 10})
        await eventually(ready(kube, "leases", "db"), 30, "Lease db Ready", logs(op))
        record = None
        async with coord.client() as client:
            record = await client.get(f"concord.dev/v1alpha1/leases/{kube.namespace}/db".encode())
            assert record is not None
            assert json.loads(record.value)["maxHolders"] == 1

            lease = await client.lease_grant(10_000)
            held = await client.acquire(lock_name(kube, "db"), lease)

            def shows_holder() -> bool:
                st = kube.status("leases", "db")
                return st.get("fencingToken") == held.fencing_token and [
                    h["identity"] for h in st.get("holders", [])
                ] == [str(lease)]

            lag_s = await eventually(shows_holder, 5, "the holder in status", logs(op))
            print(f"status lag after an acquire: {lag_s * 1000:.0f} ms")
            assert lag_s < 1.5, "a holder must show within about a second"
            st = kube.status("leases", "db")
            assert st["holderCount"] == 1
            assert st["phase"] == "Ready"
            assert "expiresAt" in st["holders"][0]

            await client.release(held)
            await eventually(
                lambda: kube.status("leases", "db").get("holders") == [],
                5,
                "the holder gone after release",
                logs(op),
            )
            assert kube.status("leases", "db")["fencingToken"] == held.fencing_token

            # Once the object has been quiet for longer than the rate limit's interval, the
            # next change is written at once: the lag is the operator's reads and one PATCH.
            await asyncio.sleep(2 * STATUS_INTERVAL_S)
            again = await client.acquire(lock_name(kube, "db"), lease)
            quiet_lag_s = await eventually(
                lambda: kube.status("leases", "db").get("fencingToken") == again.fencing_token,
                5,
                "the second grant in status",
                logs(op),
            )
            print(f"status lag after an acquire on a quiet object: {quiet_lag_s * 1000:.0f} ms")
            await client.release(again)
            await client.lease_revoke(lease)
        shown = control_plane.kubectl("get", "concord", "-n", kube.namespace).stdout
        print(shown)
        assert "lease.concord.dev/db" in shown
        assert "Ready" in shown

    asyncio.run(scenario())


def test_a_hot_lock_gets_at_most_one_status_write_per_interval(
    coord: ProcessCluster, kube: KubeObjects, start_operator: StartOperator
) -> None:
    op = start_operator()

    async def scenario() -> None:
        kube.create("leases", "Lease", "hot", {"ttlSeconds": 10})
        await eventually(ready(kube, "leases", "hot"), 30, "Lease hot Ready", logs(op))
        before = kube.status("leases", "hot").get("transitions", 0)
        cycles = 300
        async with coord.client() as client:
            lease = await client.lease_grant(10_000)
            loop = asyncio.get_running_loop()
            with kube.count_writes("leases", "hot") as writes:
                start = loop.time()
                for _ in range(cycles):
                    held = await client.acquire(lock_name(kube, "hot"), lease)
                    await client.release(held)
                hammer_s = loop.time() - start

                def settled() -> bool:
                    st = kube.status("leases", "hot")
                    return st.get("fencingToken") == held.fencing_token and not st.get("holders")

                await eventually(settled, 5, "the last grant mirrored", logs(op))
                window_s = loop.time() - start
            await client.lease_revoke(lease)
        allowed = int(window_s / STATUS_INTERVAL_S) + 2
        print(
            f"{cycles} acquire/release cycles in {hammer_s:.2f} s "
            f"({cycles / hammer_s:.0f}/s): {len(writes)} writes to the object in "
            f"{window_s:.2f} s (the limit allows {allowed})"
        )
        assert 1 <= len(writes) <= allowed
        st = kube.status("leases", "hot")
        # Every grant was counted even though the writes were coalesced.
        assert st["transitions"] - before == cycles
        # The operator's own account agrees, and says how stale the mirror ran.
        _, page = await op.get("/metrics")
        lag = histogram_buckets(page, "concord_operator_watch_lag_seconds")
        p50, p99 = histogram_quantile(0.5, lag), histogram_quantile(0.99, lag)
        assert p50 is not None and p99 is not None
        print(f"watch lag, event to status written: p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms")
        assert (metric(page, "concord_operator_watch_events_total") or 0) >= 2 * cycles

    asyncio.run(scenario())


def test_an_election_lease_shows_its_leader_and_value(
    coord: ProcessCluster, kube: KubeObjects, start_operator: StartOperator
) -> None:
    op = start_operator()

    async def scenario() -> None:
        kube.create("leases", "Lease", "leader", {"kind": "election", "ttlSeconds": 10})
        await eventually(ready(kube, "leases", "leader"), 30, "Lease leader Ready", logs(op))
        async with coord.client() as client:
            lease = await client.lease_grant(10_000)
            won = await client.campaign(lock_name(kube, "leader"), lease, b"pod-a")

            def shows_leader() -> bool:
                st = kube.status("leases", "leader")
                holders = st.get("holders", [])
                return [h["identity"] for h in holders] == ["pod-a"] and st.get("fencingToken") == (
                    won.fencing_token
                )

            await eventually(shows_leader, 5, "the leader in status", logs(op))
            await client.resign(won)
            await eventually(
                lambda: kube.status("leases", "leader").get("holders") == [],
                5,
                "no leader after resign",
                logs(op),
            )
            await client.lease_revoke(lease)

    asyncio.run(scenario())


# --- sequences ---------------------------------------------------------------------------------


def test_a_sequence_is_created_in_the_coordinator_and_its_value_mirrored(
    coord: ProcessCluster, kube: KubeObjects, start_operator: StartOperator
) -> None:
    op = start_operator()

    async def scenario() -> None:
        kube.create("sequences", "Sequence", "invoices", {"start": 100, "increment": 5})
        await eventually(ready(kube, "sequences", "invoices"), 30, "Sequence Ready", logs(op))
        assert "value" not in kube.status("sequences", "invoices")  # nothing issued yet
        async with coord.client() as client:
            assert await client.sequence_next(lock_name(kube, "invoices"), 3) == [100, 105, 110]
            await eventually(
                lambda: kube.status("sequences", "invoices").get("value") == 110,
                5,
                "status.value = the last number issued",
                logs(op),
            )
            # A sequence that already exists with another increment is a conflict, said so.
            await client.sequence_create(lock_name(kube, "taken"), 1, 3)
        kube.create("sequences", "Sequence", "taken", {"start": 1, "increment": 1})

        def conflict() -> bool:
            c = condition(kube.status("sequences", "taken"), "Ready")
            return c.get("status") == "False" and c.get("reason") == "SpecConflict"

        await eventually(conflict, 30, "Ready=False SpecConflict", logs(op))
        st = kube.status("sequences", "taken")
        assert st["phase"] == "NotReady"
        assert "increment 3" in condition(st, "Ready")["message"]

    asyncio.run(scenario())


# --- deletion ----------------------------------------------------------------------------------


def test_a_spec_change_is_applied_and_deleting_a_lease_releases_its_holders_and_record(
    coord: ProcessCluster, kube: KubeObjects, start_operator: StartOperator
) -> None:
    op = start_operator()

    async def scenario() -> None:
        kube.create("leases", "Lease", "gone", {"ttlSeconds": 30})
        await eventually(ready(kube, "leases", "gone"), 30, "Lease gone Ready", logs(op))
        key = f"concord.dev/v1alpha1/leases/{kube.namespace}/gone".encode()
        async with coord.client() as client:
            # maxHolders can change: the record the sidecar reads follows, the status says so.
            kube.patch("leases", "gone", {"spec": {"maxHolders": 3}})

            async def record_updated() -> bool:
                kv = await client.get(key)
                return kv is not None and json.loads(kv.value)["maxHolders"] == 3

            await eventually(record_updated, 10, "maxHolders 3 in the record", logs(op))
            await eventually(
                lambda: kube.status("leases", "gone").get("observedGeneration") == 2,
                5,
                "observedGeneration 2",
                logs(op),
            )
            applied = condition(kube.status("leases", "gone"), "SpecApplied")
            assert applied["status"] == "True"
            assert "maxHolders is now 3" in applied["message"]

            lease = await client.lease_grant(30_000)
            held = await client.acquire(lock_name(kube, "gone"), lease)
            await eventually(
                lambda: kube.status("leases", "gone").get("holderCount") == 1,
                5,
                "the holder mirrored",
                logs(op),
            )
            kube.delete("leases", "gone")
            await eventually(
                lambda: kube.get("leases", "gone") is None,
                15,
                "the Lease deleted (finalizer done)",
                logs(op),
            )
            # The holder's lease was revoked: its token is no longer current, the lease gone.
            assert not await client.check_fence(held.name, held.fencing_token)
            with pytest.raises(ConcordError) as err:
                await client.lease_time_to_live(lease)
            assert err.value.code == "NOT_FOUND"
            assert await client.get(key) is None

    asyncio.run(scenario())


# --- coordinator outage ------------------------------------------------------------------------


def test_quorum_loss_sets_ready_false_deletes_nothing_and_recovers(
    coord: ProcessCluster, kube: KubeObjects, start_operator: StartOperator
) -> None:
    op = start_operator("op-1", "--leader-ttl-seconds", "15")

    async def scenario() -> None:
        kube.create("leases", "Lease", "q", {"ttlSeconds": 10})
        kube.create("sequences", "Sequence", "qs", {"start": 1})
        await eventually(ready(kube, "leases", "q"), 30, "Lease Ready", logs(op))
        await eventually(ready(kube, "sequences", "qs"), 30, "Sequence Ready", logs(op))
        coord.kill(2)
        coord.kill(3)

        def unavailable(plural: str, name: str) -> Callable[[], bool]:
            def check() -> bool:
                c = condition(kube.status(plural, name), "Ready")
                return c.get("status") == "False" and c.get("reason") == "CoordinatorUnavailable"

            return check

        took_s = await eventually(unavailable("leases", "q"), 15, "Ready=False", logs(op))
        await eventually(unavailable("sequences", "qs"), 5, "Ready=False", logs(op))
        print(f"Ready=False {took_s:.1f} s after the quorum was lost")
        st = kube.status("leases", "q")
        print("condition:", condition(st, "Ready")["message"])
        assert st["phase"] == "NotReady"
        assert kube.get("leases", "q") is not None
        assert kube.get("sequences", "qs") is not None

        coord.start(2)
        coord.start(3)
        await coord.wait_ready()
        back_s = await eventually(ready(kube, "leases", "q"), 30, "Ready again", logs(op))
        await eventually(ready(kube, "sequences", "qs"), 10, "Ready again", logs(op))
        print(f"Ready=True {back_s:.1f} s after the members were restarted and ready")
        assert op.running()

    asyncio.run(scenario())


# --- restarts and replicas ---------------------------------------------------------------------


def test_an_operator_killed_mid_reconcile_converges_without_duplicate_work(
    coord: ProcessCluster, kube: KubeObjects, start_operator: StartOperator
) -> None:
    first = start_operator("op-1")

    async def scenario() -> None:
        await eventually(serving(first), 30, "op-1 ready", logs(first))
        names = [f"s{i}" for i in range(5)]
        for name in names:
            kube.create("sequences", "Sequence", name, {"start": 10})
            kube.create("leases", "Lease", name, {"ttlSeconds": 10})
        first.kill()  # SIGKILL while it works through them
        second = start_operator("op-2")
        for name in names:
            await eventually(ready(kube, "sequences", name), 30, f"{name} Ready", logs(second))
            await eventually(ready(kube, "leases", name), 30, f"{name} Ready", logs(second))
        async with coord.client() as client:
            for name in names:
                for plural in ("sequences", "leases"):
                    key = f"concord.dev/v1alpha1/{plural}/{kube.namespace}/{name}".encode()
                    record = await client.get(key)
                    assert record is not None
                    # Written once, by whichever replica got there: never again.
                    assert record.version == 1, (plural, name, record.version)
                # One sequence, starting where it was declared.
                assert await client.sequence_next(lock_name(kube, name)) == [10]
        # A third start has nothing to do: no coordinator writes, no status writes.
        second.stop()
        with kube.count_writes("leases", "s0") as writes:
            third = start_operator("op-3")
            await eventually(serving(third), 30, "op-3 ready", logs(third))
            await eventually(
                lambda: third.metric(
                    'concord_operator_reconciles_total{kind="leases",result="ok"}'
                ),
                10,
                "op-3 reconciled",
                logs(third),
            )
            patches = await third.metric('concord_operator_status_patches_total{kind="leases"}')
        assert patches == 0
        # kopf's own bookkeeping may touch annotations on resume; status is never rewritten.
        assert kube.status("leases", "s0")["observedGeneration"] == 1
        print(f"writes to Lease s0 during a resume with nothing to do: {len(writes)}")

    asyncio.run(scenario())


def test_two_replicas_only_the_elected_one_acts_and_a_deposed_one_stops(
    coord: ProcessCluster, kube: KubeObjects, start_operator: StartOperator
) -> None:
    ttl = "3"
    a = start_operator("op-a", "--leader-ttl-seconds", ttl)
    b = start_operator("op-b", "--leader-ttl-seconds", ttl)
    both = logs(a, b)

    async def scenario() -> None:
        async def one_ready() -> bool:
            states = sorted([await a.readyz(), await b.readyz()])
            return states == [200, 503]

        await eventually(one_ready, 30, "exactly one replica ready", both)
        leader, standby = (a, b) if await a.readyz() == 200 else (b, a)
        kube.create("leases", "Lease", "r1", {"ttlSeconds": 10})
        await eventually(ready(kube, "leases", "r1"), 30, "r1 Ready", both)
        assert await standby.metric('concord_operator_status_patches_total{kind="leases"}') == 0
        assert await standby.metric("concord_operator_leader") == 0
        token = await leader.metric("concord_operator_fencing_token")
        assert token > 0

        # The leader vanishes (SIGKILL): after its lease's TTL the standby takes over.
        leader.kill()
        took_s = await eventually(serving(standby), 30, "the standby takes over", both)
        print(f"standby took over {took_s:.1f} s after the leader was killed (TTL {ttl} s)")
        assert await standby.metric("concord_operator_fencing_token") > token
        kube.create("leases", "Lease", "r2", {"ttlSeconds": 10})
        await eventually(ready(kube, "leases", "r2"), 30, "r2 Ready", both)

        # Depose the new leader behind its back: its lease is revoked. It must stop at once.
        async with coord.client() as client:
            current = await client.leader("concord.dev/operator")
            assert current is not None
            assert current.value == standby.name.encode()
            await client.lease_revoke(current.lease)
        assert standby.popen is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        code = await asyncio.to_thread(standby.popen.wait, 15)
        print(f"deposed replica exited {loop.time() - start:.2f} s after its lease was revoked")
        assert code == 1
        assert "deposed" in standby.log()

    asyncio.run(scenario())


# --- start-up ----------------------------------------------------------------------------------


def test_a_missing_kubeconfig_is_a_clear_startup_error(tmp_path: Path) -> None:
    op = OperatorProcess(
        tmp_path, "bad", ["127.0.0.1:1"], tmp_path, tmp_path / "nope.kubeconfig", "default"
    ).start()
    assert op.popen is not None
    assert op.popen.wait(30) == 2
    assert "kubeconfig" in op.log() and "does not exist" in op.log()


def test_an_unreachable_coordinator_is_not_fatal_at_startup(
    kube: KubeObjects, tmp_path: Path, start_operator_without_coordinator: StartLonely
) -> None:
    """The operator starts before the coordinator: a standby that says why, then the leader
    once the coordinator is there, with nothing restarted."""
    cluster = ProcessCluster(tmp_path / "late", 3)  # ports and certificates, no process yet
    op = start_operator_without_coordinator(cluster)
    try:

        async def scenario() -> None:
            async def standby() -> bool:
                try:
                    status, body = await op.get("/readyz")
                except OSError:
                    return False
                return status == 503 and "standby" in body

            await eventually(standby, 30, "/readyz 503 standby", logs(op))
            assert (await op.get("/healthz"))[0] == 200
            await eventually(
                lambda: "cannot reach the coordinator" in op.log(), 30, "a warning", logs(op)
            )
            kube.create("leases", "Lease", "early", {"ttlSeconds": 10})
            cluster.start_all()
            await cluster.wait_ready()
            took_s = await eventually(serving(op), 60, "the operator leads", logs(op))
            print(f"leading {took_s:.1f} s after the coordinator was ready")
            await eventually(ready(kube, "leases", "early"), 30, "Lease Ready", logs(op))
            assert op.running()

        asyncio.run(scenario())
    finally:
        op.stop()
        cluster.close()


def test_missing_rbac_is_a_clear_startup_error_and_a_role_fixes_it(
    control_plane: ControlPlane, kube_namespace: str, tmp_path: Path
) -> None:
    ns = kube_namespace
    control_plane.kubectl("create", "serviceaccount", "concord-operator", "-n", ns)
    kubeconfig = control_plane.service_account_kubeconfig(ns, "concord-operator")
    tls = tmp_path / "tls"
    tls.mkdir()

    def operator(name: str) -> OperatorProcess:
        op = OperatorProcess(tmp_path, name, ["127.0.0.1:1"], tls, kubeconfig, ns)
        op.argv.remove("--tls-dir")
        op.argv.remove(str(tls))
        return op.start()

    denied = operator("denied")
    assert denied.popen is not None
    assert denied.popen.wait(60) == 2
    assert "RBAC does not allow the operator to" in denied.log()
    assert f"patch leases/status.concord.dev in {ns}" in denied.log()
    assert f"create secrets in {ns}" in denied.log()
    assert f"update configmaps in {ns}" in denied.log()

    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "concord-operator", "namespace": ns},
        "rules": [
            {
                "apiGroups": ["concord.dev"],
                "resources": [
                    *(kinds := ["leases", "sequences", "concordclusters", "sealedsecrets"]),
                    *(f"{k}/status" for k in kinds),
                ],
                "verbs": ["get", "list", "watch", "patch"],
            },
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["get", "list", "watch", "create", "update", "delete"],
            },
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "verbs": ["get", "create", "update"],
            },
        ],
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(role))
    control_plane.kubectl(
        "create",
        "rolebinding",
        "concord-operator",
        "-n",
        ns,
        "--role=concord-operator",
        f"--serviceaccount={ns}:concord-operator",
    )
    allowed = operator("allowed")
    try:

        async def past_preflight() -> bool:
            try:
                status, body = await allowed.get("/readyz")
            except OSError:
                return False
            return status == 503 and "standby" in body

        asyncio.run(eventually(past_preflight, 60, "preflight passed", logs(allowed)))
        assert allowed.running()
    finally:
        allowed.stop()


# --- the cluster view --------------------------------------------------------------------------


def test_the_cluster_view_shows_members_and_quorum_health(
    coord: ProcessCluster,
    kube: KubeObjects,
    start_operator: StartOperator,
    control_plane: ControlPlane,
) -> None:
    op = start_operator()

    async def scenario() -> None:
        kube.create(
            "concordclusters", "ConcordCluster", "concord", {"endpoints": coord.endpoints()}
        )

        def healthy() -> bool:
            st = kube.status("concordclusters", "concord")
            return st.get("quorum") == "Healthy" and st.get("voters") == 3

        await eventually(healthy, 30, "3 voters, quorum Healthy", logs(op))
        st = kube.status("concordclusters", "concord")
        leader = await coord.leader()
        assert st["leader"] == f"member-{leader}"
        assert st["faultTolerance"] == 1
        assert sorted(m["managerStatus"] for m in st["members"]) == [
            "Leader",
            "Reachable",
            "Reachable",
        ]
        # One follower down: Degraded, that member Unreachable, no fault tolerance left.
        follower = next(i for i in (1, 2, 3) if i != leader)
        coord.kill(follower)

        def degraded() -> bool:
            st = kube.status("concordclusters", "concord")
            return st.get("quorum") == "Degraded" and f"member-{follower}:Unreachable" in str(
                st.get("memberSummary")
            )

        await eventually(degraded, 30, "quorum Degraded", logs(op))
        assert kube.status("concordclusters", "concord")["faultTolerance"] == 0
        shown = control_plane.kubectl("get", "concord", "-n", kube.namespace).stdout
        print(shown)
        assert "Degraded" in shown

    asyncio.run(scenario())
