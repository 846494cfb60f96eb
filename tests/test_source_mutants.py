"""The source-mutant table (`make mutants`) still matches the tree: every mutant's old text
occurs exactly once in its file, the mutated file still parses, and every killing test exists.
Running the mutants is `make mutants`' job (minutes); this only keeps the list from rotting
silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.testing.source_mutants import (
    MUTANTS,
    REPO_ROOT,
    SourceMutant,
    problems,
    run,
    table,
)


def test_every_mutant_still_applies_exactly_once_and_names_real_tests() -> None:
    assert problems(MUTANTS, REPO_ROOT) == []


def test_a_mutant_whose_source_moved_on_is_reported(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "test_m.py").write_text("def test_x() -> None: ...\n")
    twice = SourceMutant("twice", "m.py", "x = 1\n", "x = 2\n", ("test_m.py::test_x",), "")
    gone = SourceMutant("gone", "m.py", "y = 1\n", "y = 2\n", ("test_m.py::test_y",), "")
    assert problems([twice, gone], tmp_path) == [
        "twice: its old text occurs 2 times in m.py (must be once: the source changed, "
        "update the entry)",
        "gone: its old text occurs 0 times in m.py (must be once: the source changed, "
        "update the entry)",
        "gone: test_m.py has no test named 'test_y'",
    ]


def test_a_mutant_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f() -> int:\n    x = 1\n    return x\n")
    (tmp_path / "test_m.py").write_text("def test_f() -> None: ...\n")
    indented = SourceMutant(
        "indented", "m.py", "    return x\n", "        return 2\n", ("test_m.py::test_f",), ""
    )
    assert problems([indented], tmp_path) == [
        "indented: the mutated m.py does not parse: unexpected indent (line 3)"
    ]


def test_the_runner_tells_a_killed_mutant_from_a_survivor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a two-file tree: the mutant the test sees is killed, the one it cannot see
    survives, and the tree the runner was given is left as it was."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the tiny tree needs none
    (tmp_path / "m.py").write_text("def double(x: int) -> int:\n    return 2 * x\n\nUNUSED = 1\n")
    (tmp_path / "test_m.py").write_text(
        "from m import double\n\n\ndef test_double() -> None:\n    assert double(3) == 6\n"
    )
    seen = SourceMutant(
        "seen", "m.py", "    return 2 * x\n", "    return 3 * x\n", ("test_m.py::test_double",), ""
    )
    unseen = SourceMutant(
        "unseen", "m.py", "UNUSED = 1\n", "UNUSED = 2\n", ("test_m.py::test_double",), ""
    )
    before = (tmp_path / "m.py").read_text()
    outcomes = run([seen, unseen], tmp_path)
    assert [(o.mutant.name, o.verdict) for o in outcomes] == [
        ("seen", "killed"),
        ("unseen", "SURVIVED"),
    ]
    assert (tmp_path / "m.py").read_text() == before
    assert "unseen" in table(outcomes) and "SURVIVED" in table(outcomes)
