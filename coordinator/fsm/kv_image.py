"""The key-value store's part of a snapshot image: the keys in order, as columns.

Since image version 6 the store is written column by column rather than key by key:

    u32 n
    n x u32 key lengths      n x u32 value lengths
    the n keys, back to back    the n values, back to back
    n x u64 create_revision
    u32 m, then m x u32 positions and m x u64 mod_revisions: the keys whose mod_revision is
        not their create_revision (ascending positions); every other key was put once
    n x u64 version          n x u64 lease

(big-endian, as the rest of the image). Why: a member decodes the whole store on every
restart and on every snapshot it installs, and encodes it for every snapshot it takes (on a
thread, but holding the GIL while it runs). Key by key, that is an interpreted loop step per
key: 1.45 s to decode a million keys and 0.93 s to encode them here. A column converts with one
C loop (`array`, `itertools`, `map`), and a whole key is assembled without a Python-level call
of its own.

The keys are strictly ascending, and the decoder checks it: one order means one image per
state (images are compared byte for byte), and it rules out a key stored twice. Images of
versions 1 to 5 (one record per key: blob key, blob value, four u64s) are read by `read_rows`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, islice, repeat

from ._wire import Reader, Writer
from .results import KV_NUMBERS, KeyValue

_FIELDS = tuple(operator.itemgetter(i) for i in range(len(KeyValue._fields)))
_KEY, _VALUE, _CREATE, _MOD, _VERSION, _LEASE = _FIELDS


def write_columns(w: Writer, values: Sequence[KeyValue]) -> None:
    """`values` (in key order) as `read_columns` reads them."""
    w.u32(len(values))
    w.u32_column(map(len, map(_KEY, values)))
    w.u32_column(map(len, map(_VALUE, values)))
    w.raw_all(map(_KEY, values))
    w.raw_all(map(_VALUE, values))
    creates = list(map(_CREATE, values))
    w.u64_column(creates)
    changed = list(compress(range(len(values)), map(operator.ne, map(_MOD, values), creates)))
    w.u32(len(changed))
    w.u32_column(changed)
    w.u64_column(map(_MOD, map(values.__getitem__, changed)))
    for field in (_VERSION, _LEASE):
        w.u64_column(map(field, values))


@dataclass(frozen=True, slots=True)
class Columns:
    """What `read_columns` read: the keys in order, their records, and the records of the
    keys that carry a lease (the columns give all three without another pass per key)."""

    keys: list[bytes]
    records: list[KeyValue]
    leased: list[KeyValue]

    def by_key(self) -> dict[bytes, KeyValue]:
        return dict(zip(self.keys, self.records, strict=True))


def read_columns(r: Reader) -> Columns:
    """The store's keys, in order, from a version 6 image."""
    n = r.count()
    key_lengths, value_lengths = r.u32_column(n), r.u32_column(n)
    keys, values = r.blob_column(key_lengths), r.blob_column(value_lengths)
    creates = r.u64_column(n).tolist()
    m = r.count(n)
    positions, changed = r.u32_column(m).tolist(), r.u64_column(m).tolist()
    versions, leases = r.u64_column(n), r.u64_column(n)
    if not all(map(operator.lt, keys, islice(keys, 1, None))):
        raise r.fail("the keys are not in strictly ascending order")
    if not all(map(operator.lt, positions, islice(positions, 1, None))) or (
        positions and positions[-1] >= n
    ):
        raise r.fail("the changed mod_revisions' positions are not ascending within the keys")
    if not all(map(operator.gt, changed, map(creates.__getitem__, positions))):
        raise r.fail("a key's mod_revision is not above its create_revision")
    if 0 in versions:
        raise r.fail("a key has version 0")
    # A key put once (the common case) keeps one int object for both revisions (32 bytes a
    # key), and the list of them is a copy of pointers: only changed keys cost a step here.
    mods = creates.copy()
    for i, mod in zip(positions, changed, strict=True):
        mods[i] = mod
    rows = zip(keys, values, creates, mods, versions, leases, strict=True)
    records = list(map(tuple.__new__, repeat(KeyValue), rows))
    return Columns(keys, records, list(compress(records, leases)))


def read_rows(r: Reader) -> dict[bytes, KeyValue]:
    """The store's keys from an image of versions 1 to 5, one record per key (written in key
    order, but these versions did not require it: the caller sorts)."""
    data: dict[bytes, KeyValue] = {}
    n = r.count()
    for key, value, (create, modified, version, lease) in r.blob_pairs(n, KV_NUMBERS):
        mod = create if modified == create else modified
        kv = KeyValue(key, value, create, mod, version, lease)
        if data.setdefault(key, kv) is not kv:
            raise r.fail(f"key {key!r} appears twice")
    return data


def leased(kvs: Iterable[KeyValue]) -> Iterator[KeyValue]:
    """The keys attached to a lease (found by a C loop: most keys have none)."""
    kvs = list(kvs)
    return compress(kvs, map(_LEASE, kvs))
