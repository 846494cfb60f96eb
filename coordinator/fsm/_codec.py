"""Wire types declared on dataclass fields, and the codecs derived from them.

A command is declared once: a frozen dataclass whose fields carry their wire type in their
annotation (`lease: U64 = 0`, `key: Blob`). `@declared` reads those annotations when the
class is made (at import) and keeps one `Wire` per class: its fields in declaration order,
each through `_wire`'s `Writer`/`Reader`. Nothing is looked up per field, so decoding a log
entry (on the apply path) costs about what the hand-written readers it replaces did.

The wire types are the primitives (`U32`, `U64`, `I64`, `Bool`, `Blob`, `Text`, `OptBlob`)
and the combinators `list_of` (u32 count, then the items), `one_of` (u8 tag, then that
class's fields; the tag is the class's `TAG`), `enum_of` (an `IntEnum` in a u8) and
`checked` (a shape rule the decoder enforces, e.g. ascending ids). A field whose layout
depends on another field's value has a hand-written `Wire` instead (`Compare.value`).
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, ClassVar, Generic, Protocol, TypeVar

from ._wire import Reader, Writer

T = TypeVar("T")
_C = TypeVar("_C")
_E = TypeVar("_E", bound=enum.IntEnum)


@dataclass(frozen=True, slots=True)
class Wire(Generic[T]):
    """How one value of type T is written and read."""

    write: Callable[[Writer, T], None]
    read: Callable[[Reader], T]


U32_WIRE: Wire[int] = Wire(Writer.u32, Reader.u32)
U64_WIRE: Wire[int] = Wire(Writer.u64, Reader.u64)
I64_WIRE: Wire[int] = Wire(Writer.i64, Reader.i64)
BOOL_WIRE: Wire[bool] = Wire(Writer.boolean, Reader.boolean)
BLOB_WIRE: Wire[bytes] = Wire(Writer.blob, Reader.blob)
TEXT_WIRE: Wire[str] = Wire(Writer.text, Reader.text)
OPT_BLOB_WIRE: Wire[bytes | None] = Wire(Writer.opt_blob, Reader.opt_blob)

U32 = Annotated[int, U32_WIRE]
U64 = Annotated[int, U64_WIRE]
I64 = Annotated[int, I64_WIRE]
Bool = Annotated[bool, BOOL_WIRE]
Blob = Annotated[bytes, BLOB_WIRE]
Text = Annotated[str, TEXT_WIRE]
"""UTF-8 in a blob."""
OptBlob = Annotated[bytes | None, OPT_BLOB_WIRE]
"""A presence byte, then the blob if present: b"" and None are different values."""


def list_of(item: Wire[T]) -> Wire[tuple[T, ...]]:
    """A u32 count (bounded by the bytes left, see `Reader.count`), then the items."""
    write_item, read_item = item.write, item.read

    def write(w: Writer, values: tuple[T, ...]) -> None:
        w.u32(len(values))
        for value in values:
            write_item(w, value)

    def read(r: Reader) -> tuple[T, ...]:
        n = r.count()
        return tuple([read_item(r) for _ in range(n)]) if n else ()

    return Wire(write, read)


def checked(wire: Wire[T], holds: Callable[[T], bool], reason: str) -> Wire[T]:
    """`wire`, whose decoder also rejects a value for which `holds` is false, with `reason`
    (at the offset just after the value)."""
    inner = wire.read

    def read(r: Reader) -> T:
        value = inner(r)
        if not holds(value):
            raise r.fail(reason)
        return value

    return Wire(wire.write, read)


def enum_of(kind: type[_E]) -> Wire[_E]:
    """An `IntEnum` member in a u8; any other byte is rejected by name."""

    # A table, not `kind(raw)`: calling an enum class costs ten times a dict look-up.
    members: dict[int, _E] = {int(m): m for m in kind}

    def read(r: Reader) -> _E:
        raw = r.u8()
        member = members.get(raw)
        if member is None:
            raise r.fail(f"unknown {kind.__name__} {raw}")
        return member

    return Wire(Writer.u8, read)


class Tagged(Protocol):
    """A `one_of` alternative: its class constant `TAG` is its u8 tag on the wire."""

    TAG: ClassVar[int]


_T = TypeVar("_T", bound=Tagged)


def one_of(classes: Iterable[type[_T]], unknown: str) -> Wire[_T]:
    """A u8 tag (the class's `TAG`), then that `@declared` class's fields. `unknown` is the
    decoder's message for any other tag, with `{tag}` in it. Encoding a value of any other
    class is a `TypeError`: the decoder could not read it back."""
    by_type = {cls: wire_of(cls).write for cls in classes}
    by_tag = {cls.TAG: wire_of(cls).read for cls in by_type}
    if len(by_tag) != len(by_type):
        raise TypeError(f"duplicate tags among {sorted(c.__name__ for c in by_type)}")
    u8 = Writer.u8

    def write(w: Writer, value: _T) -> None:
        try:
            write_fields = by_type[type(value)]
        except KeyError:
            expected = ", ".join(cls.__name__ for cls in by_type)
            raise TypeError(f"cannot encode a {type(value).__name__} here: {expected}") from None
        u8(w, value.TAG)
        write_fields(w, value)

    def read(r: Reader) -> _T:
        tag = r.u8()
        read_fields = by_tag.get(tag)
        if read_fields is None:
            raise r.fail(unknown.format(tag=tag))
        return read_fields(r)

    return Wire(write, read)


_DECLARED: dict[type[Any], Wire[Any]] = {}


def declared(cls: type[_C]) -> type[_C]:
    """Class decorator (outside `@dataclass`): derive the class's codec from its fields'
    wire types, once. A field without one is a `TypeError` at import, not a silent gap."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names: list[str] = []
    writers: list[Callable[[Writer, Any], None]] = []
    readers: list[Callable[[Reader], Any]] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        wires = [m for m in getattr(hints[field.name], "__metadata__", ()) if isinstance(m, Wire)]
        if len(wires) != 1:
            raise TypeError(f"{cls.__name__}.{field.name} needs one wire type, has {len(wires)}")
        names.append(field.name)
        writers.append(wires[0].write)
        readers.append(wires[0].read)
    _DECLARED[cls] = _struct_wire(cls, names, tuple(writers), tuple(readers))
    return cls


def wire_of(cls: type[_C]) -> Wire[_C]:
    """The codec `@declared` derived for `cls`."""
    return _DECLARED[cls]


def _struct_wire(
    make: Callable[..., _C],
    names: list[str],
    writers: tuple[Callable[[Writer, Any], None], ...],
    readers: tuple[Callable[[Reader], Any], ...],
) -> Wire[_C]:
    # Unrolled up to four fields (all but two commands): a loop over the fields made a Put's
    # encode about 50% slower than the hand-written one it replaces, unrolled it is within
    # noise of it. Decoding is the apply path, so it gets the same treatment.
    n = len(names)
    if n == 0:
        return Wire(lambda w, v: None, lambda r: make())
    get = attrgetter(*names)
    if n == 1:
        (w1,), (r1,) = writers, readers
        return Wire(lambda w, v: w1(w, get(v)), lambda r: make(r1(r)))
    if n == 2:
        (w1, w2), (r1, r2) = writers, readers

        def write2(w: Writer, value: _C) -> None:
            a, b = get(value)
            w1(w, a)
            w2(w, b)

        return Wire(write2, lambda r: make(r1(r), r2(r)))
    if n == 3:
        (w1, w2, w3), (r1, r2, r3) = writers, readers

        def write3(w: Writer, value: _C) -> None:
            a, b, c = get(value)
            w1(w, a)
            w2(w, b)
            w3(w, c)

        return Wire(write3, lambda r: make(r1(r), r2(r), r3(r)))
    if n == 4:
        (w1, w2, w3, w4), (r1, r2, r3, r4) = writers, readers

        def write4(w: Writer, value: _C) -> None:
            a, b, c, d = get(value)
            w1(w, a)
            w2(w, b)
            w3(w, c)
            w4(w, d)

        return Wire(write4, lambda r: make(r1(r), r2(r), r3(r), r4(r)))

    def write(w: Writer, value: _C) -> None:
        for write_field, field_value in zip(writers, get(value), strict=True):
            write_field(w, field_value)

    def read(r: Reader) -> _C:
        return make(*[read_field(r) for read_field in readers])

    return Wire(write, read)
