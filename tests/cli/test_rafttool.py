"""`concordctl rafttool dump` decrypts a data directory with its keys (its key file, its
unlock key, or K of the key's shares), and only with them, and prints what the records mean:
one line per entry with its term, index and decoded command, a snapshot as a census, and
`-o json` as one object per record. No Python byte reprs."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from coordinator.cli.main import cli
from coordinator.fsm import (
    Envelope,
    LeaseGrant,
    LockAcquire,
    Put,
    SequenceCreate,
    SequenceNext,
    StateMachine,
)
from coordinator.raft import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from coordinator.storage import DiskWal, KeyStore, split_unlock_key

SECRET = b"hunter2-correct-horse"
T0_MS = 1_764_950_400_000  # 2025-12-05T16:00:00Z


def _cmd(index: int, command: object, term: int = 3) -> Entry:
    env = Envelope(7, index, T0_MS + index, command)  # type: ignore[arg-type]
    return Entry(index, term, EntryKind.NORMAL, env.encode())


def make_data_dir(path: Path, autolock: bool) -> str | None:
    """A data dir whose snapshot holds two keys, a lease and a sequence, and whose log has
    one of each kind of line: a configuration, a no-op, commands, binary and long values."""
    keys = KeyStore.create(path, autolock=autolock)
    unlock = keys.unlock_key
    fsm = StateMachine()
    for i, command in enumerate(
        [Put(b"a", b"1"), Put(b"b", b"2"), LeaseGrant(60_000, 5), SequenceCreate("orders")],
        start=1,
    ):
        fsm.apply(_cmd(i, command, term=2))
    with DiskWal.create(keys) as wal:
        wal.save_snapshot(Snapshot(SnapshotMeta(4, 2, ConfState(frozenset({1}))), fsm.snapshot()))
        wal.save(
            [
                Entry(5, 3, EntryKind.CONF, ConfState(frozenset({1, 2})).encode()),
                Entry(6, 3),
                _cmd(7, Put(b"config", SECRET, lease=5)),
                _cmd(8, LockAcquire("jobs", 5)),
                _cmd(9, SequenceNext("orders", 10)),
                _cmd(10, Put(b"bin\x00\xff", bytes(range(200, 256)))),
                _cmd(11, Put(b"long", b"x" * 500)),
            ],
            HardState(3, 1, 11),
        )
    return unlock


def dump(*args: str) -> Result:
    return CliRunner().invoke(cli, [*args[:2], "rafttool", "dump", *args[2:]])


def test_dump_prints_one_decoded_line_per_entry_and_a_census_per_snapshot(
    tmp_path: Path,
) -> None:
    make_data_dir(tmp_path / "m1", autolock=False)
    res = dump("-o", "table", "--data-dir", str(tmp_path / "m1"))
    assert res.exit_code == 0, res.output
    out = res.output
    assert "b'" not in out and 'b"' not in out  # no Python byte reprs
    lines = out.splitlines()
    snap = next(x for x in lines if " snapshot " in x)
    assert snap.startswith("term=2 index=4 snapshot voters={1}")
    assert " holds revision=3 keys=2 leases=1 locks=0 elections=0 sequences=1 " in snap
    assert "term=3 index=5 configuration voters={1,2}" in lines
    assert "term=3 index=6 no-op (a new leader's first entry)" in lines
    put = next(x for x in lines if "index=7 " in x)
    assert put.startswith(f'term=3 index=7 put key="config" value="{SECRET.decode()}" lease=5')
    assert "client 7 seq 7, 2025-12-05T16:00:00.007Z" in put
    assert 'index=8 lock-acquire name="jobs" lease=5 ' in out
    assert 'index=9 sequence-next name="orders" count=10 ' in out
    binary = next(x for x in lines if "index=10 " in x)
    assert 'key="bin\\u0000\\ufffd' not in binary and "key=hex:62696e00ff" in binary
    assert "value=hex:" in binary and "...(+24 bytes)" in binary
    long = next(x for x in lines if "index=11 " in x)
    assert f'value="{"x" * 64}"...(+436 chars)' in long and len(long) < 200
    assert any(x.startswith("# wal/") for x in lines) and any("hard state" in x for x in lines)


def test_dump_as_json_is_one_structured_object_per_record(tmp_path: Path) -> None:
    make_data_dir(tmp_path / "m1", autolock=False)
    res = dump("-o", "json", "--data-dir", str(tmp_path / "m1"))
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.output.splitlines()]
    snap = next(r for r in records if r["type"] == "SNAPSHOT")
    assert snap["index"] == 4 and snap["voters"] == [1]
    assert snap["census"]["keys"] == 2 and snap["census"]["sequences"] == 1
    assert "data" not in snap  # a census, never the image
    entries = {r["index"]: r for r in records if r["type"] == "ENTRY"}
    assert entries[5] == {**entries[5], "entry": "CONF", "voters": [1, 2], "learners": []}
    assert entries[6]["command"] is None
    assert entries[7]["command"] == {
        "kind": "put",
        "key": "config",
        "value": SECRET.decode(),
        "lease": 5,
        "prev_kv": False,
    }
    assert (entries[7]["client_id"], entries[7]["seq"]) == (7, 7)
    assert (
        entries[8]["command"]["kind"] == "lock-acquire" and entries[8]["command"]["name"] == "jobs"
    )
    assert entries[10]["command"]["key"] == {"base64": "YmluAP8="}
    assert entries[11]["command"]["value"] == "x" * 500  # JSON is never shortened


def test_dump_of_a_locked_member_needs_its_unlock_key_or_its_shares(tmp_path: Path) -> None:
    unlock = make_data_dir(tmp_path / "m1", autolock=True)
    assert unlock is not None
    d = str(tmp_path / "m1")
    res = dump("-o", "table", "--data-dir", d)
    assert res.exit_code == 1
    assert "autolocked: give its unlock key (--unlock-key" in res.output and "--share" in res.output
    assert SECRET.decode() not in res.output
    ok = dump("-o", "table", "--data-dir", d, "--unlock-key", unlock)
    assert ok.exit_code == 0, ok.output
    assert SECRET.decode() in ok.output

    shares = split_unlock_key(unlock, 2, 3)
    ok = dump("-o", "json", "--data-dir", d, "--share", shares[2], "--share", shares[0])
    assert ok.exit_code == 0, ok.output
    assert SECRET.decode() in ok.output
    # Bad input is refused before anything is read (exit 2); a wrong key is a refusal (1).
    res = dump("-o", "table", "--data-dir", d, "--share", shares[0])
    assert res.exit_code == 2 and "this key needs 2" in res.output
    res = dump("-o", "table", "--data-dir", d, "--share", shares[0][:-2] + "AA")
    assert res.exit_code == 2 and "share #1 is mistyped" in res.output
    res = dump("-o", "table", "--data-dir", d, "--unlock-key", unlock, "--share", shares[0])
    assert res.exit_code == 2 and "not both" in res.output
    other = split_unlock_key(KeyStore.create(tmp_path / "m2", autolock=True).unlock_key or "", 2, 2)
    res = dump("-o", "table", "--data-dir", d, *[f"--share={s}" for s in [*shares[:2], *other]])
    assert res.exit_code == 2 and "more than one split" in res.output
    res = dump("-o", "table", "--data-dir", d, "--share", other[0], "--share", other[1])
    assert res.exit_code == 1 and "does not open" in res.output and "Traceback" not in res.output
