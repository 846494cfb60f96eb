"""The operator's side of secrets as files, `Gateway.publish_sealed` / `withdraw_sealed`,
against a real in-process 3-member cluster: the record lands under the namespace's prefix
with the ciphertext only, an equal record is never written twice (an operator restart wakes
no sidecar), a new generation is, the finalizer's delete removes it, and a coordinator
without a quorum is `Unavailable` (the status then says CoordinatorUnavailable)."""

from __future__ import annotations

from pathlib import Path

from concord_operator.coordinator import Gateway
from concord_operator.reconcile import SEALED_SECRETS, ObjectRef, Unavailable
from coordinator.sealing import SealedRecord, sealed_record_key
from tests.server.harness import Cluster, with_cluster

ENVELOPES = {"password": b"\x01sealed-envelope-bytes", "user": b"\x02more"}


def test_published_once_per_generation_withdrawn_and_unavailable_without_quorum(
    tmp_path: Path,
) -> None:
    async def scenario(c: Cluster) -> None:
        endpoints = [f"127.0.0.1:{m.served.port}" for m in c.running()]
        gateway = Gateway(endpoints, None, timeout_s=2.0)
        key = sealed_record_key("shop", "db")
        try:
            ref = ObjectRef(SEALED_SECRETS, "shop", "db", uid="u-1", generation=1)
            assert await gateway.publish_sealed(ref, "strict", ENVELOPES) is None
            assert await gateway.publish_sealed(ref, "strict", ENVELOPES) is None  # a resume
            kv = await gateway.client.get(key)
            assert kv is not None and kv.version == 1  # written once
            record = SealedRecord.decode(kv.value)
            assert (record.data, record.uid, record.generation, record.scope) == (
                ENVELOPES, "u-1", 1, "strict"
            )  # fmt: skip

            ref2 = ObjectRef(SEALED_SECRETS, "shop", "db", uid="u-1", generation=2)
            assert await gateway.publish_sealed(ref2, "strict", {"user": b"\x03"}) is None
            kv = await gateway.client.get(key)
            assert kv is not None and kv.version == 2
            assert SealedRecord.decode(kv.value).data == {"user": b"\x03"}

            assert await gateway.withdraw_sealed(ref2) is None
            assert await gateway.client.get(key) is None
            assert await gateway.withdraw_sealed(ref2) is None  # again: nothing to do

            for member in list(c.members)[:2]:
                await c.stop(member)
            problem = await gateway.publish_sealed(ref, "strict", ENVELOPES)
            assert isinstance(problem, Unavailable)
            assert isinstance(await gateway.withdraw_sealed(ref), Unavailable)
        finally:
            await gateway.close()

    with_cluster(tmp_path, scenario)
