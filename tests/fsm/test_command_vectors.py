"""Golden vectors for the command codec: the bytes on disk, pinned.

Commands live in Raft logs and snapshots for as long as a cluster runs, so their encoding is a
durable format: every command class has cases here (edge values: empty and long byte strings,
zero and maximal integers, absent and empty optionals, empty and nested lists), and
`command_vectors.json` holds the hex the codec produced for each when the file was made. A
case's bytes must never change (that would need a new ENVELOPE_VERSION); new cases may be
appended to the file. The same file pins the error messages that malformed entries get
(unknown tag, truncation, bad enum, ...), which operators see in `concord raft` output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.fsm import (
    Campaign,
    CommandDecodeError,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Envelope,
    ExpireLeaseIds,
    ExpireLeases,
    JoinTokenAdd,
    JoinTokenRevoke,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    MemberReadmit,
    MemberRemove,
    MemberUpsert,
    Noop,
    OwnedLeaseGrant,
    Proclaim,
    Put,
    Range,
    Resign,
    SealingKeyAdd,
    SequenceCreate,
    SequenceNext,
    Txn,
)
from coordinator.fsm.commands import COMMAND_TYPES

VECTORS = json.loads((Path(__file__).with_name("command_vectors.json")).read_text("utf-8"))

U32 = 2**32 - 1
U64 = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
LONG = bytes(range(256)) * 2
EVERY_COMPARE = tuple(
    Compare(b"c", target, op, b"\x00v" if target is CompareTarget.VALUE else U64 - target)
    for target in CompareTarget
    for op in CompareOp
)

CASES: dict[str, Envelope] = {
    "put": Envelope(1, 2, 3, Put(b"k", b"v", lease=5, prev_kv=True)),
    "put-empty": Envelope(0, 0, 0, Put(b"", b"")),
    "put-max": Envelope(U64, U64, U64, Put(LONG, LONG, U64, False)),
    "delete-one": Envelope(1, 1, 1, Delete(b"a")),
    "delete-empty-end": Envelope(1, 1, 1, Delete(b"a", b"")),
    "delete-range": Envelope(1, 1, 1, Delete(b"a", b"\x00")),
    "txn-empty": Envelope(4, 5, 6, Txn()),
    "txn-nested": Envelope(
        7,
        8,
        9,
        Txn(
            EVERY_COMPARE,
            (
                Put(b"k", b"w", 3, True),
                Range(b"a", b"z", 3),
                Range(b"", None, U32),
                Delete(b"k", None),
            ),
            (Delete(b"k", b""), Put(b"", b""), Range(b"r", b"")),
        ),
    ),
    "txn-compare-zero": Envelope(
        1, 1, 1, Txn((Compare(b"", CompareTarget.LEASE, CompareOp.EQUAL, 0),))
    ),
    "lease-grant": Envelope(1, 1, 1, LeaseGrant(5000)),
    "lease-grant-max": Envelope(1, 1, 1, LeaseGrant(U64, U64)),
    "owned-lease-grant": Envelope(1, 1, 1, OwnedLeaseGrant(10_000, 42, "team-a")),
    "owned-lease-grant-unicode": Envelope(1, 1, 1, OwnedLeaseGrant(0, 0, "nämespace-☃")),
    "lease-keep-alive": Envelope(2, 3, 4, LeaseKeepAlive(U64)),
    "lease-revoke": Envelope(2, 3, 4, LeaseRevoke(0)),
    "expire-leases": Envelope(0, 0, 123456789, ExpireLeases()),
    "expire-lease-ids-empty": Envelope(0, 0, 5, ExpireLeaseIds(())),
    "expire-lease-ids": Envelope(0, 0, 5, ExpireLeaseIds((0, 1, 7, U64))),
    "lock-acquire": Envelope(0, 0, 0, LockAcquire("L", 4, 2, 100, 9)),
    "lock-acquire-defaults": Envelope(1, 2, 3, LockAcquire("", 0)),
    "lock-acquire-max": Envelope(1, 2, 3, LockAcquire("ünï", U64, U32, U64, U64)),
    "lock-release": Envelope(1, 2, 3, LockRelease("L", 4)),
    "campaign": Envelope(1, 2, 3, Campaign("e", 7, b"me")),
    "campaign-empty": Envelope(1, 2, 3, Campaign("", 0, b"")),
    "proclaim": Envelope(1, 2, 3, Proclaim("e", 7, LONG)),
    "resign": Envelope(1, 2, 3, Resign("e", U64)),
    "sequence-create": Envelope(1, 2, 3, SequenceCreate("s")),
    "sequence-create-edges": Envelope(1, 2, 3, SequenceCreate("s", I64_MIN, I64_MAX)),
    "sequence-create-negative": Envelope(1, 2, 3, SequenceCreate("s", -1, -5)),
    "sequence-next": Envelope(1, 2, 3, SequenceNext("s")),
    "sequence-next-max": Envelope(1, 2, 3, SequenceNext("s", U32)),
    "member-upsert": Envelope(
        1, 2, 3, MemberUpsert(7, "m-0", "https://10.0.0.1:2380", "https://10.0.0.1:2379")
    ),
    "member-upsert-empty": Envelope(1, 2, 3, MemberUpsert(U64, "", "", "")),
    "member-remove": Envelope(1, 2, 3, MemberRemove(7)),
    "member-readmit": Envelope(1, 2, 3, MemberReadmit(U64)),
    "join-token-add": Envelope(1, 2, 3, JoinTokenAdd("abc123", bytes(range(32)), 1_700_000_000)),
    "join-token-revoke": Envelope(1, 2, 3, JoinTokenRevoke("abc123", U64)),
    "sealing-key-add": Envelope(
        1, 2, 3, SealingKeyAdd(b"\x01" * 8, 99, b"der" * 20, b"-----BEGIN-----\n", b"\x02" * 8)
    ),
    "sealing-key-add-first": Envelope(1, 2, 3, SealingKeyAdd(b"", 0, b"", b"")),
    "noop": Envelope(9, 9, 9, Noop()),
}


def _malformed() -> dict[str, bytes]:
    """Malformed entries, each derived from a case by one edit; their messages are pinned."""
    out: dict[str, bytes] = {}
    noop = bytearray(CASES["noop"].encode())
    for tag in (0, 16, 99, 255):
        noop[25] = tag
        out[f"unknown-command-tag-{tag}"] = bytes(noop)
    out["unknown-version"] = b"\x02" + CASES["noop"].encode()[1:]
    out["empty"] = b""
    for name, env in CASES.items():
        data = env.encode()
        for cut in sorted({0, 1, 24, 25, 26, len(data) // 2, len(data) - 1}):
            if cut < len(data):
                out[f"truncated-{name}-{cut}"] = data[:cut]
        out[f"trailing-{name}"] = data + b"\x00"
    nested = bytearray(CASES["txn-nested"].encode())
    success_op_at = 25 + 1 + 4 + sum(len(_compare_bytes(c)) for c in EVERY_COMPARE) + 4
    for tag in (0, Txn.TAG, 77):
        nested[success_op_at] = tag
        out[f"unknown-txn-op-{tag}"] = bytes(nested)
    one = bytearray(CASES["txn-compare-zero"].encode())
    target_at = 25 + 1 + 4 + 4 + 0
    for at, value, label in ((target_at, 9, "target"), (target_at + 1, 0, "op")):
        bad = bytearray(one)
        bad[at] = value
        out[f"bad-compare-{label}"] = bytes(bad)
    put = bytearray(CASES["put"].encode())
    put[-1] = 2
    out["bad-boolean"] = bytes(put)
    release = bytearray(CASES["lock-release"].encode())
    release[30] = 0xFF
    out["bad-utf8"] = bytes(release)
    ids = bytearray(CASES["expire-lease-ids"].encode())
    ids[30:38], ids[38:46] = ids[38:46], ids[30:38]
    out["lease-ids-not-ascending"] = bytes(ids)
    dup = CASES["expire-lease-ids"].encode()
    out["lease-ids-duplicate"] = dup[:30] + dup[30:38] + dup[30:38] + dup[46:]
    delete = bytearray(CASES["delete-range"].encode())
    delete[-6] = 2  # the range_end presence byte
    out["bad-presence"] = bytes(delete)
    txn = bytearray(CASES["txn-empty"].encode())
    txn[26:30] = b"\xff\xff\xff\xff"
    out["absurd-count"] = bytes(txn)
    return out


def _compare_bytes(c: Compare) -> bytes:
    one = Envelope(0, 0, 0, Txn((c,))).encode()
    return one[25 + 1 + 4 : -8]


def test_every_command_class_has_a_vector() -> None:
    covered = {type(env.command) for env in CASES.values()}
    assert covered == set(COMMAND_TYPES)
    ops = {
        type(op)
        for env in CASES.values()
        if isinstance(env.command, Txn)
        for op in env.command.success + env.command.failure
    }
    assert ops == {Put, Delete, Range}
    assert {c.target for c in EVERY_COMPARE} == set(CompareTarget)


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoding_matches_the_pinned_bytes(name: str) -> None:
    assert CASES[name].encode().hex() == VECTORS["commands"][name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned_bytes_decode_to_the_case(name: str) -> None:
    assert Envelope.decode(bytes.fromhex(VECTORS["commands"][name])) == CASES[name]


def test_the_fixture_has_no_case_the_test_lost() -> None:
    assert set(VECTORS["commands"]) == set(CASES)
    assert set(VECTORS["errors"]) == set(_malformed())


@pytest.mark.parametrize("name", sorted(_malformed()))
def test_malformed_entries_get_the_pinned_message(name: str) -> None:
    pinned = VECTORS["errors"][name]
    data = bytes.fromhex(pinned["hex"])
    assert _malformed()[name] == data
    with pytest.raises(CommandDecodeError) as caught:
        Envelope.decode(data)
    assert str(caught.value) == pinned["message"]
