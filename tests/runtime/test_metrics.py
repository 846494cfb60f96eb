"""The member's scrape-time metrics read the state they describe: the sealing-key age moves
with the member's wall clock and resets when a newer key is committed."""

from __future__ import annotations

import random
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.fsm import Envelope, SealingKeyAdd, StateMachine
from coordinator.raft import ConfState, Entry, EntryKind, Snapshot, SnapshotMeta
from coordinator.runtime.clock import ManualClock
from coordinator.runtime.loop import LoopConfig, RaftLoop
from coordinator.runtime.metrics import MemberMetrics
from coordinator.runtime.transport import LoopbackTransport
from coordinator.storage import DiskWal, KeyStore


def _loop(tmp_path: Path, clock: ManualClock) -> RaftLoop:
    wal = DiskWal.create(KeyStore.create(tmp_path / "data", autolock=False))
    wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(frozenset({1})))))
    return RaftLoop(
        LoopConfig(id=1, tick_s=0.01, election_ticks=10),
        wal,
        LoopbackTransport(),
        StateMachine(),
        clock,
        rng=random.Random(1),
    )


def _samples(metrics: MemberMetrics) -> dict[str, list[float]]:
    text = generate_latest(metrics.registry).decode()
    return {
        family.name: [s.value for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def _add_key(loop: RaftLoop, index: int, n: int, created_ms: int, after: bytes) -> None:
    add = SealingKeyAdd(bytes([n]) * 8, created_ms, b"der", b"pem", after)
    loop.fsm.apply(Entry(index, 1, EntryKind.NORMAL, Envelope(1, index, created_ms, add).encode()))


def test_sealing_key_age_follows_the_wall_clock_and_resets_on_renewal(tmp_path: Path) -> None:
    clock = ManualClock()
    loop = _loop(tmp_path, clock)
    metrics = MemberMetrics()
    metrics.attach(loop)
    try:
        # No key yet: the family is there (its HELP/TYPE lines) with no sample, so an alert
        # on it cannot fire for a cluster that seals nothing.
        before = _samples(metrics)
        assert before["concord_sealing_keys"] == [0.0]
        assert before["concord_sealing_key_age_seconds"] == []

        _add_key(loop, 1, 1, clock.wall_ms() - 5_000, b"")
        assert _samples(metrics)["concord_sealing_key_age_seconds"] == [5.0]
        clock.advance(86_400)
        assert _samples(metrics)["concord_sealing_key_age_seconds"] == [86_405.0]

        # A renewal: the newest key's age starts again; the old key is still counted.
        _add_key(loop, 2, 2, clock.wall_ms(), b"\1" * 8)
        after = _samples(metrics)
        assert after["concord_sealing_key_age_seconds"] == [0.0]
        assert after["concord_sealing_keys"] == [2.0]

        # A proposer whose clock ran ahead of this member's: clamped, never negative.
        _add_key(loop, 3, 3, clock.wall_ms() + 60_000, b"\2" * 8)
        assert _samples(metrics)["concord_sealing_key_age_seconds"] == [0.0]
    finally:
        loop.storage.close()  # type: ignore[attr-defined]
