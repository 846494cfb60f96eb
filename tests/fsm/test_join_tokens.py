"""The replicated join-token table: add, revoke, refusals, and the snapshot image (v2, and
v1 images written before the table existed)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from coordinator.fsm import (
    ErrorCode,
    JoinTokenAdd,
    JoinTokenInfo,
    JoinTokenRevoke,
    Put,
    RevisionResult,
    StateMachine,
)
from coordinator.fsm.join_tokens import TOKENS_MAX
from coordinator.fsm.machine import SNAPSHOT_MAGIC

from .support import Driver

IMAGES = Path(__file__).parent / "images"


@pytest.fixture
def d() -> Driver:
    return Driver()


def digest(n: int) -> bytes:
    return hashlib.sha256(f"secret-{n}".encode()).digest()


def test_tokens_are_added_listed_and_revoked_once(d: Driver) -> None:
    d.ok(Put(b"k", b"v"))
    revision = d.m.revision
    assert d.ok(JoinTokenAdd("aaaa11112222", digest(1), 1_000)) == RevisionResult(revision)
    d.ok(JoinTokenAdd("bbbb11112222", digest(2), 2_000))
    assert d.m.join_tokens() == (
        JoinTokenInfo("aaaa11112222", digest(1), 1_000),
        JoinTokenInfo("bbbb11112222", digest(2), 2_000),
    )
    d.ok(JoinTokenRevoke("aaaa11112222", 5_000))
    d.ok(JoinTokenRevoke("aaaa11112222", 9_000))  # level-based: keeps the first time
    assert d.m.join_tokens()[0].revoked_ms == 5_000
    assert d.m.join_tokens()[1].revoked_ms == 0
    # Not part of the keyspace: no revision, no watch event, nothing in a range.
    assert d.m.revision == revision
    assert [e.key for e in d.m.events_since(revision)] == [b"k"]
    assert [kv.key for kv in d.m.range(b"\0", b"\0").kvs] == [b"k"]


def test_bad_tokens_are_refused_and_change_nothing(d: Driver) -> None:
    d.ok(JoinTokenAdd("aaaa11112222", digest(1), 1))
    d.fails(JoinTokenAdd("aaaa11112222", digest(2), 1), ErrorCode.ALREADY_EXISTS)
    d.fails(JoinTokenAdd("cccc11112222", digest(1), 1), ErrorCode.ALREADY_EXISTS)
    d.fails(JoinTokenAdd("cccc11112222", b"short", 1), ErrorCode.INVALID_ARGUMENT)
    d.fails(JoinTokenAdd("", digest(3), 1), ErrorCode.INVALID_ARGUMENT)
    d.fails(JoinTokenAdd("has space", digest(3), 1), ErrorCode.INVALID_ARGUMENT)
    d.fails(JoinTokenAdd("x" * 65, digest(3), 1), ErrorCode.INVALID_ARGUMENT)
    err = d.fails(JoinTokenRevoke("nope", 1), ErrorCode.NOT_FOUND)
    assert "join-token list" in err.message
    assert len(d.m.join_tokens()) == 1


def test_the_table_is_bounded() -> None:
    m = StateMachine()
    d = Driver(m)
    for n in range(TOKENS_MAX):
        d.ok(JoinTokenAdd(f"t{n}", digest(n), n))
    err = d.fails(JoinTokenAdd("onemore", digest(-1), 0), ErrorCode.RESOURCE_EXHAUSTED)
    assert f"at most {TOKENS_MAX}" in err.message


def test_tokens_survive_snapshot_and_restore_in_order(d: Driver) -> None:
    for n in (3, 1, 2):
        d.ok(JoinTokenAdd(f"tok{n}", digest(n), n * 100))
    d.ok(JoinTokenRevoke("tok1", 777))
    image = d.m.snapshot()
    assert image[len(SNAPSHOT_MAGIC)] >= 2  # the version with the join-token table
    restored = StateMachine()
    restored.restore(image)
    assert restored.join_tokens() == d.m.join_tokens()
    assert [t.id for t in restored.join_tokens()] == ["tok3", "tok1", "tok2"]
    assert restored.snapshot() == image
    # ... and the restored machine goes on applying the same way (sessionless commands, so
    # that the two drivers' own session bookkeeping does not differ).
    d2 = Driver(restored)
    for driver in (d, d2):
        driver.fails(JoinTokenAdd("tok2", digest(9), 1), ErrorCode.ALREADY_EXISTS, client=0)
        driver.ok(JoinTokenRevoke("tok2", 888), client=0)
    assert restored.snapshot() == d.m.snapshot()


def test_images_of_versions_1_to_5_are_still_read(d: Driver) -> None:
    """Images written before join tokens existed (version 1), before removed member ids
    were kept (version 2), before sealing keys (version 3), before lease owners (version 4)
    restore with empty tables; every one, and version 5 (the KV key by key rather than in
    columns), is written again as the current version. The version 5 image is the one the
    version 5 build wrote for this state (tests/fsm/images/README.md)."""
    d.ok(Put(b"k", b"v"))
    v5 = (IMAGES / "v5-one-key.bin").read_bytes()
    assert v5[len(SNAPSHOT_MAGIC)] == 5
    sessions = d.m._sessions.encode()  # the image's last field
    blob = struct.pack(">I", len(sessions)) + sessions
    empty = b"\0\0\0\0"
    # no tokens, no removed ids, no sealing keys, no lease owners, sessions
    tail = empty * 4 + blob
    assert v5.endswith(tail)
    head = v5[: -len(tail)]

    def as_version(version: int, rest: bytes) -> bytes:
        at = len(SNAPSHOT_MAGIC)
        return head[:at] + bytes([version]) + head[at + 1 :] + rest

    olds = (
        as_version(1, blob),
        as_version(2, empty + blob),
        as_version(3, empty * 2 + blob),
        as_version(4, empty * 3 + blob),
        v5,
    )
    for old_image in olds:
        old = StateMachine()
        old.restore(old_image)
        assert old.get(b"k") is not None and old.join_tokens() == ()
        assert old.removed_member_ids() == frozenset() and old.sealing_keys() == ()
        assert old.snapshot() == d.m.snapshot()  # rewritten as the current version
