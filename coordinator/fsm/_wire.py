"""Binary codec primitives shared by commands, results and snapshots.

Every replicated byte the state machine reads (a command in a log entry, a saved response in
the session table, a snapshot image) goes through `Writer` and `Reader`: big-endian fixed-width
integers, length-prefixed byte strings, explicit presence bytes for optional fields. Nothing is
self-describing and nothing is pickled, so the only code that can run while decoding is this
module, and every layout change must bump a version byte that the decoders check.

`Reader` never trusts a length: every read is bounds-checked and raises the caller's
`DecodeError` subclass with the offset, so garbage is rejected with a message rather than an
`IndexError`, a `struct.error` or a silently truncated value. `Reader.finish()` rejects
trailing bytes, so two different encodings never decode to the same value.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice, pairwise, starmap

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_U32_FROM = _U32.unpack_from
_U64_FROM = _U64.unpack_from

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

# Columns (`Writer.u32_column` and friends) go through `array`, whose items are in the
# machine's byte order: swapped to and from the image's big-endian where that differs.
_U32_CODE = next(code for code in "IL" if array(code).itemsize == 4)
_U64_CODE = next(code for code in "LQ" if array(code).itemsize == 8)
_SWAP = sys.byteorder == "little"

_JOIN_BATCH = 4096
"""How many byte strings `Writer.raw_all` joins at a time."""
_BLOB_GROUP = 1024
_BLOB_GROUP_BYTES_MAX = 1 << 20
"""`Reader.blob_column` cuts a view's blobs `_BLOB_GROUP` at a time from a bytes copy of
them, if they take at most this much."""


class DecodeError(ValueError):
    """Bytes that are not a valid encoding (truncated, unknown tag or version, bad UTF-8)."""


def invariant(condition: bool, message: str) -> None:
    """An internal consistency check that `python -O` does not strip (unlike `assert`)."""
    if not condition:
        raise AssertionError(f"fsm invariant violated: {message}")


class Writer:
    """Appends fields to one growing buffer.

    A buffer rather than a list of parts joined at the end: a snapshot image of a million
    keys would otherwise hold millions of small bytes objects at once, and freeing them
    after the join leaves the allocator's pools fragmented by whatever the member allocated
    meanwhile (the image is encoded on a thread while the member keeps applying), so the
    process would keep that memory. Each field here is a temporary freed at once."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def u8(self, value: int) -> None:
        self._buf += _U8.pack(value)

    def u16(self, value: int) -> None:
        self._buf += _U16.pack(value)

    def u32(self, value: int) -> None:
        self._buf += _U32.pack(value)

    def u64(self, value: int) -> None:
        self._buf += _U64.pack(value)

    def i64(self, value: int) -> None:
        self._buf += _I64.pack(value)

    def u64s(self, codec: struct.Struct, *values: int) -> None:
        """Several fields in one `codec` (a Struct of big-endian fixed-width integers): the
        same bytes as writing them one by one, for hot loops."""
        self._buf += codec.pack(*values)

    def boolean(self, value: bool) -> None:
        self._buf += b"\x01" if value else b"\x00"

    def blob(self, value: bytes) -> None:
        """A u32 length, then the bytes."""
        buf = self._buf
        buf += _U32.pack(len(value))
        buf += value

    def text(self, value: str) -> None:
        self.blob(value.encode("utf-8"))

    def opt_blob(self, value: bytes | None) -> None:
        """A presence byte (0 absent, 1 present), then the blob if present: b"" != None."""
        if value is None:
            self.u8(0)
        else:
            self.u8(1)
            self.blob(value)

    def raw(self, value: bytes) -> None:
        self._buf += value

    def raw_all(self, values: Iterable[bytes]) -> None:
        """The byte strings back to back, as `raw(b"".join(values))` but joined a batch at a
        time: the values of a large image's KV are most of the image, and joined whole
        they would be held twice for a moment."""
        values = iter(values)
        while batch := list(islice(values, _JOIN_BATCH)):
            self._buf += b"".join(batch)

    def u32_column(self, values: Iterable[int]) -> None:
        """Big-endian u32s back to back, no count (the reader knows it): converted by one
        C loop, for the columns of a snapshot image."""
        self._column(array(_U32_CODE, values))

    def u64_column(self, values: Iterable[int]) -> None:
        self._column(array(_U64_CODE, values))

    def _column(self, column: array[int]) -> None:
        if _SWAP:
            column.byteswap()
        self._buf += column

    def getvalue(self) -> bytes:
        """A copy of what was written (the writer can go on)."""
        return bytes(self._buf)

    def view(self) -> memoryview:
        """What was written, without the copy `getvalue` makes: for a snapshot image, which
        can be tens of MB. The buffer is then exported and cannot grow, so the writer is
        done (a further write raises `BufferError`)."""
        return memoryview(self._buf).toreadonly()


class Reader:
    """Reads what `Writer` wrote; every failure raises `error` (a `DecodeError` subclass).

    The data may be a memoryview (a snapshot image, which is read in place rather than
    copied); what the reader returns is bytes either way, cut from the view. The caller
    must not change the viewed buffer while reading."""

    __slots__ = ("_data", "_error", "_pos", "_what")

    def __init__(
        self, data: bytes | memoryview, what: str, error: type[DecodeError] = DecodeError
    ) -> None:
        self._data: bytes | memoryview = data if isinstance(data, bytes) else data.cast("B")
        self._pos = 0
        self._what = what
        self._error = error

    def fail(self, reason: str) -> DecodeError:
        """The error to raise for `reason`, naming what was being decoded and where."""
        return self._error(f"cannot decode {self._what} at byte {self._pos}: {reason}")

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise self._truncated(size)
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk if isinstance(chunk, bytes) else chunk.tobytes()

    def raw(self, size: int) -> bytes:
        return self._take(size)

    def _truncated(self, size: int) -> DecodeError:
        return self.fail(f"truncated (needs {size} more bytes, has {len(self._data) - self._pos})")

    # The integers are read in place (`unpack_from`) rather than through `_take`: no slice
    # is made, so decoding a log entry, which every member does for every command it
    # applies, allocates only the values it returns.

    def u8(self) -> int:
        pos = self._pos
        if pos >= len(self._data):
            raise self._truncated(1)
        self._pos = pos + 1
        return self._data[pos]

    def u16(self) -> int:
        value: int = _U16.unpack(self._take(2))[0]
        return value

    def u32(self) -> int:
        pos = self._pos
        if pos + 4 > len(self._data):
            raise self._truncated(4)
        self._pos = pos + 4
        value: int = _U32_FROM(self._data, pos)[0]
        return value

    def u64(self) -> int:
        pos = self._pos
        if pos + 8 > len(self._data):
            raise self._truncated(8)
        self._pos = pos + 8
        value: int = _U64_FROM(self._data, pos)[0]
        return value

    def i64(self) -> int:
        value: int = _I64.unpack(self._take(8))[0]
        return value

    def fixed(self, codec: struct.Struct) -> tuple[int, ...] | None:
        """`codec`'s fields (fixed-width integers) read at once, or None, reading nothing, if
        fewer bytes are left: the caller then reads them one by one, so that a truncation
        is reported at the field it cuts."""
        pos = self._pos
        if pos + codec.size > len(self._data):
            return None
        self._pos = pos + codec.size
        return codec.unpack_from(self._data, pos)

    def boolean(self) -> bool:
        value = self.u8()
        if value > 1:
            raise self.fail(f"boolean byte must be 0 or 1, got {value}")
        return value == 1

    def blob(self) -> bytes:
        """What `Writer.blob` wrote (`u32` then `_take`, inlined: every key and value)."""
        data, pos = self._data, self._pos
        if pos + 4 > len(data):
            raise self._truncated(4)
        start = pos + 4
        end = start + _U32_FROM(data, pos)[0]
        self._pos = start
        if end > len(data):
            raise self._truncated(end - start)
        self._pos = end
        blob = data[start:end]
        return blob if isinstance(blob, bytes) else blob.tobytes()

    def text(self) -> str:
        raw = self.blob()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"invalid UTF-8 ({exc.reason})") from None

    def opt_blob(self) -> bytes | None:
        present = self.u8()
        if present == 0:
            return None
        if present != 1:
            raise self.fail(f"presence byte must be 0 or 1, got {present}")
        return self.blob()

    def blob_pairs(
        self, n: int, codec: struct.Struct
    ) -> Iterator[tuple[bytes, bytes, tuple[int, ...]]]:
        """`n` records of (blob, blob, `codec`'s fields), as `blob` and `u64s` wrote them,
        decoded in one tight loop: the bulk of a snapshot image (its keys), where a call per
        field would dominate a restart. A generator, so each record's temporaries are freed
        before the next (no transient list of a million tuples to fragment the heap).

        Only images before version 6 hold such records, and a member reads one at most
        once (its next snapshot is newer): a view is copied to bytes first rather than
        slowing this loop with a conversion per blob."""
        if isinstance(self._data, memoryview):
            self._data = self._data.tobytes()
        data, end = self._data, len(self._data)
        length, numbers, size = _U32.unpack_from, codec.unpack_from, codec.size
        pos = self._pos
        for done in range(n):
            try:
                (n_first,) = length(data, pos)
                first = data[pos + 4 : pos + 4 + n_first]
                pos += 4 + n_first
                (n_second,) = length(data, pos)
                second = data[pos + 4 : pos + 4 + n_second]
                pos += 4 + n_second
                fields = numbers(data, pos)
            except struct.error:
                pos = end + 1
            pos += size
            if pos > end:  # a slice past the end comes back short rather than failing
                self._pos = end
                raise self.fail(f"truncated in record {done + 1} of {n}")
            self._pos = pos
            yield first, second, fields

    def u32_column(self, n: int) -> array[int]:
        """`n` big-endian u32s as `Writer.u32_column` wrote them."""
        return self._column(_U32_CODE, n)

    def u64_column(self, n: int) -> array[int]:
        return self._column(_U64_CODE, n)

    def _column(self, code: str, n: int) -> array[int]:
        column = array(code)
        size = n * column.itemsize
        if self._pos + size > len(self._data):
            raise self._truncated(size)
        column.frombytes(self._data[self._pos : self._pos + size])
        self._pos += size
        if _SWAP:
            column.byteswap()
        return column

    def blob_column(self, lengths: array[int]) -> list[bytes]:
        """The byte strings of `lengths`, stored back to back: cut from the image by C
        loops (no interpreted step per blob), each a bytes object of its own."""
        start, size = self._pos, sum(lengths)
        data = self._data
        if start + size > len(data):
            raise self._truncated(size)
        if isinstance(data, bytes):
            blobs = _cut(data, start, lengths)
        else:
            # From a view, a blob at a time would cost a memoryview object per blob: copy a
            # group of blobs to bytes at once and cut that, unless the group is large (then
            # a view per blob costs little next to the blob).
            blobs = []
            at = start
            for first in range(0, len(lengths), _BLOB_GROUP):
                group = lengths[first : first + _BLOB_GROUP]
                group_size = sum(group)
                if group_size <= _BLOB_GROUP_BYTES_MAX:
                    blobs += _cut(data[at : at + group_size].tobytes(), 0, group)
                else:
                    cuts = starmap(slice, pairwise(accumulate(group, initial=at)))
                    blobs += map(memoryview.tobytes, map(data.__getitem__, cuts))
                at += group_size
        self._pos = start + size
        return blobs

    def count(self, limit: int = U32_MAX) -> int:
        """A u32 element count, rejected if above `limit` or above the bytes left (every
        element takes at least one byte), so garbage cannot make a decoder loop 4 G times."""
        n = self.u32()
        if n > limit:
            raise self.fail(f"count {n} exceeds the limit of {limit}")
        if n > len(self._data) - self._pos:
            raise self.fail(f"count {n} exceeds the {len(self._data) - self._pos} bytes left")
        return n

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise self.fail(f"{len(self._data) - self._pos} trailing bytes")


def _cut(data: bytes, start: int, lengths: array[int]) -> list[bytes]:
    """The byte strings of `lengths`, back to back in `data` from `start`, by C loops."""
    cuts = starmap(slice, pairwise(accumulate(lengths, initial=start)))
    return list(map(data.__getitem__, cuts))
