"""Workload identity end to end: real ServiceAccount tokens from the real API server's
TokenRequest API, verified by real member processes (TLS, `--workload-identity kubernetes`)
through TokenReview, under a member ServiceAccount that has only system:auth-delegator.

Two namespaces, one ServiceAccount `app` in each. Each identity works in its own namespace
and is refused (PERMISSION_DENIED) in the other's; a token for another audience, a token
signed by a key of our own, and an expired token signed with the API server's real key are
UNAUTHENTICATED with the reason; Unseal follows the namespace; a concord-sidecar with
--token-file takes a lock that is the operator's object k8s/NS/NAME; denials are counted in
the members' metrics without the token. The TokenReview client itself (cache, unreachable
API server) is tested against the same API server in-process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from concord_operator.reconcile import coordinator_name
from coordinator import sealing
from coordinator.client import Client, ConcordError, PermissionDenied
from coordinator.runtime.clock import ManualClock
from coordinator.runtime.tokenreview import (
    ApiServer,
    RejectReason,
    ReviewUnavailable,
    TokenRejected,
    TokenReviewer,
)
from coordinator.sealing import Scope
from coordinator.testing.controlplane import SERVICE_ACCOUNT_ISSUER, ControlPlane
from coordinator.testing.ports import free_ports
from coordinator.testing.process_cluster import REPO, ProcessCluster
from tests.sidecar.harness import check_against_spec

pytestmark = [pytest.mark.kube, pytest.mark.process]


@dataclass
class Rig:
    plane: ControlPlane
    cluster: ProcessCluster
    namespaces: tuple[str, str]
    member_ns: str
    workload_ports: list[int]
    ca_file: Path
    root: Path

    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.workload_ports]

    def token(self, namespace: str, audience: str = "concord") -> str:
        return self.plane.kubectl(
            "create", "token", "app", "-n", namespace, "--audience", audience, "--duration=10m"
        ).stdout.strip()

    def token_file(self, token: str) -> Path:
        path = self.root / f"token-{uuid.uuid4().hex[:8]}"
        path.write_text(token)
        return path

    def client(self, token: str, **kw: float) -> Client:
        options = {"timeout_s": 15.0} | kw
        return Client.with_token(self.endpoints(), self.token_file(token), self.ca_file, **options)

    def admin(self) -> Client:
        return Client.from_tls_dir(self.cluster.endpoints(), self.root / "admin-tls")


@pytest.fixture(scope="module")
def rig(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("identity")
    plane = control_plane
    suffix = uuid.uuid4().hex[:6]
    namespaces = (f"id-a-{suffix}", f"id-b-{suffix}")
    member_ns = f"id-m-{suffix}"
    for ns in (*namespaces, member_ns):
        plane.kubectl("create", "namespace", ns)
    for ns in namespaces:
        plane.kubectl("create", "serviceaccount", "app", "-n", ns)
    # The members' identity: allowed to create tokenreviews (system:auth-delegator), nothing
    # else, as the chart grants it.
    plane.kubectl("create", "serviceaccount", "concord", "-n", member_ns)
    binding = f"concord-tokenreview-{suffix}"
    plane.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=system:auth-delegator",
        f"--serviceaccount={member_ns}:concord",
    )
    review_kubeconfig = plane.service_account_kubeconfig(member_ns, "concord")
    cluster = ProcessCluster(root / "coord", 3)
    ports = free_ports(3)
    for m, port in zip(cluster.members.values(), ports, strict=True):
        m.extra_args += [
            "--workload-identity",
            "kubernetes",
            "--workload-listen",
            f"127.0.0.1:{port}",
            "--token-review-kubeconfig",
            str(review_kubeconfig),
        ]
    ca_file = root / "ca.pem"
    ca_file.write_bytes(cluster.ca.cert_pem)
    admin_tls = root / "admin-tls"
    admin_tls.mkdir()
    (admin_tls / "ca.pem").write_bytes(cluster.ca.cert_pem)
    (admin_tls / "client.pem").write_bytes(cluster.client_cert.cert_pem)
    (admin_tls / "client-key.pem").write_bytes(cluster.client_cert.key_pem)
    try:
        cluster.start_all()
        asyncio.run(cluster.wait_ready())
        yield Rig(plane, cluster, namespaces, member_ns, ports, ca_file, root)
    except BaseException:
        print(cluster.log_tails(chars=6000))
        raise
    finally:
        cluster.close()
        plane.kubectl("delete", "clusterrolebinding", binding, "--wait=false", check=False)
        for ns in (*namespaces, member_ns):
            plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_each_identity_works_in_its_namespace_and_is_refused_in_the_other(rig: Rig) -> None:
    a_ns, b_ns = rig.namespaces

    async def scenario() -> None:
        for mine, theirs in ((a_ns, b_ns), (b_ns, a_ns)):
            async with rig.client(rig.token(mine)) as c:
                base = f"k8s/{mine}"
                await c.put(f"{base}/config".encode(), mine.encode())
                got = await c.get(f"{base}/config".encode())
                assert got is not None and got.value == mine.encode()
                await c.sequence_create(f"{base}/ids")
                assert await c.sequence_next(f"{base}/ids", 3) == [1, 2, 3]
                async with c.lock(f"{base}/job") as held:
                    assert held.fencing_token > 0
                who = f"system:serviceaccount:{mine}:app"
                for attempt, verb in [
                    (c.put(f"k8s/{theirs}/config".encode(), b"x"), "KV.Put"),
                    (c.get(f"k8s/{theirs}/config".encode()), "KV.Range"),
                    (c.sequence_next(f"k8s/{theirs}/ids"), "Sequence.Next"),
                    (c.lock_info(f"k8s/{theirs}/job"), "Lock.Info"),
                    (c.members(), "Cluster.MemberList"),
                ]:
                    with pytest.raises(PermissionDenied) as info:
                        await attempt
                    assert who in info.value.message and verb in info.value.message
                with pytest.raises(PermissionDenied, match=f"k8s/{theirs}/job"):
                    async with c.lock(f"k8s/{theirs}/job"):
                        pass
        # Nothing of the refused calls happened: the other namespace's key holds its own.
        async with rig.admin() as admin:
            for ns in (a_ns, b_ns):
                kv = await admin.get(f"k8s/{ns}/config".encode())
                assert kv is not None and kv.value == ns.encode()

    asyncio.run(scenario())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(key: ec.EllipticCurvePrivateKey, claims: dict[str, object]) -> str:
    """An ES256 JWT as the API server makes them (kid = SHA-256 of the key's DER, base64url)."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "ES256", "kid": _b64(hashlib.sha256(der).digest())}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def claims(rig: Rig, namespace: str, exp_in_s: int) -> dict[str, object]:
    uid = rig.plane.kubectl_json("get", "serviceaccount", "app", "-n", namespace)["metadata"]["uid"]
    now = int(time.time())
    iat = min(now, now + exp_in_s - 600)
    return {
        "aud": ["concord"],
        "exp": now + exp_in_s,
        "iat": iat,
        "nbf": iat,
        "iss": SERVICE_ACCOUNT_ISSUER,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": "app", "uid": uid}},
        "sub": f"system:serviceaccount:{namespace}:app",
    }


def test_wrong_audience_forged_and_expired_tokens_are_unauthenticated(rig: Rig) -> None:
    a_ns, _ = rig.namespaces
    key_file = rig.plane.service_account_signing_key()
    if key_file is None:
        pytest.skip("an existing cluster: its ServiceAccount signing key is not ours to use")
    real_key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(real_key, ec.EllipticCurvePrivateKey)
    own_key = ec.generate_private_key(ec.SECP256R1())

    async def outcome(token: str) -> tuple[str, str]:
        async with rig.client(token, timeout_s=5.0) as c:
            try:
                await c.put(f"k8s/{a_ns}/probe".encode(), b"1")
            except ConcordError as err:
                return err.code, err.message
        return "OK", ""

    async def scenario() -> None:
        # Our minting is right: the same claims, signed with the real key, unexpired, pass.
        assert await outcome(mint(real_key, claims(rig, a_ns, 600))) == ("OK", "")
        cases = {
            "audience": rig.token(a_ns, audience="not-concord"),
            "signature": mint(own_key, claims(rig, a_ns, 600)),
            "expired": mint(real_key, claims(rig, a_ns, -60)),
        }
        for reason, token in cases.items():
            code, message = await outcome(token)
            assert code == "UNAUTHENTICATED", (reason, code, message)
            assert f"rejected ({reason})" in message, message
            assert token not in message

    asyncio.run(scenario())


def test_unseal_is_allowed_for_the_own_namespace_only(rig: Rig) -> None:
    a_ns, b_ns = rig.namespaces

    async def scenario() -> None:
        async with rig.client(rig.token(a_ns)) as a:
            keys = await a.sealing_certificate()
            cert = sealing.load_sealing_certificate(
                keys.current.certificate_pem, dt.datetime.now(dt.UTC)
            )
            mine = sealing.seal(cert.public_key, b"a-secret", Scope.STRICT, a_ns, "db")
            wide = sealing.seal(cert.public_key, b"a-wide", Scope.NAMESPACE_WIDE, a_ns, "")
            theirs = sealing.seal(cert.public_key, b"b-secret", Scope.STRICT, b_ns, "db")
            assert (await a.unseal(mine, a_ns, "db")).plaintext == b"a-secret"
            assert (await a.unseal(wide, a_ns, "anything")).plaintext == b"a-wide"
            with pytest.raises(PermissionDenied) as info:
                await a.unseal(theirs, b_ns, "db")
            message = info.value.message
            assert f"system:serviceaccount:{a_ns}:app" in message
            assert "Secrets.Unseal" in message and f"{b_ns}/db" in message
        async with rig.client(rig.token(b_ns)) as b:
            assert (await b.unseal(theirs, b_ns, "db")).plaintext == b"b-secret"

    asyncio.run(scenario())


@contextlib.contextmanager
def sidecar(rig: Rig, token: str) -> Iterator[str]:
    """A concord-sidecar process with --token-file (the namespace from the token itself):
    its base URL; stopped afterwards."""
    token_file = rig.token_file(token)
    log_path = rig.root / f"sidecar-{uuid.uuid4().hex[:6]}.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CONCORD_ENDPOINTS": ",".join(rig.endpoints()),
        "CONCORD_CA_FILE": str(rig.ca_file),
    }
    env.pop("CONCORD_TLS_DIR", None)
    env.pop("POD_NAMESPACE", None)
    argv = [sys.executable, "-m", "coordinator.sidecar", "--listen", "127.0.0.1:0"]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [*argv, "--token-file", str(token_file)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        port = 0
        deadline = time.monotonic() + 30
        while not port and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"concord-sidecar listening on .*:(\d+)", log_path.read_text())
            port = int(found.group(1)) if found else 0
            time.sleep(0.05)
        assert port, log_path.read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_sidecar_with_a_token_file_takes_the_operators_lock(rig: Rig) -> None:
    a_ns, b_ns = rig.namespaces

    async def scenario(base: str) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/locks/nightly", json={"ttl_ms": 10_000}) as r:
                body = await r.json()
                assert r.status == 201, body
            assert body["name"] == "nightly"  # the app sees its own name
            async with http.post(f"{base}/v1/sequences/sidecar-ids", json={"start": 5}) as r:
                assert r.status == 201, await r.text()
            async with http.post(f"{base}/v1/sequences/sidecar-ids/next", json={}) as r:
                assert (await r.json())["values"] == [5]
            async with http.put(f"{base}/v1/kv/settings", json={"value": "on"}) as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{base}/v1/kv/settings") as r:
                assert (await r.json())["key"] == "settings"
        # The coordinator object is the one the operator maps the Lease CR a_ns/nightly to.
        name = coordinator_name(a_ns, "nightly")
        assert name == f"k8s/{a_ns}/nightly"
        async with rig.admin() as admin:
            info = await admin.lock_info(name)
            assert [h.fencing_token for h in info.holders] == [body["fencing_token"]]
            assert (await admin.get(f"k8s/{a_ns}/settings".encode())) is not None
            assert (await admin.sequence_get(f"k8s/{a_ns}/sidecar-ids")).next == 6
            assert (await admin.lock_info(f"k8s/{b_ns}/nightly")).holders == ()

    with sidecar(rig, rig.token(a_ns)) as base:
        asyncio.run(scenario(base))


def test_a_sidecar_whose_token_is_refused_answers_401_as_documented(rig: Rig) -> None:
    a_ns, _ = rig.namespaces

    async def scenario(base: str) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/v1/locks/nightly", json={"ttl_ms": 10_000}) as r,
        ):
            raw = await r.read()
            check_against_spec("POST", "/v1/locks/nightly", r.status, r.headers, raw)
            assert r.status == 401, raw
            assert b"rejected (audience)" in raw

    with sidecar(rig, rig.token(a_ns, audience="not-concord")) as base:
        asyncio.run(scenario(base))


def test_denials_are_counted_by_verb_and_reason_without_the_token(rig: Rig) -> None:
    a_ns, b_ns = rig.namespaces
    token = rig.token(a_ns)

    async def scenario() -> str:
        async with rig.client(token) as a:
            for _ in range(2):
                with pytest.raises(PermissionDenied):
                    await a.put(f"k8s/{b_ns}/x".encode(), b"1")
        pages = [await m.metrics() for m in rig.cluster.members.values()]
        return "\n".join(pages)

    text = asyncio.run(scenario())
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("concord_workload_denied_total{")
        and 'verb="KV.Put"' in line
        and 'reason="namespace"' in line
    )
    assert counted >= 2, text
    assert token not in text and token[-20:] not in text


# --- the TokenReview client, in-process against the same API server ------------------------


def test_token_reviews_are_cached_and_an_unreachable_api_server_is_unavailable(
    rig: Rig,
) -> None:
    a_ns, _ = rig.namespaces
    api = ApiServer.from_kubeconfig(rig.plane.kubeconfig)
    clock = ManualClock(wall_start_ms=int(time.time() * 1000))
    token = rig.token(a_ns)

    async def scenario() -> None:
        reviewer = TokenReviewer(api, clock=clock)
        try:
            who = await reviewer.verify(token)
            assert (who.namespace, who.service_account) == (a_ns, "app")
            assert str(who) == f"system:serviceaccount:{a_ns}:app"
            await asyncio.gather(*(reviewer.verify(token) for _ in range(5)))
            assert reviewer.reviews == 1  # answered from the cache
            clock.advance(61)  # past the cache bound: asked again
            await reviewer.verify(token)
            assert reviewer.reviews == 2
            with pytest.raises(TokenRejected) as info:
                await reviewer.verify(rig.token(a_ns, audience="elsewhere"))
            assert info.value.reason is RejectReason.AUDIENCE
        finally:
            await reviewer.close()
        (dead,) = free_ports(1)
        down = TokenReviewer(ApiServer(f"https://127.0.0.1:{dead}", api.ssl_context), timeout_s=2.0)
        try:
            with pytest.raises(ReviewUnavailable, match="cannot reach"):
                await down.verify(token)
        finally:
            await down.close()

    asyncio.run(scenario())


def test_the_in_cluster_api_server_settings_work_and_need_the_tokenreview_grant(
    rig: Rig,
) -> None:
    """What a member pod uses (`ApiServer.in_cluster`): KUBERNETES_SERVICE_HOST/PORT and the
    mounted token and CA, here made as the kubelet makes them. The member's own
    ServiceAccount may review tokens; `app`, without system:auth-delegator, may not, which is
    the member's misconfiguration (UNAVAILABLE), not the caller's."""
    a_ns, b_ns = rig.namespaces
    view = rig.plane.kubectl_json("config", "view", "--raw", "--minify")
    ca = base64.b64decode(view["clusters"][0]["cluster"]["certificate-authority-data"])
    host, port = rig.plane.server.removeprefix("https://").rsplit(":", 1)
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}

    def mounted(namespace: str, account: str) -> Path:
        sa_dir = rig.root / f"sa-{account}-{uuid.uuid4().hex[:6]}"
        sa_dir.mkdir()
        (sa_dir / "ca.crt").write_bytes(ca)
        token = rig.plane.kubectl("create", "token", account, "-n", namespace).stdout.strip()
        (sa_dir / "token").write_text(token)
        return sa_dir

    async def scenario() -> None:
        member = TokenReviewer(ApiServer.in_cluster(env, mounted(rig.member_ns, "concord")))
        app = TokenReviewer(ApiServer.in_cluster(env, mounted(b_ns, "app")))
        try:
            who = await member.verify(rig.token(a_ns))
            assert who.namespace == a_ns
            with pytest.raises(
                ReviewUnavailable, match=r"refused this member's TokenReview \(403\)"
            ):
                await app.verify(rig.token(a_ns))
        finally:
            await member.close()
            await app.close()

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="KUBERNETES_SERVICE_HOST"):
        ApiServer.in_cluster({}, rig.root)


def test_a_member_that_cannot_reach_the_api_server_answers_unavailable(
    rig: Rig, tmp_path: Path
) -> None:
    """The caller did nothing wrong: UNAVAILABLE (retried by the client), never
    UNAUTHENTICATED, and the message says the token could not be verified."""
    a_ns, _ = rig.namespaces
    (dead,) = free_ports(1)
    view = rig.plane.kubectl_json("config", "view", "--raw", "--minify")
    view["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{dead}"
    kubeconfig = tmp_path / "unreachable.kubeconfig"
    kubeconfig.write_text(json.dumps(view))
    lone = ProcessCluster(tmp_path / "lone", 1, cluster_id="identity-unreachable")
    (port,) = free_ports(1)
    member = lone.members[1]
    member.extra_args += [
        "--workload-identity", "kubernetes", "--workload-listen", f"127.0.0.1:{port}",
        "--token-review-kubeconfig", str(kubeconfig),
    ]  # fmt: skip
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(lone.ca.cert_pem)
    token_file = rig.token_file(rig.token(a_ns))

    async def scenario() -> None:
        await lone.wait_ready()
        async with Client.with_token(
            [f"127.0.0.1:{port}"], token_file, ca_file, timeout_s=3.0
        ) as c:
            with pytest.raises(ConcordError) as info:
                await c.put(f"k8s/{a_ns}/x".encode(), b"1")
        assert info.value.code == "UNAVAILABLE", info.value
        assert "cannot verify the token now" in info.value.message
        assert "cannot reach the Kubernetes API server" in info.value.message

    try:
        lone.start_all()
        asyncio.run(scenario())
    except BaseException:
        print(lone.log_tails(chars=4000))
        raise
    finally:
        lone.close()
