"""Replay every scenario transcript in tests/raft/scenarios/ and compare with its golden output.

Each file is a story told in harness commands (see `tests/raft/harness.py` for the commands
and the format). A mismatch fails with a unified diff of the whole transcript. After an
intended change in the core, run `pytest tests/raft --rewrite` and review the diff of the
.txt files: it is the behaviour change.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from tests.raft.harness import (
    COMMANDS,
    Case,
    Harness,
    diff,
    parse_script,
    render_script,
    replay,
)

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    golden = path.read_text(encoding="utf-8")
    actual = replay(golden)
    if request.config.getoption("--rewrite"):
        if actual != golden:
            path.write_text(actual, encoding="utf-8")
        return
    if actual != golden:
        pytest.fail(
            f"{path.name} differs from its golden output "
            f"(run `pytest tests/raft --rewrite` if the change is intended):\n"
            + diff(golden, actual, path.name),
            pytrace=False,
        )


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 15


# --- the harness itself ----------------------------------------------------------------------


def test_every_command_is_documented_with_an_example() -> None:
    for name, handler in COMMANDS.items():
        doc = inspect.cleandoc(handler.__doc__ or "")
        assert f"\n    {name}" in doc, f"{name}: docstring lacks an indented example"
        assert "----" in doc, f"{name}: the example shows no output"


def test_parse_render_round_trip() -> None:
    text = "# prose\n\ncampaign 1\n----\nline a\nline b\n\n# more\ntick 1\n----\nok\n"
    chunks = parse_script(text)
    assert [c.command for c in chunks if isinstance(c, Case)] == ["campaign 1", "tick 1"]
    assert render_script(chunks) == text


def test_parse_rejects_a_command_without_separator() -> None:
    with pytest.raises(ValueError, match="expected '----'"):
        parse_script("campaign 1\nok\n")


def test_unknown_command_and_option_are_errors() -> None:
    h = Harness()
    with pytest.raises(ValueError, match="unknown command"):
        h.run("elect 1")
    with pytest.raises(ValueError, match="unknown options: bogus"):
        h.run("add-nodes 3 bogus=1")


def test_replay_reports_the_failing_line() -> None:
    with pytest.raises(AssertionError, match=r"line 5: 'campaign 9'"):
        replay("add-nodes 1\n----\nok\n\ncampaign 9\n----\nok\n")


def test_replay_is_deterministic() -> None:
    script = "add-nodes 3\n----\nok\n\ntick-all 30\n----\nok\n\nstabilize\n----\nok\n"
    assert replay(script) == replay(script)
