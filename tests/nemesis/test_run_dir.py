"""Results folders of nemesis runs: one per run, even for runs started in the same second."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from coordinator.testing.nemesis import new_run_dir


def test_runs_started_in_the_same_second_get_folders_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "strftime", lambda *_: "20261206T000000Z")  # one second for all
    made: list[Path] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(25):
            try:
                made.append(new_run_dir("pytest", tmp_path))
            except BaseException as err:  # reported below
                errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(made) == len(set(made)) == 200
    assert all(p.is_dir() and p.name.startswith("20261206T000000Z-pytest") for p in made)
