"""`record_frames`, the one frame walker outside recovery (fault injection and tests aim at
byte ranges with it), against the test helpers' independent twin and the WAL's own dump."""

from __future__ import annotations

from pathlib import Path

from coordinator.raft import HardState
from coordinator.storage import dump, record_frames
from tests.storage.helpers import PREAMBLE_BYTES, ents, frames, new_wal, segments


def test_frames_tile_a_segment_and_match_the_records_the_wal_reads(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    keys, wal = new_wal(data_dir)
    with wal:
        for lo in range(1, 30, 4):
            wal.save(ents(lo, lo + 4), HardState(1, 1, lo))
    path = segments(data_dir)[-1]
    data = path.read_bytes()

    got = record_frames(data)

    assert [(offset, offset + size) for offset, size in got] == frames(path)
    assert got[0][0] == PREAMBLE_BYTES and sum(size for _, size in got) + PREAMBLE_BYTES == len(
        data
    )
    records = [r for r in dump(data_dir, keys.unlock_key) if r.source == f"wal/{path.name}"]
    assert [offset for offset, _ in got] == [r.offset for r in records]
    # A frame cut short at the end (a torn write) is not a frame.
    last_offset, last_size = got[-1]
    assert record_frames(data[: last_offset + last_size - 1]) == got[:-1]
    assert record_frames(data[:PREAMBLE_BYTES]) == []
