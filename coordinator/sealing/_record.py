"""The sealed-secret record: how a SealedSecret's ciphertext is kept in the coordinator's KV
store for the sidecars that deliver it as files (the Docker Swarm model: a workload's secrets
come straight from the managers, with no Kubernetes Secret in between).

The operator writes one record per SealedSecret `<namespace>/<name>` under

    k8s/<namespace>/sealedsecrets/<name>

(the namespace's own prefix, so an authorization rule "a workload touches only
`k8s/<its namespace>/`" covers it) and deletes it with the SealedSecret. The value is JSON:

    {"v": 1, "uid": "...", "generation": 3, "scope": "strict",
     "data": {"KEY": "<the sealed envelope, base64>", ...}}

Only ciphertext: the envelopes are exactly spec.encryptedData, so the record is as safe to
store as the SealedSecret is to keep in git, and unsealing it still needs `Secrets.Unseal`
(scope-checked against namespace/name). `generation` and `uid` say which version of which
object it came from, for logs and for the operator's "already written" check; the CR's
resourceVersion is left out on purpose: every status write changes it, and a record that
changed with it would make every sidecar unseal again for nothing.

`v` is the format's version: a reader refuses a version it does not know (ValueError) rather
than guess. Pure: no I/O, no project imports.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

RECORD_VERSION = 1
RECORD_SEGMENT = "sealedsecrets"
RECORD_PREFIX = "k8s"


def sealed_record_prefix(namespace: str) -> bytes:
    """The prefix of every sealed-secret record of `namespace` (one watch covers them)."""
    return f"{RECORD_PREFIX}/{namespace}/{RECORD_SEGMENT}/".encode()


def sealed_record_key(namespace: str, name: str) -> bytes:
    """The KV key of the record of the SealedSecret `namespace/name`."""
    return sealed_record_prefix(namespace) + name.encode()


def sealed_record_name(namespace: str, key: bytes) -> str | None:
    """The SealedSecret name a record key names, or None if the key is not one of
    `namespace`'s records."""
    prefix = sealed_record_prefix(namespace)
    if not key.startswith(prefix) or len(key) == len(prefix):
        return None
    name = key[len(prefix) :]
    if b"/" in name:
        return None
    try:
        return name.decode()
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class SealedRecord:
    data: Mapping[str, bytes]
    """Secret key -> the sealed envelope (binary, as `coordinator.sealing.seal` makes it)."""
    uid: str = ""
    generation: int = 0
    scope: str = "strict"
    extra: Mapping[str, object] = field(default_factory=dict, compare=False)
    """Fields a newer writer of the same version added; kept so nothing is silently lost."""

    def encode(self) -> bytes:
        """The record's bytes: canonical JSON (sorted keys), so equal records are equal
        bytes and a writer can skip a put that would change nothing."""
        body = {
            **self.extra,
            "v": RECORD_VERSION,
            "uid": self.uid,
            "generation": self.generation,
            "scope": self.scope,
            "data": {k: base64.b64encode(v).decode("ascii") for k, v in self.data.items()},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> SealedRecord:
        """The record in `raw`; ValueError (naming what is wrong) if it is not one."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"a sealed-secret record must be JSON: {err}") from None
        if not isinstance(body, dict):
            raise ValueError("a sealed-secret record must be a JSON object")
        version = body.get("v")
        if version != RECORD_VERSION:
            raise ValueError(
                f"sealed-secret record version {version!r} is not {RECORD_VERSION}, the one "
                "this build reads"
            )
        raw_data = body.get("data")
        if not isinstance(raw_data, dict):
            raise ValueError("a sealed-secret record needs a `data` object")
        data: dict[str, bytes] = {}
        for key, text in raw_data.items():
            if not isinstance(text, str):
                raise ValueError(f"data.{key} must be a base64 string")
            try:
                data[str(key)] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"data.{key} is not valid base64") from None
        generation = body.get("generation", 0)
        if not isinstance(generation, int):
            raise ValueError("generation must be an integer")
        known = {"v", "uid", "generation", "scope", "data"}
        return cls(
            data,
            uid=str(body.get("uid", "")),
            generation=generation,
            scope=str(body.get("scope", "strict")),
            extra={k: v for k, v in body.items() if k not in known},
        )
