"""The atomic set writer (coordinator/sidecar/_atomic.py) on a real directory: kubelet's
layout, exact modes, no swap for an equal payload, removed keys gone in the swap, old
payloads cleaned, and readers hammering the directory during hundreds of swaps that never see
two versions mixed (every file carries its version stamp)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.sidecar._atomic import DATA, AtomicDir, valid_key


def keys_of(version: int) -> list[str]:
    """Version N's keys: the key set itself changes from version to version (1..4 keys),
    so a reader that mixed versions would also see the wrong set of names."""
    return [f"key{i}" for i in range(1 + version % 4)]


def payload(version: int) -> dict[str, bytes]:
    # Large enough that a torn write could be seen (many write(2) chunks, not one page).
    return {k: f"v{version}:{k}:".encode() + b"x" * 20_000 + b":end" for k in keys_of(version)}


def stamp(content: bytes, key: str) -> int:
    """The version in a file's content; AssertionError if the content is not whole."""
    head = content.partition(b":")[0]
    assert head.startswith(b"v") and head[1:].isdigit(), f"{key}: starts {content[:30]!r}"
    version = int(head[1:])
    assert content == payload(version).get(key), f"{key}: torn or foreign ({len(content)} B)"
    return version


def entries(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def test_layout_modes_and_an_equal_payload_does_not_swap(tmp_path: Path) -> None:
    d = AtomicDir(tmp_path / "db")
    assert d.current() is None
    assert d.write({"password": b"one", "user": b"app"})
    names = entries(d.path)
    stamped = [n for n in names if n.startswith("..") and n != DATA]
    assert len(stamped) == 1 and stamped[0].startswith("..20")
    assert sorted(set(names) - set(stamped)) == [DATA, "password", "user"]
    assert os.readlink(d.path / DATA) == stamped[0]
    assert os.readlink(d.path / "password") == f"{DATA}/password"
    assert (d.path / "password").read_bytes() == b"one"
    st = os.stat(d.path / "password")
    assert stat.S_IMODE(st.st_mode) == 0o400
    assert st.st_uid == os.getuid()
    assert d.current() == {"password": b"one", "user": b"app"}

    assert not d.write({"password": b"one", "user": b"app"})  # nothing changed: no swap
    assert entries(d.path) == names


def test_a_removed_key_disappears_and_old_payloads_are_removed(tmp_path: Path) -> None:
    d = AtomicDir(tmp_path / "db", file_mode=0o440)
    d.write({"a": b"1", "b": b"2"})
    first = os.readlink(d.path / DATA)
    assert d.write({"b": b"3", "c": b"4"})
    names = entries(d.path)
    assert first not in names  # the old payload is gone
    assert [n for n in names if not n.startswith("..")] == ["b", "c"]
    assert not (d.path / "a").exists() and not (d.path / "a").is_symlink()
    assert (d.path / "b").read_bytes() == b"3"
    assert stat.S_IMODE(os.stat(d.path / "c").st_mode) == 0o440
    # A crash's leftovers (a stray payload directory, a ..data_tmp link) go at the next swap.
    (d.path / "..2001_01_01_00_00_00.stray").mkdir()
    os.symlink("nowhere", d.path / "..data_tmp")
    assert d.write({"c": b"5"})
    names = entries(d.path)
    assert [n for n in names if n.startswith("..")] == sorted([DATA, os.readlink(d.path / DATA)])
    assert [n for n in names if not n.startswith("..")] == ["c"]


@pytest.mark.parametrize("key", ["..data", "..x", "a/b", "", ".", "é"])
def test_a_key_that_cannot_be_a_file_name_is_refused_and_nothing_changes(
    tmp_path: Path, key: str
) -> None:
    assert not valid_key(key)
    d = AtomicDir(tmp_path / "db")
    d.write({"ok": b"1"})
    before = entries(d.path)
    with pytest.raises(ValueError, match="cannot be a secret file"):
        d.write({"ok": b"2", key: b"3"})
    assert entries(d.path) == before
    assert (d.path / "ok").read_bytes() == b"1"


def test_new_keys_appear_in_the_swap_itself_not_one_by_one_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that waits for DIR/KEY to exist and then reads the others must find them all:
    the links of new keys are in place (dangling) before the rename, so they come to life in
    it. Seen at the rename itself, first delivery and an update that adds a key."""
    d = AtomicDir(tmp_path / "db")
    at_swap: list[tuple[set[str], set[str]]] = []
    real_rename = os.rename

    def rename(src: str | Path, dst: str | Path) -> None:
        links = {e.name for e in d.path.iterdir() if not e.name.startswith("..")}
        readable = {name for name in links if (d.path / name).exists()}
        at_swap.append((links, readable))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    d.write({"user": b"app", "password": b"pw-1"})
    assert at_swap[-1] == ({"user", "password"}, set())  # all there, none readable yet
    d.write({"password": b"pw-2", "host": b"h"})
    assert at_swap[-1] == ({"user", "password", "host"}, {"user", "password"})
    assert {p.name: p.read_bytes() for p in d.path.iterdir() if not p.name.startswith("..")} == {
        "password": b"pw-2",
        "host": b"h",
    }


def test_a_failed_swap_leaves_no_link_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = AtomicDir(tmp_path / "db")
    d.write({"ok": b"1"})
    before = entries(d.path)

    def rename(src: str | Path, dst: str | Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space"):
        d.write({"ok": b"2", "new": b"3"})
    monkeypatch.undo()
    assert entries(d.path) == before  # no "new" link, no ..data_tmp, no payload directory
    assert (d.path / "ok").read_bytes() == b"1"


def _reader(
    path: Path, stop: threading.Event, seen: list[int], failures: list[str]
) -> Callable[[], None]:
    """Reads the whole set through one resolution of ..data, and each visible file, until
    stopped; records every version it read whole, and any mix or torn file as a failure."""

    def run() -> None:
        last_by_key: dict[str, int] = {}
        while not stop.is_set():
            # The documented reader protocol: resolve ..data, read the files under that
            # payload, resolve ..data again; the read counts only if it did not move (a
            # payload is removed only after ..data has left it).
            try:
                target = os.readlink(path / DATA)
                names = sorted(os.listdir(path / target))
                versions = {stamp((path / target / name).read_bytes(), name) for name in names}
                moved = os.readlink(path / DATA) != target
            except FileNotFoundError:
                continue  # that payload was removed while being read: read the next one
            except AssertionError as err:
                failures.append(str(err))
                continue
            if not moved:
                if len(versions) != 1:
                    failures.append(f"mixed versions {sorted(versions)} in one set")
                    continue
                (version,) = versions
                if names != keys_of(version):
                    failures.append(f"version {version} showed keys {names}")
                seen.append(version)
            for key in ["key0", "key1", "key2", "key3"]:
                try:
                    content = (path / key).read_bytes()
                except FileNotFoundError:
                    continue
                try:
                    version = stamp(content, key)
                except AssertionError as err:
                    failures.append(str(err))
                    continue
                if version < last_by_key.get(key, 0):
                    failures.append(f"{key} went back from {last_by_key[key]} to {version}")
                last_by_key[key] = version

    return run


def test_readers_hammering_the_directory_never_see_two_versions_mixed(tmp_path: Path) -> None:
    d = AtomicDir(tmp_path / "db")
    d.write(payload(1))
    stop = threading.Event()
    seen: list[int] = []
    failures: list[str] = []
    readers = [
        threading.Thread(target=_reader(d.path, stop, seen, failures), daemon=True)
        for _ in range(2)
    ]
    for t in readers:
        t.start()
    swaps = 400
    try:
        for version in range(2, swaps + 2):
            assert d.write(payload(version))
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert not failures, failures[:5]
    # The readers really overlapped the swaps (saw many versions), not just the last one.
    assert len(set(seen)) > 20, f"readers saw only {len(set(seen))} versions"
    final = swaps + 1
    assert d.current() == payload(final)
    stamped = [n for n in entries(d.path) if n.startswith("..") and n != DATA]
    assert len(stamped) == 1, stamped  # every older payload removed
    assert [n for n in entries(d.path) if not n.startswith("..")] == keys_of(final)
    print(f"\n{swaps} swaps; readers read {len(seen)} whole sets of {len(set(seen))} versions")
