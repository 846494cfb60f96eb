"""The pinned vectors of envelope version 1 (tests/sealing/vectors/v1.json): a fixed key pair,
inputs and envelopes written once by make_vectors.py. Every release must decrypt them to the
same plaintexts and refuse the bad ones for the same reasons, forever."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from coordinator import sealing

VECTORS = json.loads((Path(__file__).parent / "vectors" / "v1.json").read_text("utf-8"))


def private_key() -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(VECTORS["private_key_pem"].encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


KEY = private_key()


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["description"])
def test_vector(case: dict[str, Any]) -> None:
    envelope = base64.b64decode(case["envelope_b64"])
    ring = {bytes.fromhex(VECTORS["key_id"]): KEY}
    as_ = case["unseal_as"]
    if case["expect"] == "ok":
        opened = sealing.unseal(envelope, as_["namespace"], as_["name"], ring.get)
        assert opened.value == base64.b64decode(case["plaintext_b64"])
        assert opened.scope is sealing.Scope.parse(case["scope"])
        assert opened.key_id.hex() == VECTORS["key_id"]
    else:
        with pytest.raises(sealing.SealError) as err:
            sealing.unseal(envelope, as_["namespace"], as_["name"], ring.get)
        assert err.value.reason is sealing.Reason[case["expect"]]
        assert type(err.value) is sealing.ERRORS[err.value.reason]


def test_the_vector_certificate_is_a_concord_sealing_certificate() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    cert = sealing.load_sealing_certificate(VECTORS["certificate_pem"].encode(), now)
    assert cert.key_id_hex == VECTORS["key_id"]
    assert sealing.key_id_of(KEY.public_key()) == cert.key_id


def test_every_reason_is_pinned_by_a_vector() -> None:
    reasons = {c["expect"] for c in VECTORS["cases"]}
    assert reasons == {"ok", *(r.name for r in sealing.Reason)}
