"""Determinism: the same log gives the same state and the same results, everywhere.

A seeded generator writes random logs that use every command (valid and invalid), retries
(duplicates), stale requests, sessionless ticks, leader changes with disagreeing clocks, CONF
entries, leader no-ops and garbage. Then:

- two machines fed the same log produce equal `Applied` streams and byte-identical snapshots;
- a machine restored from a snapshot taken at any point and fed the rest ends byte-identical
  to the one that applied everything, with the same results on the way;
- two interpreters with different PYTHONHASHSEEDs (so sets and dicts of str/bytes iterate
  differently) end with the same snapshot digest.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from coordinator.fsm import (
    Applied,
    Campaign,
    Command,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Envelope,
    ExpireLeases,
    FsmError,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    LockAcquire,
    LockRelease,
    MemberRemove,
    MemberUpsert,
    Noop,
    Proclaim,
    Put,
    Range,
    Resign,
    SealingKeyAdd,
    SequenceCreate,
    SequenceNext,
    StateMachine,
    Txn,
)
from coordinator.raft import ConfState, Entry, EntryKind

REPO = Path(__file__).resolve().parents[2]
KEYS = [b"a", b"b", b"c", b"d", b"e"]
NAMES = ["x", "y"]


SEALING_IDS = [bytes([i]) * 8 for i in range(1, 4)]


def random_command(rng: random.Random) -> Command:
    key = rng.choice(KEYS)
    name = rng.choice(NAMES)
    lease = rng.choice([1, 1, 2, 2, 3, 4, 0, 99])
    pick = rng.randrange(20)
    if pick == 0:
        return Put(
            key, rng.randbytes(rng.randrange(4)), rng.choice([0, 0, lease]), rng.random() < 0.5
        )
    if pick == 1:
        return Delete(key, rng.choice([None, b"\0", b"d", b""]))
    if pick == 2:
        target = rng.choice(list(CompareTarget))
        value: bytes | int = (
            rng.randbytes(1) if target is CompareTarget.VALUE else rng.randrange(0, 30)
        )
        cmp_key = name.encode() if target is CompareTarget.LOCK_TOKEN else key
        ops = (Put(rng.choice(KEYS), b"t", rng.choice([0, lease])), Range(b"a", b"\0", 2))
        return Txn(
            (Compare(cmp_key, target, rng.choice(list(CompareOp)), value),), ops, (Delete(key),)
        )
    if pick in (3, 4):
        return LeaseGrant(rng.choice([1_000, 10_000, 30_000]), rng.choice([0, lease, lease]))
    if pick in (5, 6):
        return LeaseKeepAlive(lease)
    if pick == 7:
        return LeaseRevoke(lease)
    if pick in (8, 9):
        return ExpireLeases()
    if pick in (10, 11):
        holders = (1 if name == "x" else 2) if rng.random() < 0.95 else 3
        return LockAcquire(name, lease, holders, rng.choice([0, 0, 1_500]), rng.randrange(100))
    if pick == 12:
        return LockRelease(name, lease)
    if pick == 13:
        return Campaign(name, lease, rng.randbytes(2))
    if pick == 14:
        return Proclaim(name, lease, rng.randbytes(2))
    if pick == 15:
        return Resign(name, lease)
    if pick == 16:
        return SequenceCreate(name, rng.randrange(-5, 5), rng.choice([1, 3, 0]))
    if pick == 17:
        return SequenceNext(name, rng.choice([1, 2, 5, 0]))
    if pick == 18:
        i = rng.randrange(1, 4)
        return MemberUpsert(i, rng.choice(["m1", "m2", "m3"]), f"https://p{i}:1", "https://c:2")
    key_id, after = rng.choice(SEALING_IDS), rng.choice([b"", *SEALING_IDS])
    seal = SealingKeyAdd(key_id, rng.randrange(10**6), b"private", b"cert", after)
    return rng.choice([MemberRemove(rng.randrange(1, 4)), Noop(), seal])


def random_log(seed: int, length: int) -> list[Entry]:
    rng = random.Random(seed)
    entries: list[Entry] = []
    term, time_ms = 1, rng.randrange(10**6)
    last: dict[int, tuple[int, Command]] = {}
    for index in range(1, length + 1):
        roll = rng.random()
        if roll < 0.03:  # a new leader: empty entry, and a clock of its own
            term += 1
            time_ms = rng.randrange(10**9)
            entries.append(Entry(index, term))
            continue
        if roll < 0.04:
            conf = ConfState(frozenset({1, 2, 3}))
            entries.append(Entry(index, term, EntryKind.CONF, conf.encode()))
            continue
        if roll < 0.05:
            entries.append(Entry(index, term, data=rng.randbytes(rng.randrange(1, 30))))
            continue
        time_ms += rng.choice([0, 0, 50, 200, 1_000, -100])
        client = rng.choice([0, 1, 2, 3])
        if client and client in last and rng.random() < 0.15:  # retry, or a stale request
            seq, cmd = last[client]
            seq -= rng.choice([0, 0, 1])
        else:
            seq = last.get(client, (0, Noop()))[0] + 1
            cmd = random_command(rng)
            if client:
                last[client] = (seq, cmd)
        data = Envelope(client, seq, max(time_ms, 0), cmd).encode()
        entries.append(Entry(index, term, EntryKind.NORMAL, data))
    return entries


def run(machine: StateMachine, entries: list[Entry]) -> list[Applied]:
    return [machine.apply(e) for e in entries]


SEEDS = [1, 2, 3, 4]
LENGTH = 600


@pytest.mark.parametrize("seed", SEEDS)
def test_two_machines_fed_the_same_log_agree(seed: int) -> None:
    log = random_log(seed, LENGTH)
    a, b = StateMachine(history_events_max=64), StateMachine(history_events_max=64)
    assert run(a, log) == run(b, log)
    assert a.snapshot() == b.snapshot()


@pytest.mark.parametrize("seed", SEEDS)
def test_restoring_a_snapshot_midway_ends_identical(seed: int) -> None:
    log = random_log(seed, LENGTH)
    full = StateMachine(history_events_max=64)
    results = run(full, log)
    rng = random.Random(seed)
    for cut in sorted(rng.sample(range(1, LENGTH), 4)):
        first = StateMachine(history_events_max=64)
        run(first, log[:cut])
        restored = StateMachine(history_events_max=64)
        restored.restore(first.snapshot())
        assert run(restored, log[cut:]) == results[cut:]
        assert restored.snapshot() == full.snapshot()


@pytest.mark.parametrize("seed", SEEDS)
def test_a_deferred_snapshot_is_the_state_when_it_was_taken(seed: int) -> None:
    """`snapshot_later` is encoded on another thread while the machine keeps applying: its
    image must be the state at the call, whatever was applied before it is encoded."""
    log = random_log(seed, LENGTH)
    machine = StateMachine(history_events_max=64)
    run(machine, log[: LENGTH // 2])
    expected = machine.snapshot()
    later = machine.snapshot_later()
    run(machine, log[LENGTH // 2 :])  # puts, deletes, leases ending: the KV changes under it
    assert machine.snapshot() != expected
    assert later() == expected


@pytest.mark.parametrize("keys", [0, 1, 2])
def test_a_deferred_snapshot_of_a_nearly_empty_store(keys: int) -> None:
    machine = StateMachine()
    for i in range(keys):
        data = Envelope(0, 0, 1, Put(b"k%d" % i, b"v")).encode()
        machine.apply(Entry(i + 1, 1, EntryKind.NORMAL, data))
    expected = machine.snapshot()
    later = machine.snapshot_later()
    machine.apply(Entry(keys + 1, 1, EntryKind.NORMAL, Envelope(0, 0, 1, Put(b"z", b"v")).encode()))
    assert later() == expected


def test_the_random_logs_exercise_everything() -> None:
    """Guard against a vacuous determinism test: most commands must also succeed."""
    ok: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    duplicates = 0
    for seed in SEEDS:
        for applied in run(StateMachine(), random_log(seed, LENGTH)):
            if applied.command is None:
                continue
            name = type(applied.command).__name__
            (failed if isinstance(applied.result, FsmError) else ok)[name] += 1
            effects.update(type(e).__name__ for e in applied.effects)
            duplicates += applied.duplicate
    every = {cls.__name__ for cls in (Put, Delete, Txn, LeaseGrant, LeaseKeepAlive, LeaseRevoke)}
    every |= {cls.__name__ for cls in (ExpireLeases, LockAcquire, LockRelease, Campaign)}
    every |= {cls.__name__ for cls in (Proclaim, Resign, SequenceCreate, SequenceNext)}
    every |= {cls.__name__ for cls in (MemberUpsert, MemberRemove, Noop)}
    assert every <= set(ok), f"never succeeded: {every - set(ok)}"
    assert sum(failed.values()) > 50
    assert {"LockGranted", "LeaderElected", "LeaseExpired", "LeaseRevoked"} <= set(effects)
    assert duplicates > 20


_DIGEST_SCRIPT = """
import hashlib, sys
from coordinator.fsm import StateMachine
from tests.fsm.test_determinism import random_log
m = StateMachine(history_events_max=64)
for e in random_log(int(sys.argv[1]), int(sys.argv[2])):
    m.apply(e)
print(hashlib.sha256(m.snapshot()).hexdigest())
"""


def test_hash_randomization_does_not_leak_into_the_state() -> None:
    seed = 7
    local = StateMachine(history_events_max=64)
    run(local, random_log(seed, LENGTH))
    expected = hashlib.sha256(local.snapshot()).hexdigest()
    for hash_seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT, str(seed), str(LENGTH)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected
