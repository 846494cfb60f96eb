"""`--event-loop`: the member runs on the loop it is asked for (uvloop unless told otherwise),
and asking for uvloop where it is not installed is refused up front with a message that says
what to do."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.daemon.config import build_parser
from coordinator.runtime.eventloop import event_loop_problem, run_on

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_the_default_is_uvloop_and_the_standard_loop_is_one_flag_away() -> None:
    assert build_parser().get_default("event_loop") == "uvloop"
    assert run_on("asyncio", _loop_module()).startswith("asyncio")


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (a dependency: reinstall)")
def test_uvloop_runs_the_coroutine_on_uvloop() -> None:
    assert event_loop_problem("uvloop") is None
    assert run_on("uvloop", _loop_module()).startswith("uvloop")


# A None entry in sys.modules makes the package look absent to find_spec and to import (uvloop
# is installed wherever concord is, and this test must run there too).
_HIDE_UVLOOP = (
    "import runpy, sys; sys.modules['uvloop'] = None; "
    "runpy.run_module('coordinator.daemon.member', run_name='__main__', alter_sys=True)"
)


def test_uvloop_without_the_package_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    coro = _loop_module()
    with pytest.raises(ValueError, match="reinstall concord, or run with --event-loop asyncio"):
        run_on("uvloop", coro)
    data_dir = tmp_path / "d"
    argv = ["--id", "1", "--data-dir", str(data_dir), "--tls-dir", str(tmp_path), "--event-loop"]
    done = subprocess.run(
        [sys.executable, "-c", _HIDE_UVLOOP, *argv, "uvloop"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "needs the uvloop package" in done.stderr
    assert not data_dir.exists()  # refused before the data dir was touched


def test_an_unknown_loop_is_refused() -> None:
    assert event_loop_problem("trio") is not None
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["--id", "1", "--data-dir", "d", "--insecure", "--event-loop", "x"]
        )
