"""Fuzzing the framed protocol: the pure decoder with many examples, then a real TLS
listener with a few dozen attacks, each checked for its outcome (the connection closes with
a logged reason, or the frames are delivered) and for the listener still serving another
peer afterwards. Bounded example counts keep this to seconds."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.runtime.frames import (
    HEADER_BYTES,
    MAGIC,
    MAX_FRAME_BYTES,
    VERSION,
    FrameDecoder,
    FrameError,
    FrameType,
    decode_hello,
    decode_message,
    encode_hello,
    encode_message,
    frame,
)
from tests.runtime.frame_kit import (
    CLUSTER,
    Member,
    closed_by_peer,
    heartbeat,
    member_ssl,
    raw_client,
    wait_for,
)

kinds = st.sampled_from(list(FrameType))
payloads = st.binary(max_size=300)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.tuples(kinds, payloads), max_size=8), cuts=st.lists(st.integers(0, 4000)))
def test_frames_split_anywhere_decode_to_what_was_sent(
    frames: list[tuple[FrameType, bytes]], cuts: list[int]
) -> None:
    data = b"".join(frame(k, p) for k, p in frames)
    decoder = FrameDecoder()
    out = [f for chunk in _chunks(data, cuts) for f in decoder.feed(chunk)]
    assert out == frames
    assert decoder.buffered == 0


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_garbage_is_a_frame_error_or_frames_never_anything_else(
    data: bytes, cuts: list[int]
) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in _chunks(data, cuts):
            for kind, payload in decoder.feed(chunk):
                try:
                    if kind is FrameType.HELLO:
                        decode_hello(payload)
                    else:
                        decode_message(payload)
                except FrameError:
                    pass
    except FrameError:
        pass


@given(version=st.integers(0, 255).filter(lambda v: v != VERSION))
def test_another_version_is_refused_by_name(version: int) -> None:
    header = struct.pack(">BBBI", MAGIC, version, FrameType.RAFT, 0)
    with pytest.raises(FrameError, match="version"):
        FrameDecoder().feed(header)


@given(length=st.integers(MAX_FRAME_BYTES + 1, 2**32 - 1))
def test_a_frame_over_the_limit_is_refused_from_its_header_alone(length: int) -> None:
    header = struct.pack(">BBBI", MAGIC, VERSION, FrameType.RAFT, length)
    with pytest.raises(FrameError, match="over the"):
        FrameDecoder().feed(header)  # refused before a byte of the payload is held


# --- a real listener under attack ----------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    what: str
    data: bytes
    refused: bool
    """The listener must close the connection (and count a refusal)."""
    delivered: int
    """Messages the listener must deliver from it."""


HELLO = encode_hello(1, CLUSTER)


def _message(n: int) -> bytes:
    return encode_message(heartbeat(1, 2, n))


attacks = st.one_of(
    st.binary(min_size=1, max_size=200)
    .filter(lambda b: b[0] != MAGIC)
    .map(lambda b: Attack("garbage instead of a hello", b, True, 0)),
    st.binary(min_size=1, max_size=200)
    .filter(lambda b: b[0] != MAGIC)
    .map(lambda b: Attack("garbage after the hello", HELLO + b, True, 0)),
    st.integers(0, 255)
    .filter(lambda v: v != VERSION)
    .map(lambda v: Attack("a bad version", HELLO + struct.pack(">BBBI", MAGIC, v, 2, 0), True, 0)),
    st.integers(MAX_FRAME_BYTES + 1, 2**32 - 1).map(
        lambda n: Attack("oversized", HELLO + struct.pack(">BBBI", MAGIC, VERSION, 2, n), True, 0)
    ),
    st.integers(1, 3).map(lambda k: Attack("a replayed hello", HELLO * (k + 1), True, 0)),
    st.sampled_from([2, 3, 9]).map(
        lambda m: Attack("a hello naming another member", encode_hello(m, CLUSTER), True, 0)
    ),
    st.integers(1, len(_message(1)) - 1).map(
        lambda cut: Attack("a truncated frame", HELLO + _message(1)[:cut], False, 0)
    ),
    st.integers(1, HEADER_BYTES - 1).map(
        lambda cut: Attack("a truncated hello", HELLO[:cut], False, 0)
    ),
    st.integers(1, 4).map(lambda k: Attack("duplicated frames", HELLO + _message(1) * k, False, k)),
    st.binary(max_size=40).map(
        lambda b: Attack(
            "a frame that is not a Raft message",
            HELLO + frame(FrameType.RAFT, b"\xff" + b),
            False,
            0,
        )
    ),
)


class _Records(logging.Handler):
    """Records what is logged at `level` or above (an exception escaping a connection's task
    is logged by asyncio at ERROR)."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attack=attacks)
def test_a_listener_under_attack_closes_that_connection_and_serves_the_others(
    attack: Attack,
) -> None:
    errors = _Records(logging.ERROR)
    logging.getLogger().addHandler(errors)
    try:
        asyncio.run(_attack(attack))
    finally:
        logging.getLogger().removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == []


async def _attack(attack: Attack) -> None:
    target, other = Member(2), Member(3)
    await target.listen()
    other.transport.set_peers({2: target.address})
    handler = _Records(logging.WARNING)
    logging.getLogger("concord.frames").addHandler(handler)
    try:
        await wait_for(lambda: other.transport.stats()[2].connected)
        reader, writer = await raw_client(target.port, member_ssl(1))
        writer.write(attack.data)
        if attack.refused:
            assert await closed_by_peer(reader), attack.what
            assert target.transport.refused_connections == 1, attack.what
            assert any("closing the Raft connection" in r.getMessage() for r in handler.records), (
                attack.what
            )
        else:
            await wait_for(lambda: len(target.inbox) == attack.delivered)
            assert not await closed_by_peer(reader, timeout_s=0.05), attack.what
            assert target.transport.refused_connections == 0, attack.what
        writer.transport.abort()
        assert all(m.frm == 1 and m.commit == 1 for m in target.inbox)
        # Never a wedge: the other peer is still delivered to.
        other.transport.send(heartbeat(3, 2, 42))
        await wait_for(lambda: any(m.frm == 3 and m.commit == 42 for m in target.inbox))
        assert len(target.inbox) == attack.delivered + 1
    finally:
        logging.getLogger("concord.frames").removeHandler(handler)
        await other.close()
        await target.close()
