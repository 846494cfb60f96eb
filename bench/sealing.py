"""Sealed-secret throughput: values per second, sealing and unsealing.

    python -m bench.sealing [--values N] [--size BYTES] [--concurrency C]

Offline (this process, one core): `coordinator.sealing.seal` to an RSA-4096 certificate
(what `concordctl seal` does per value) and `unseal` with the private key (the coordinator's
work per value, without the RPC). Then against a real 3-member cluster of
`concord-coordinator` processes on loopback with mutual TLS and fsync on (the process-test
harness): `Secrets.Unseal` with the operator's certificate, one call at a time and with C in
flight, `ReEncrypt` one at a time, and `ValidateSealed` in batches of 100. Prints numbers as
JSON; asserts nothing about time (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from coordinator import sealing
from coordinator.client import Client
from coordinator.pki import OPERATOR_ROLE, issue_client_cert
from coordinator.runtime.tls import channel_credentials
from coordinator.sealing import Scope
from coordinator.testing.process_cluster import ProcessCluster


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def offline(values: int, size: int) -> dict[str, float]:
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    pair = sealing.new_sealing_key(now)
    keygen_s = time.perf_counter() - started
    cert = sealing.load_sealing_certificate(pair.certificate_pem, now)
    key = sealing.load_private_key(pair.private_key_der)
    ring = {pair.key_id: key}.get
    value = os.urandom(size)
    started = time.perf_counter()
    envelopes = [
        sealing.seal(cert.public_key, value, Scope.STRICT, "ns", "name") for _ in range(values)
    ]
    seal_s = time.perf_counter() - started
    started = time.perf_counter()
    for env in envelopes:
        sealing.unseal(env, "ns", "name", ring)
    unseal_s = time.perf_counter() - started
    return {
        "keygen_s": round(keygen_s, 2),
        "seal_per_s": _rate(values, seal_s),
        "unseal_per_s": _rate(values, unseal_s),
    }


async def _timed(count: int, fn: Callable[[int], Awaitable[Any]], concurrency: int) -> float:
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            await fn(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _rate(count, time.perf_counter() - started)


async def in_cluster(root: Path, values: int, size: int, concurrency: int) -> dict[str, float]:
    with ProcessCluster(root, 3, cluster_id="bench-sealing") as cluster:
        cluster.start_all()
        await cluster.wait_ready(timeout_s=60)
        await cluster.leader(timeout_s=30)
        op_cert = issue_client_cert(cluster.ca, "concord-operator", roles=[OPERATOR_ROLE])
        op_creds = channel_credentials(cluster.ca.cert_pem, op_cert.cert_pem, op_cert.key_pem)
        eps = cluster.endpoints()
        async with (
            Client(eps, credentials=cluster.credentials(), timeout_s=60) as user,
            Client(eps, credentials=op_creds, timeout_s=60, rpc_timeout_s=30) as op,
        ):
            pem = (await user.sealing_certificate()).current.certificate_pem
            public = sealing.load_sealing_certificate(pem, dt.datetime.now(dt.UTC)).public_key
            value = os.urandom(size)
            envs = [sealing.seal(public, value, Scope.STRICT, "ns", "n") for _ in range(values)]
            await op.unseal(envs[0], "ns", "n")  # warm: the member loads the key once
            return {
                "unseal_per_s_sequential": await _timed(
                    values, lambda i: op.unseal(envs[i], "ns", "n"), 1
                ),
                f"unseal_per_s_{concurrency}_in_flight": await _timed(
                    values, lambda i: op.unseal(envs[i], "ns", "n"), concurrency
                ),
                "reencrypt_per_s_sequential": await _timed(
                    values // 2, lambda i: user.re_encrypt(envs[i], "ns", "n"), 1
                ),
                "validate_values_per_s_batches_of_100": await _timed(
                    max(1, values // 100),
                    lambda i: user.validate_sealed([(e, "ns", "n") for e in envs[:100]]),
                    1,
                )
                * min(100, values),
            }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--values", type=int, default=400)
    p.add_argument("--size", type=int, default=64, help="bytes per value (default 64)")
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    result: dict[str, Any] = {"values": args.values, "size_bytes": args.size}
    result["offline"] = offline(args.values, args.size)
    with tempfile.TemporaryDirectory(prefix="concord-bench-sealing-") as tmp:
        result["cluster"] = asyncio.run(
            in_cluster(Path(tmp), args.values, args.size, args.concurrency)
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
