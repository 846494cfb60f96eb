"""The sealed-secret record (coordinator/sealing/_record.py): the key layout under the
namespace's prefix, a canonical encoding (equal records are equal bytes), and a reader that
refuses what it does not know rather than guess."""

from __future__ import annotations

import json

import pytest

from coordinator.sealing import (
    RECORD_VERSION,
    SealedRecord,
    sealed_record_key,
    sealed_record_name,
    sealed_record_prefix,
)


def test_keys_live_under_the_namespace_prefix() -> None:
    assert sealed_record_prefix("shop") == b"k8s/shop/sealedsecrets/"
    assert sealed_record_key("shop", "db") == b"k8s/shop/sealedsecrets/db"
    assert sealed_record_name("shop", b"k8s/shop/sealedsecrets/db") == "db"
    for key in (
        b"k8s/other/sealedsecrets/db",  # another namespace's
        b"k8s/shop/sealedsecrets/",  # the prefix itself
        b"k8s/shop/sealedsecrets/a/b",  # nested: not a record
        b"k8s/shop/db",  # a lock-style name
        b"k8s/shop/sealedsecrets/\xff",  # not UTF-8
    ):
        assert sealed_record_name("shop", key) is None


def test_round_trip_and_canonical_bytes() -> None:
    record = SealedRecord({"b": b"\x00\x01", "a": b"env"}, uid="u-1", generation=4, scope="strict")
    raw = record.encode()
    assert SealedRecord.decode(raw) == record
    same = SealedRecord({"a": b"env", "b": b"\x00\x01"}, uid="u-1", generation=4)
    assert same.encode() == raw  # key order does not matter: a writer can compare bytes
    body = json.loads(raw)
    assert body["v"] == RECORD_VERSION and body["data"] == {"a": "ZW52", "b": "AAE="}


def test_unknown_fields_of_the_same_version_survive_a_round_trip() -> None:
    raw = json.dumps({"v": 1, "data": {}, "future": [1, 2]}).encode()
    decoded = SealedRecord.decode(raw)
    assert decoded.data == {} and json.loads(decoded.encode())["future"] == [1, 2]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json", "must be JSON"),
        (b"[1]", "JSON object"),
        (b'{"v": 2, "data": {}}', "version 2"),
        (b'{"data": {}}', "version None"),
        (b'{"v": 1}', "`data` object"),
        (b'{"v": 1, "data": {"k": 3}}', "data.k must be a base64 string"),
        (b'{"v": 1, "data": {"k": "!!"}}', "data.k is not valid base64"),
        (b'{"v": 1, "data": {}, "generation": "7"}', "generation must be an integer"),
    ],
)
def test_what_is_not_a_record_is_refused_by_name(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SealedRecord.decode(raw)
