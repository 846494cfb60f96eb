"""Sealing keys in a backup: values sealed on one cluster, `concordctl snapshot save`, then
`snapshot restore` into a new one-member cluster with new data-dir keys, under a new CA with
mutual TLS: the restored member unseals them for the operator's certificate, and its data
dir holds neither the plaintext nor the sealing private key in the clear."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path

import yaml

from coordinator import sealing
from coordinator.client import Client, ConcordError
from coordinator.pki import (
    OPERATOR_ROLE,
    create_ca,
    issue_client_cert,
    issue_member_cert,
    write_member_tls,
)
from coordinator.runtime.tls import channel_credentials
from tests.cli.test_seal import SECRET
from tests.cli.threaded import ThreadedCluster, ThreadedMember, concordctl, member_config

BACKUP_KEY_RE = re.compile(r"CONCORD-BACKUP-[A-Z2-7]+")


def test_a_restored_cluster_unseals_what_the_old_one_sealed(tmp_path: Path) -> None:
    old = ThreadedCluster(tmp_path / "old")
    try:
        eps = old.endpoints
        res = concordctl(eps, "seal", input=SECRET)
        assert res.exit_code == 0, res.output
        sealed = yaml.safe_load(res.stdout)["spec"]["encryptedData"]
        leader = old.call(old.cluster.leader())  # it applied the key before answering
        ders = [k.private_key_der for k in leader.loop.fsm.sealing_keys()]
        saved = concordctl(eps, "snapshot", "save", str(tmp_path / "s.bak"))
        assert saved.exit_code == 0, saved.output
        [backup_key] = BACKUP_KEY_RE.findall(saved.stdout)
    finally:
        old.shutdown()

    target = tmp_path / "restored"
    cfg = member_config(target, insecure=False, tls_dir=tmp_path / "tls")
    peers = f"1={cfg.initial_cluster[1]}"
    res = concordctl("127.0.0.1:1", "snapshot", "restore", str(tmp_path / "s.bak"),
                     "--initial-cluster", peers, "--id", "1", "--data-dir", str(target),
                     "--backup-key", backup_key)  # fmt: skip
    assert res.exit_code == 0, res.output
    ca = create_ca("restored")
    write_member_tls(tmp_path / "tls", ca.cert_pem, issue_member_cert(ca, "m1", member_id=1))
    operator = issue_client_cert(ca, "concord-operator", roles=[OPERATOR_ROLE])
    user = issue_client_cert(ca, "concordctl")

    member = ThreadedMember(cfg)
    try:

        async def unseal_all() -> dict[str, bytes]:
            creds = channel_credentials(ca.cert_pem, operator.cert_pem, operator.key_pem)
            out = {}
            async with Client([member.endpoint], credentials=creds, timeout_s=20) as op:
                for key, value in sealed.items():
                    envelope = base64.b64decode(value)
                    out[key] = (await op.unseal(envelope, "prod", "db")).plaintext
            creds = channel_credentials(ca.cert_pem, user.cert_pem, user.key_pem)
            async with Client([member.endpoint], credentials=creds, timeout_s=20) as plain:
                try:
                    await plain.unseal(envelope, "prod", "db")
                except ConcordError as err:
                    assert err.code == "PERMISSION_DENIED"
                else:
                    raise AssertionError("a plain client certificate unsealed")
            return out

        fut = asyncio.run_coroutine_threadsafe(unseal_all(), member.loop)
        assert fut.result(60) == {"username": b"admin", "password": b"hunter2"}
    finally:
        assert member.stop() == 0
    for path in (p for p in target.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert b"hunter2" not in data, path
        for der in ders:
            assert der[100:164] not in data, path
    assert ders and all(sealing.load_private_key(d) for d in ders)
