"""`python -m bench.snapshot_memory` on a small store: both phases run, in their own
processes, and report a snapshot of the size the store makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.snapshot_memory import main


def test_both_phases_report_on_the_same_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--keys", "2000", "--runs", "1", "--dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    write, read = (json.loads(line) for line in lines[:2])
    assert (write["phase"], read["phase"]) == ("write", "read")
    assert write["image_mb"] == read["image_mb"] > 0
    assert write["peak_growth_mib"] >= 0 and read["wall_s"] > 0
    assert lines[2].startswith("write: median") and lines[3].startswith("read: median")
