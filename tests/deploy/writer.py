"""A steady writer for the deploy tests, run where the members' DNS names resolve
(`NodeAgent.spawn`): `python -m tests.deploy.writer ENDPOINTS TLS_DIR OUT.json`.

It puts `w/000000`, `w/000001`, ... one every 20 ms through the client library (leader
redirects and retries included) and prints `writing` after the first acknowledgement. On
SIGTERM it stops once a put succeeds again (if the last one failed; at most 90 s more), reads
back every acknowledged key (linearizable reads, through a new client) and writes a summary:
how many were acknowledged, the longest time between two consecutive acknowledgements (the
longest write outage, to 20 ms), the puts that failed outright, and which acknowledged keys
are missing (none, or a write was lost)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import grpc

from coordinator.client import SyncClient

INTERVAL_S = 0.02
RECOVERY_MAX_S = 90.0


def main() -> int:
    endpoints, tls_dir, out = sys.argv[1].split(","), Path(sys.argv[2]), Path(sys.argv[3])
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.pem").read_bytes(),
        private_key=(tls_dir / "client-key.pem").read_bytes(),
        certificate_chain=(tls_dir / "client.pem").read_bytes(),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = SyncClient(endpoints, credentials=credentials, timeout_s=60.0)
    acked: list[str] = []
    errors: list[str] = []
    longest_gap_s = 0.0
    last_ack: float | None = None
    last_ok = False
    stop_by: float | None = None
    i = 0
    # After SIGTERM, go on until a put succeeds (for up to RECOVERY_MAX_S): an outage still
    # running when the test is done counts in full, not as a gap that never closed.
    while True:
        if stop.is_set():
            stop_by = stop_by or time.perf_counter() + RECOVERY_MAX_S
            if last_ok or time.perf_counter() > stop_by:
                break
        key = f"w/{i:06d}"
        try:
            client.put(key.encode(), str(i).encode())
        except Exception as err:  # a failed put is counted, not fatal
            errors.append(f"{key}: {err}")
            last_ok = False
        else:
            now = time.perf_counter()
            if last_ack is None:
                print("writing", flush=True)
            else:
                longest_gap_s = max(longest_gap_s, now - last_ack)
            last_ack = now
            last_ok = True
            acked.append(key)
        i += 1
        time.sleep(INTERVAL_S)
    if not last_ok and last_ack is not None:
        longest_gap_s = max(longest_gap_s, time.perf_counter() - last_ack)
    # A fresh client for the check: the writer's channels may still hold the old addresses
    # of recreated member pods (gRPC re-resolves a name at most every 30 s).
    checker = SyncClient(endpoints, credentials=credentials, timeout_s=60.0)
    found = checker.get_many([k.encode() for k in acked]) if acked else []
    missing = [k for k, kv in zip(acked, found, strict=True) if kv is None]
    out.write_text(
        json.dumps(
            {
                "acked": len(acked),
                "longest_gap_s": round(longest_gap_s, 3),
                "errors": errors,
                "missing": missing,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
