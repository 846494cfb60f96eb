"""The store's columns in a snapshot image (coordinator/fsm/kv_image.py): any set of keys
round-trips exactly, the revisions of a key put once stay one object, and every way the
columns can be wrong is refused with a message rather than decoded into a wrong store."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.fsm._wire import DecodeError, Reader, Writer
from coordinator.fsm.kv_image import read_columns, read_rows, write_columns
from coordinator.fsm.results import KeyValue

U64 = st.integers(0, 2**64 - 1)


@st.composite
def stores(draw: st.DrawFn) -> list[KeyValue]:
    keys = sorted(draw(st.sets(st.binary(min_size=1, max_size=40), max_size=30)))
    out = []
    for key in keys:
        create = draw(U64)
        mod = draw(st.one_of(st.just(create), st.integers(create, 2**64 - 1)))
        version = draw(st.integers(1, 2**64 - 1))
        out.append(KeyValue(key, draw(st.binary(max_size=300)), create, mod, version, draw(U64)))
    return out


def encode(kvs: list[KeyValue]) -> bytes:
    w = Writer()
    write_columns(w, kvs)
    return w.getvalue()


def decode(data: bytes) -> list[KeyValue]:
    r = Reader(data, "kv columns")
    read = read_columns(r)
    r.finish()
    # The keys and the leased records come with the records, consistent with them.
    assert read.keys == [kv.key for kv in read.records]
    assert read.leased == [kv for kv in read.records if kv.lease]
    assert read.by_key() == {kv.key: kv for kv in read.records}
    return read.records


@settings(max_examples=200, deadline=None)
@given(stores())
def test_any_store_round_trips_exactly(kvs: list[KeyValue]) -> None:
    assert decode(encode(kvs)) == kvs


def test_the_layout_is_columns_big_endian() -> None:
    kvs = [KeyValue(b"a", b"xy", 1, 1, 1, 0), KeyValue(b"bc", b"", 2, 5, 3, 7)]
    assert encode(kvs) == (
        struct.pack(">I", 2)
        + struct.pack(">II", 1, 2)  # key lengths
        + struct.pack(">II", 2, 0)  # value lengths
        + b"abc"
        + b"xy"
        + struct.pack(">QQ", 1, 2)  # create
        + struct.pack(">I", 1)  # one key's mod differs from its create: at position 1, 5
        + struct.pack(">I", 1)
        + struct.pack(">Q", 5)
        + struct.pack(">QQ", 1, 3)  # version
        + struct.pack(">QQ", 0, 7)  # lease
    )


def test_a_key_put_once_keeps_one_object_for_both_revisions() -> None:
    big = 10**12  # above the small-int cache, so identity means sharing
    (kv,) = decode(encode([KeyValue(b"k", b"v", big, big, 1, 0)]))
    assert kv.create_revision is kv.mod_revision
    (kv,) = decode(encode([KeyValue(b"k", b"v", big, big + 1, 2, 0)]))
    assert kv.mod_revision == big + 1


@pytest.mark.parametrize(
    ("kvs", "message"),
    [
        ([KeyValue(b"b", b"", 1, 1, 1, 0), KeyValue(b"a", b"", 2, 2, 1, 0)], "ascending"),
        ([KeyValue(b"a", b"", 1, 1, 1, 0), KeyValue(b"a", b"", 2, 2, 1, 0)], "ascending"),
        ([KeyValue(b"a", b"", 5, 4, 1, 0)], "mod_revision is not above its create_revision"),
        ([KeyValue(b"a", b"", 1, 1, 0, 0)], "version 0"),
    ],
)
def test_a_store_that_cannot_be_is_refused(kvs: list[KeyValue], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(encode(kvs))


def test_changed_positions_out_of_order_or_past_the_keys_are_refused() -> None:
    kvs = [KeyValue(b"a", b"", 1, 2, 2, 0), KeyValue(b"b", b"", 3, 4, 2, 0)]
    data = encode(kvs)
    at = data.index(struct.pack(">III", 2, 0, 1))  # m = 2, positions 0 and 1
    for positions in ((1, 0), (0, 0), (0, 2)):
        bad = data[:at] + struct.pack(">III", 2, *positions) + data[at + 12 :]
        with pytest.raises(DecodeError, match="positions are not ascending"):
            decode(bad)


@pytest.mark.parametrize("read", ["bytes", "view"])
def test_every_truncation_is_refused(read: str) -> None:
    decoder = decode if read == "bytes" else decode_view
    data = encode([KeyValue(b"a", b"xy", 1, 1, 1, 0), KeyValue(b"bc", b"z", 2, 5, 3, 7)])
    for size in range(len(data)):
        with pytest.raises(DecodeError):
            decoder(data[:size])


def test_a_length_past_the_end_is_refused_without_reading_past_it() -> None:
    data = struct.pack(">I", 1) + struct.pack(">II", 1_000_000, 0) + b"k" + b"\0" * 32
    with pytest.raises(DecodeError, match="truncated"):
        decode(data)


def test_the_old_rows_are_still_read() -> None:
    w = Writer()
    w.u32(2)
    for kv in (KeyValue(b"b", b"2", 3, 4, 2, 9), KeyValue(b"a", b"1", 1, 1, 1, 0)):
        kv._write(w)
    r = Reader(w.getvalue(), "kv rows")
    assert read_rows(r) == {
        b"b": KeyValue(b"b", b"2", 3, 4, 2, 9),
        b"a": KeyValue(b"a", b"1", 1, 1, 1, 0),
    }
    r.finish()


def decode_view(data: bytes) -> list[KeyValue]:
    r = Reader(memoryview(bytearray(b"x" + data)).toreadonly()[1:], "kv columns")
    records = read_columns(r).records
    r.finish()
    return records


@settings(max_examples=100, deadline=None)
@given(stores())
def test_any_store_round_trips_through_a_view(kvs: list[KeyValue]) -> None:
    decoded = decode_view(encode(kvs))
    assert decoded == kvs
    assert all(type(kv.key) is bytes and type(kv.value) is bytes for kv in decoded)


def test_a_view_is_cut_in_groups_small_and_large() -> None:
    """Blobs are cut from a view in groups of 1024, copied to bytes first unless the group
    exceeds 1 MiB: here one group too large to copy, one mixed and a short last one."""
    kvs = [
        KeyValue(b"k%06d" % i, bytes([i % 251]) * (1100 if i < 1500 else i % 7), i + 1, i + 1, 1, 0)
        for i in range(2500)
    ]
    assert decode_view(encode(kvs)) == kvs == decode(encode(kvs))


def test_the_old_rows_are_still_read_from_a_view() -> None:
    w = Writer()
    w.u32(1)
    KeyValue(b"a", b"1", 1, 1, 1, 0)._write(w)
    r = Reader(memoryview(w.getvalue()), "kv rows")
    rows = read_rows(r)
    r.finish()
    assert rows == {b"a": KeyValue(b"a", b"1", 1, 1, 1, 0)} and type(rows[b"a"].key) is bytes


def test_raw_all_writes_what_one_join_would() -> None:
    values = [b"", b"ab"] * 5000 + [b""] * 9000 + [b"end"]
    w = Writer()
    w.raw_all(iter(values))
    assert w.getvalue() == b"".join(values)
