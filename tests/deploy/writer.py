"""A steady writer for the deploy tests, run where the members' DNS names resolve
(`NodeAgent.spawn`): `python -m tests.deploy.writer ENDPOINTS TLS_DIR OUT.json`.

It puts `w/000000`, `w/000001`, ... one every 20 ms through the client library (leader
redirects and retries included), prints `writing` after the first acknowledgement, and on
SIGTERM reads back every acknowledged key (linearizable reads) and writes a summary: how
many were acknowledged, the longest time between two consecutive acknowledgements (the
longest write outage, to 20 ms), how many puts failed outright, and which acknowledged keys
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
    i = 0
    while not stop.is_set():
        key = f"w/{i:06d}"
        try:
            client.put(key.encode(), str(i).encode())
        except Exception as err:
            errors.append(f"{key}: {err}")
        else:
            now = time.perf_counter()
            if last_ack is None:
                print("writing", flush=True)
            else:
                longest_gap_s = max(longest_gap_s, now - last_ack)
            last_ack = now
            acked.append(key)
        i += 1
        stop.wait(INTERVAL_S)
    missing = [k for k in acked if client.get(k.encode()) is None]
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
