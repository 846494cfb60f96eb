"""What writing and reading a snapshot costs a member in memory and time, in one process.

    python -m bench.snapshot_memory [--keys 1000000] [--runs 3] [--dir DIR]

A state machine is loaded with N keys shaped like the key-load figure's (`key/%08d`, 32 hex
characters of value, put 128 to a transaction) and its image saved raw. Then each phase
runs in a fresh process, so one phase's peak cannot hide another's:

- write: restore the machine from the raw image, then encode its snapshot image and write
  the sealed snapshot file (`snapshot_later()()`, `write_snapshot`), as a member does;
- read: read the snapshot file and restore a machine from it (`read_snapshot`, `restore`),
  as a member does on restart.

Each phase reports the growth of peak RSS over the RSS it started from (VmHWM from
/proc/self/status, reset through /proc/self/clear_refs just before the phase), also as it
stood after the phase's first step (encoding; reading the file), the RSS left after it with
the snapshot still held (a member keeps its newest snapshot's data), and its wall times.
The script imports `coordinator` from PYTHONPATH and can be run as a file, so one copy
measures any checkout (checkouts before streamed sealing take the `AESGCM`, not the key).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.fsm import Envelope, Put, StateMachine, Txn
from coordinator.raft import ConfState, Entry, EntryKind, Snapshot, SnapshotMeta
from coordinator.storage import KeyStore
from coordinator.storage._snapfile import list_snapshots, read_snapshot, write_snapshot

_BATCH = 128


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS


def _build(work: Path, keys: int) -> None:
    fsm = StateMachine()
    for index, first in enumerate(range(0, keys, _BATCH), start=1):
        last = min(keys, first + _BATCH)
        noise = os.urandom(16 * (last - first)).hex().encode()
        puts = tuple(
            Put(f"key/{k:08d}".encode(), noise[32 * (k - first) : 32 * (k - first + 1)])
            for k in range(first, last)
        )
        data = Envelope(0, 0, index, Txn(success=puts)).encode()
        fsm.apply(Entry(index, 1, EntryKind.NORMAL, data))
    (work / "image.bin").write_bytes(fsm.snapshot())


def _keys(work: Path) -> KeyStore:
    if (work / "data").exists():
        return KeyStore.open(work / "data")
    return KeyStore.create(work / "data")


def _key_for(keys: KeyStore, function: Callable[..., object]) -> Callable[[int], Any]:
    """The key-lookup argument `function` takes: checkouts before streamed sealing took the
    `AESGCM` (`cipher_for`), later ones the key itself (`key_for`)."""
    return keys.data_key if "key_for" in inspect.signature(function).parameters else keys.cipher


def _phase(work: Path, phase: str) -> dict[str, Any]:
    keys = _keys(work)
    snap_dir = work / "snap"
    snap_dir.mkdir(exist_ok=True)
    fsm = StateMachine()
    if phase == "write":
        raw = (work / "image.bin").read_bytes()
        fsm.restore(raw)
        del raw
    gc.collect()
    before = _status_kib("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    if phase == "write":
        data = fsm.snapshot_later()()
        encoded = time.perf_counter()
        encoded_peak = _status_kib("VmHWM")
        meta = SnapshotMeta(fsm.applied_index, fsm.applied_term, ConfState(frozenset({1, 2, 3})))
        key_for = _key_for(keys, write_snapshot)
        write_snapshot(snap_dir, Snapshot(meta, data), keys.current_key_id, key_for)
        split = {"encode_s": encoded - started, "seal_write_s": time.perf_counter() - encoded}
        first_peak = encoded_peak
        image_bytes = len(data)
    else:
        path = list_snapshots(snap_dir)[0][-1][2]
        snap, _ = read_snapshot(path, _key_for(keys, read_snapshot))
        opened = time.perf_counter()
        first_peak = _status_kib("VmHWM")
        fsm.restore(snap.data)
        split = {"read_open_s": opened - started, "restore_s": time.perf_counter() - opened}
        image_bytes = len(snap.data)
    elapsed = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    return {
        "phase": phase,
        "image_mb": round(image_bytes / 1e6, 1),
        "rss_before_mib": round(before / 1024, 1),
        "peak_growth_mib": round((peak - before) / 1024, 1),
        "first_step_peak_growth_mib": round((first_peak - before) / 1024, 1),
        "held_after_mib": round((_status_kib("VmRSS") - before) / 1024, 1),
        "wall_s": round(elapsed, 3),
        **{k: round(v, 3) for k, v in split.items()},
    }


def _child(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return out.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="work directory (kept); a temporary one if not")
    parser.add_argument("--phase", choices=("build", "write", "read"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase is not None:
        if args.phase == "build":
            _build(args.dir, args.keys)
        else:
            print(json.dumps(_phase(args.dir, args.phase)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        work = args.dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "image.bin").exists():
            print(f"building a state machine with {args.keys:,} keys...", file=sys.stderr)
            _child("--phase", "build", "--dir", str(work), "--keys", str(args.keys))
        results: dict[str, list[dict[str, Any]]] = {"write": [], "read": []}
        for _ in range(args.runs):
            for phase in ("write", "read"):
                result = json.loads(_child("--phase", phase, "--dir", str(work)))
                results[phase].append(result)
                print(json.dumps(result))
        for phase, runs in results.items():
            growth = statistics.median(r["peak_growth_mib"] for r in runs)
            wall = statistics.median(r["wall_s"] for r in runs)
            print(f"{phase}: median peak RSS growth {growth} MiB, median wall {wall} s")


if __name__ == "__main__":
    main()
