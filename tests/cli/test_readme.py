"""The README's CLI walkthrough, as a new user lives it: its blocks, pasted in order into a
shell in an empty directory, against the real member processes they start (mutual TLS).

The README marks the blocks to run with an HTML comment line starting `<!-- walkthrough`
right before them. The script runs them under `set -e` (so a failure in the middle of
`a ; b` counts too); a line whose comment says `# exit N:` must exit with N instead. The only
changes made to what a person would paste:

- the lines in `SKIPPED` are not run (each says why; a test checks they are still in the
  README, so the list cannot silently rot);
- the member ports are moved from the README's 7070..7081 to a free range (`cluster init
  --base-port`), so that two runs of the suite, or anything else on 7070, cannot collide;
  `test_readme_start_commands_are_the_ones_cluster_init_prints` checks the README's own
  ports against what `cluster init` prints;
- `wait` is added at the end, so the script ends when the members it stopped have exited.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.testing.ports import free_port_block

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MARK = "<!-- walkthrough"
README_BASE_PORT = 7070  # `cluster init`'s default, which the README relies on
PORTS = 12  # 3 members x (client, peer, metrics, join)

SKIPPED = {
    # It asks about the campaign started in the background on the line before: whether that
    # has won yet is a race (it says there is no leader, exit 1, until then). The campaign
    # itself, and its stop, do run.
    "concordctl elect --leader scheduler": "its answer depends on timing",
}
EXIT_RE = re.compile(r"#\s*exit (\d+):")


def walkthrough_blocks(text: str) -> list[str]:
    """The ```sh blocks that follow a `<!-- walkthrough` comment line, in order."""
    blocks: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(MARK):
            continue
        assert lines[i + 1] == "```sh", f"README line {i + 2}: a walkthrough mark precedes ```sh"
        end = lines.index("```", i + 2)
        blocks.append("\n".join(lines[i + 2 : end]))
    return blocks


def commands(block: str) -> list[str]:
    """One entry per command line, `\\`-continued lines joined."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def command_part(line: str) -> str:
    """The line without its trailing comment (the README's comments follow two spaces)."""
    return re.split(r"\s{2,}#", line, maxsplit=1)[0].strip()


def expected_status(line: str) -> int:
    m = EXIT_RE.search(line)
    return int(m.group(1)) if m else 0


def shift_ports(line: str, base: int) -> str:
    """The README's member ports (7070..7081) moved to base..base+11."""

    def move(m: re.Match[str]) -> str:
        port = int(m.group(0))
        if README_BASE_PORT <= port < README_BASE_PORT + PORTS:
            return str(base + port - README_BASE_PORT)
        return m.group(0)

    line = re.sub(r"(?<=:)\d{4,5}\b", move, line)
    return line.replace("concordctl cluster init ", f"concordctl cluster init --base-port {base} ")


def script(lines: list[str], base: int) -> str:
    out = ["set -eu -o pipefail"]
    for n, line in enumerate(lines, 1):
        if command_part(line) in SKIPPED:
            continue
        cmd = shift_ports(line, base)
        status = expected_status(line)
        out.append(f"echo {shlex.quote(f'$ {command_part(cmd)}')} >&2")
        if status == 0:
            out.append(cmd)
        else:
            out += [
                "set +e",
                cmd,
                "status=$?",
                "set -e",
                f'[ "$status" -eq {status} ] || {{ echo "walkthrough line {n}: exit $status, '
                f'expected {status}" >&2; exit 99; }}',
            ]
    out.append("wait")
    return "\n".join(out) + "\n"


def _free_base_port() -> int:
    return free_port_block(PORTS)


def _lines() -> list[str]:
    blocks = walkthrough_blocks(README.read_text())
    assert len(blocks) >= 2, "the README's walkthrough marks are gone"
    return [line for block in blocks for line in commands(block)]


def test_skipped_lines_exist_and_the_tls_dir_is_set_before_any_cluster_command() -> None:
    parts = [command_part(line) for line in _lines()]
    assert set(SKIPPED) <= set(parts), "SKIPPED names lines the README no longer has"
    # Every command that talks to the cluster gets the TLS dir: from the export, set before
    # the first of them, or on its own command line.
    tls = parts.index("export CONCORD_TLS_DIR=./pki/client")
    assert tls < min(i for i, p in enumerate(parts) if re.search(r"concordctl (?!cluster init)", p))


def test_readme_start_commands_are_the_ones_cluster_init_prints(tmp_path: Path) -> None:
    """The README's member command lines and CONCORD_ENDPOINTS, as written (ports included),
    are what `concordctl cluster init` prints for the README's own `cluster init` line."""
    lines = [command_part(line) for line in _lines()]
    [init] = [line for line in lines if line.startswith("concordctl cluster init ")]
    printed = subprocess.run(
        [sys.executable, "-m", "coordinator.cli.main", *shlex.split(init)[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    starts = [ln.strip() for ln in printed.splitlines() if ln.strip().startswith("concord-coord")]
    in_readme = [
        re.sub(r"\s*>\S+ 2>&1 &$", "", line)
        for line in lines
        if line.startswith("concord-coordinator --id")
    ]
    assert in_readme == starts[:3]  # the 4th is the joining member's, shown elsewhere
    [talk] = [ln for ln in printed.splitlines() if ln.strip().endswith(" member list")]
    endpoints = shlex.split(talk)[shlex.split(talk).index("--endpoints") + 1]
    assert f"export CONCORD_ENDPOINTS={endpoints}" in lines


@pytest.mark.process
def test_the_readme_walkthrough_runs_in_order(tmp_path: Path) -> None:
    base = _free_base_port()
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "walkthrough.sh").write_text(script(_lines(), base))
    venv = os.environ.get("CONCORD_VENV") or str(Path(sys.executable).parent.parent)
    bin_dir = str(Path(venv) / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    # A new user's shell: the venv's bin is not on PATH until the README's export puts it there.
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir)
    env["CONCORD_VENV"] = venv
    proc = subprocess.Popen(
        ["bash", str(tmp_path / "walkthrough.sh")],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the members it starts in the background share its group
    )
    try:
        out, err = proc.communicate(timeout=240)
        # The README's last line stopped the members: none is left running.
        assert _running_in(work) == []
    finally:
        # Only if it failed half-way: whatever of its group is still running.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    logs = "".join(
        f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted(work.glob("pki/*.log"))
    )
    assert proc.returncode == 0, f"{err}\n--- stdout\n{out}{logs}"
    # What the walkthrough showed, as a person would see it.
    assert re.search(r"^\d\s+.*Leader\s+voter", out, re.M), out  # member list
    assert re.search(r"^config\s+v1\s", out, re.M), out
    token = (work / "token").read_text().strip()
    assert re.search(rf"^jobs\s+{token}\s+True", out, re.M), out  # fenced inside the lock
    assert re.search(rf"^jobs\s+{token}\s+False", out, re.M), out  # stale after it
    assert (work / "backup.bak").is_file()
    for i in (1, 2, 3):
        assert "INSECURE" not in (work / "pki" / f"member-{i}.log").read_text()


def _running_in(cwd: Path) -> list[int]:
    """Live processes whose working directory is `cwd` (the members the walkthrough started)."""
    pids: list[int] = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "cwd").resolve() == cwd.resolve():
                    pids.append(int(proc.name))
    return pids
