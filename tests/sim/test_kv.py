"""The simulator's KV state machine (`coordinator/testing/kv.py`).

- the command codec round-trips every command and rejects unknown versions and ops;
- put/cas semantics, checked example by example and against a naive dict model on random
  command streams that include retried (duplicate) and stale proposals;
- sessions make a retried proposal take effect once; `sessions=False` (the mutant the
  linearizability tests use) visibly does not;
- snapshot/restore round-trips the data, the applied index and the session table, is
  byte-for-byte deterministic, and rejects unknown versions without touching the machine.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.raft import Entry, EntryKind
from coordinator.testing.kv import Command, KvMachine, Op, encode_result

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=150)

OK, FAILED = b"\x01", b"\x00"

texts = st.text(max_size=8)
commands = st.builds(
    Command,
    client_id=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**64 - 1),
    op=st.sampled_from(list(Op)),
    key=texts,
    value=st.none() | texts,
    expected=st.none() | texts,
)


def entry(index: int, cmd: Command) -> Entry:
    return Entry(index, 1, data=cmd.encode())


# --- codec -----------------------------------------------------------------------------------


@SETTINGS
@given(cmd=commands)
def test_command_round_trips(cmd: Command) -> None:
    assert Command.decode(cmd.encode()) == cmd


def test_command_codec_distinguishes_none_from_empty() -> None:
    absent = Command(1, 1, Op.CAS, "k", "v", None)
    empty = Command(1, 1, Op.CAS, "k", "v", "")
    assert absent.encode() != empty.encode()
    assert Command.decode(absent.encode()).expected is None
    assert Command.decode(empty.encode()).expected == ""


def test_command_with_unknown_version_is_rejected() -> None:
    data = bytearray(Command(1, 1, Op.PUT, "k", "v").encode())
    data[0] = 2
    with pytest.raises(ValueError, match="unknown command version 2"):
        Command.decode(bytes(data))


def test_command_with_unknown_op_is_rejected() -> None:
    data = bytearray(Command(1, 1, Op.PUT, "k", "v").encode())
    data[17] = 99
    with pytest.raises(ValueError, match="99"):
        Command.decode(bytes(data))


def test_truncated_command_is_rejected() -> None:
    data = Command(7, 3, Op.CAS, "key", "val", "exp").encode()
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            Command.decode(data[:cut])


def test_command_with_trailing_bytes_is_rejected() -> None:
    with pytest.raises(ValueError, match="trailing"):
        Command.decode(Command(1, 1, Op.PUT, "k", "v").encode() + b"\x00")


# --- semantics -------------------------------------------------------------------------------


def test_put_then_cas() -> None:
    kv = KvMachine()
    assert kv.apply(entry(1, Command(1, 1, Op.PUT, "k", "a"))) == OK
    assert kv.get("k") == "a"
    assert kv.apply(entry(2, Command(1, 2, Op.CAS, "k", "b", "zzz"))) == FAILED
    assert kv.get("k") == "a"
    assert kv.apply(entry(3, Command(1, 3, Op.CAS, "k", "b", "a"))) == OK
    assert kv.get("k") == "b"
    assert kv.applied == 3


def test_cas_with_expected_none_means_create_if_absent() -> None:
    kv = KvMachine()
    assert kv.apply(entry(1, Command(1, 1, Op.CAS, "k", "a", None))) == OK
    assert kv.apply(entry(2, Command(1, 2, Op.CAS, "k", "b", None))) == FAILED
    assert kv.get("k") == "a"
    assert kv.apply(entry(3, Command(1, 3, Op.CAS, "x", "b", ""))) == FAILED  # "" is not absent
    assert kv.get("x") is None


def test_noop_conf_and_empty_entries_change_no_data() -> None:
    kv = KvMachine()
    assert kv.apply(entry(1, Command(0, 1, Op.NOOP))) == OK
    assert kv.apply(Entry(2, 1)) is None  # a new leader's empty entry
    assert kv.apply(Entry(3, 1, EntryKind.CONF, b"\x01whatever")) is None
    assert kv.data == {}
    assert kv.applied == 3


def test_encode_result() -> None:
    assert (encode_result(True), encode_result(False)) == (OK, FAILED)


# --- sessions --------------------------------------------------------------------------------


def test_a_retried_proposal_takes_effect_once() -> None:
    kv = KvMachine()
    cas = Command(1, 1, Op.CAS, "k", "a", None)
    assert kv.apply(entry(1, cas)) == OK
    assert kv.apply(entry(2, Command(2, 1, Op.PUT, "k", "other"))) == OK
    assert kv.apply(entry(3, cas)) == OK  # the saved response, not a failed CAS
    assert kv.get("k") == "other"  # and not re-run


def test_a_stale_proposal_is_ignored() -> None:
    kv = KvMachine()
    kv.apply(entry(1, Command(1, 1, Op.PUT, "k", "a")))
    kv.apply(entry(2, Command(1, 2, Op.PUT, "k", "b")))
    assert kv.apply(entry(3, Command(1, 1, Op.PUT, "k", "a"))) is None
    assert kv.get("k") == "b"
    assert kv.applied == 3


def test_without_sessions_a_retry_runs_twice() -> None:
    kv = KvMachine(sessions=False)
    put = Command(1, 1, Op.PUT, "k", "a")
    kv.apply(entry(1, put))
    kv.apply(entry(2, Command(2, 1, Op.PUT, "k", "b")))
    kv.apply(entry(3, put))
    assert kv.get("k") == "a"


# --- against a naive model -----------------------------------------------------------------

small_commands = st.builds(
    Command,
    client_id=st.integers(1, 3),
    seq=st.integers(1, 4),
    op=st.sampled_from(list(Op)),
    key=st.sampled_from(["a", "b"]),
    value=st.sampled_from(["x", "y", ""]),
    expected=st.sampled_from([None, "x", "y", ""]),
)


def naive_apply(
    data: dict[str, str], last: dict[int, tuple[int, bytes]], cmd: Command
) -> bytes | None:
    seen = last.get(cmd.client_id)
    if seen is not None and cmd.seq < seen[0]:
        return None
    if seen is not None and cmd.seq == seen[0]:
        return seen[1]
    ok = True
    if cmd.op is Op.PUT:
        data[cmd.key] = cmd.value or ""
    elif cmd.op is Op.CAS:
        ok = (cmd.key in data and data[cmd.key] == cmd.expected) or (
            cmd.key not in data and cmd.expected is None
        )
        if ok:
            data[cmd.key] = cmd.value or ""
    last[cmd.client_id] = (cmd.seq, OK if ok else FAILED)
    return OK if ok else FAILED


@SETTINGS
@given(cmds=st.lists(small_commands, max_size=25), snapshot_at=st.integers(0, 25))
def test_kv_machine_matches_a_naive_model(cmds: list[Command], snapshot_at: int) -> None:
    kv = KvMachine()
    data: dict[str, str] = {}
    last: dict[int, tuple[int, bytes]] = {}
    for i, cmd in enumerate(cmds, start=1):
        if i == snapshot_at:  # a restart from a snapshot must not change any answer
            restored = KvMachine()
            restored.restore(kv.snapshot())
            kv = restored
        assert kv.apply(entry(i, cmd)) == naive_apply(data, last, cmd), cmd
        assert kv.data == data
        assert kv.applied == i


# --- snapshots -------------------------------------------------------------------------------


@settings(SETTINGS, max_examples=60)
@given(cmds=st.lists(commands.filter(lambda c: c.value is not None), max_size=12))
def test_snapshot_restore_round_trips(cmds: list[Command]) -> None:
    kv = KvMachine()
    for i, cmd in enumerate(cmds, start=1):
        kv.apply(entry(i, cmd))
    image = kv.snapshot()
    other = KvMachine()
    other.data["stale"] = "overwritten by restore"
    other.restore(image)
    assert other.data == kv.data
    assert other.applied == kv.applied
    assert other.sessions.encode() == kv.sessions.encode()
    assert other.snapshot() == image  # deterministic: same state, same bytes


def test_snapshot_bytes_do_not_depend_on_insertion_order() -> None:
    a, b = KvMachine(sessions=False), KvMachine(sessions=False)
    a.data = {"x": "1", "y": "2"}
    b.data = {"y": "2", "x": "1"}
    assert a.snapshot() == b.snapshot()


def test_snapshot_with_unknown_version_is_rejected_and_changes_nothing() -> None:
    kv = KvMachine()
    kv.apply(entry(1, Command(1, 1, Op.PUT, "k", "v")))
    image = bytearray(kv.snapshot())
    image[0] = 9
    fresh = KvMachine()
    fresh.data["keep"] = "me"
    with pytest.raises(ValueError, match="unknown snapshot version 9"):
        fresh.restore(bytes(image))
    assert fresh.data == {"keep": "me"}
    assert fresh.applied == 0


def test_snapshot_with_unknown_session_table_version_is_rejected_and_changes_nothing() -> None:
    kv = KvMachine()
    kv.apply(entry(1, Command(1, 1, Op.PUT, "k", "v")))
    image = kv.snapshot()
    table = kv.sessions.encode()
    start = len(image) - len(table)
    corrupt = image[:start] + b"\x07" + image[start + 1 :]
    fresh = KvMachine()
    with pytest.raises(ValueError, match="unknown session table version"):
        fresh.restore(corrupt)
    assert (fresh.data, fresh.applied, len(fresh.sessions)) == ({}, 0, 0)
