"""Write tests/sealing/vectors/v1.json once: a fixed sealing key pair, inputs, envelopes.

Run by hand only when a NEW format version is added (then write v2.json beside it); never
rewrite an existing vector file: the point of the vectors is that values sealed by any past
release keep unsealing. `python tests/sealing/make_vectors.py OUT.json`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from coordinator import sealing


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def main(out: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=sealing.KEY_BITS)
    other = rsa.generate_private_key(public_exponent=65537, key_size=sealing.KEY_BITS)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = sealing.sealing_certificate(key, start, start + dt.timedelta(days=36500))
    pub = key.public_key()
    cases: list[dict[str, object]] = []

    def case(  # noqa: PLR0917 (one row of the table per call)
        what: str,
        envelope: bytes,
        plaintext: bytes,
        scope: sealing.Scope,
        as_ns: str,
        as_name: str,
        expect: str,
    ) -> None:
        cases.append(
            {
                "description": what,
                "scope": scope.text,
                "unseal_as": {"namespace": as_ns, "name": as_name},
                "plaintext_b64": b64(plaintext),
                "envelope_b64": b64(envelope),
                "expect": expect,
            }
        )

    strict = sealing.seal(pub, b"hunter2", sealing.Scope.STRICT, "prod", "db")
    case("strict", strict, b"hunter2", sealing.Scope.STRICT, "prod", "db", "ok")
    wide = sealing.seal(pub, b"\x00\xffbinary\n", sealing.Scope.NAMESPACE_WIDE, "prod")
    case(
        "namespace-wide", wide, b"\x00\xffbinary\n", sealing.Scope.NAMESPACE_WIDE, "prod", "x", "ok"
    )
    anywhere = sealing.seal(pub, "päss wörd".encode(), sealing.Scope.CLUSTER_WIDE)
    case("cluster-wide", anywhere, "päss wörd".encode(), sealing.Scope.CLUSTER_WIDE, "a", "b", "ok")
    empty = sealing.seal(pub, b"", sealing.Scope.STRICT, "prod", "empty")
    case("empty value", empty, b"", sealing.Scope.STRICT, "prod", "empty", "ok")
    big = bytes(range(256)) * 64
    large = sealing.seal(pub, big, sealing.Scope.STRICT, "prod", "big")
    case("16 KiB value", large, big, sealing.Scope.STRICT, "prod", "big", "ok")
    case("strict, other name", strict, b"", sealing.Scope.STRICT, "prod", "web", "SCOPE_MISMATCH")
    case("strict, other ns", strict, b"", sealing.Scope.STRICT, "dev", "db", "SCOPE_MISMATCH")
    case("ns-wide, other ns", wide, b"", sealing.Scope.NAMESPACE_WIDE, "dev", "x", "SCOPE_MISMATCH")
    flipped = bytearray(strict)
    flipped[-1] ^= 1
    case("ciphertext altered", bytes(flipped), b"", sealing.Scope.STRICT, "prod", "db", "TAMPERED")
    wrapped = bytearray(strict)
    wrapped[20] ^= 1
    case("wrapped key altered", bytes(wrapped), b"", sealing.Scope.STRICT, "prod", "db", "TAMPERED")
    rescoped = bytearray(strict)
    rescoped[5] = sealing.Scope.CLUSTER_WIDE
    case(
        "scope byte altered", bytes(rescoped), b"", sealing.Scope.STRICT, "a", "b", "SCOPE_MISMATCH"
    )
    foreign = sealing.seal(other.public_key(), b"x", sealing.Scope.CLUSTER_WIDE)
    case("another cluster's key", foreign, b"", sealing.Scope.CLUSTER_WIDE, "a", "b", "UNKNOWN_KEY")
    case("truncated", strict[:40], b"", sealing.Scope.STRICT, "prod", "db", "MALFORMED")
    case(
        "not an envelope", b"apiVersion: v1\n" * 4, b"", sealing.Scope.STRICT, "p", "d", "MALFORMED"
    )
    future = bytearray(strict)
    future[4] = 2
    case("unknown version", bytes(future), b"", sealing.Scope.STRICT, "prod", "db", "MALFORMED")
    doc = {
        "format": "concord sealed value, envelope version 1 (coordinator/sealing/_envelope.py)",
        "private_key_pem": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "certificate_pem": cert.decode(),
        "key_id": sealing.key_id_of(pub).hex(),
        "cases": cases,
    }
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
