"""The image and kind files, without building anything (fast; `make images` is the slow,
real check): images/Dockerfile's targets run as the chart's non-root user with a health check
and the right console script; kind-config.yaml is one control plane and three workers; the
make targets resolve; the kind script stops at once, exit 3, when Docker and kind are absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import CHART, REPO

DOCKERFILE = REPO / "images" / "Dockerfile"
TARGETS = {
    "coordinator": "concord-coordinator",
    "operator": "concord-operator",
    "sidecar": "concord-sidecar",
}
CHART_UID = 10001


@dataclass
class Stage:
    name: str
    parent: str
    """What FROM names: another stage, or an image (`${BASE}`)."""
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[list[tuple[str, str]], dict[str, Stage]]:
    """(instructions before the first FROM, stages by name): comments dropped, continuation
    lines joined, as Docker reads them. Raises ValueError on what Docker would refuse here:
    an instruction it does not know, a FROM without a stage name, a name used twice."""
    known = {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
        "LABEL", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
    }  # fmt: skip
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        raise ValueError(f"the file ends inside a continued line: {pending!r}")
    preamble: list[tuple[str, str]] = []
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        word, _, rest = line.partition(" ")
        op = word.upper()
        if op not in known:
            raise ValueError(f"unknown instruction {word!r}")
        if op == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            if m is None:
                raise ValueError(f"every stage is named here: FROM {rest}")
            if m[2] in stages:
                raise ValueError(f"stage {m[2]} defined twice")
            current = stages[m[2]] = Stage(m[2], m[1])
        elif current is None:
            if op != "ARG":
                raise ValueError(f"only ARG may come before the first FROM, not {op}")
            preamble.append((op, rest.strip()))
        else:
            current.instructions.append((op, rest.strip()))
    return preamble, stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and its ancestors, nearest first, down to the one built FROM an image."""
    out = [stages[name]]
    while out[-1].parent in stages:
        out.append(stages[out[-1].parent])
    return out


def last(stages: list[Stage], op: str) -> str | None:
    """The value of the instruction in effect for the first stage of the chain."""
    for stage in stages:
        for found, value in reversed(stage.instructions):
            if found == op:
                return value
    return None


def problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile for Concord's images (empty: nothing): the base is
    `ARG BASE` and every stage starts from it or from another stage; each target sets USER
    10001 in its own stage, has a HEALTHCHECK CMD on /healthz, runs its console script as
    ENTRYPOINT, and keeps PYTHONDONTWRITEBYTECODE (a read-only root filesystem)."""
    try:
        preamble, stages = parse_dockerfile(text)
    except ValueError as err:
        return [f"does not parse: {err}"]
    found: list[str] = []
    args = dict(value.partition("=")[::2] for op, value in preamble if op == "ARG")
    if not args.get("BASE"):
        found.append("no ARG BASE=<default image> before the first FROM")
    images = {s.parent for s in stages.values() if s.parent not in stages}
    if images != {"${BASE}"}:
        found.append(f"stages start from {sorted(images)}, not only from ${{BASE}}")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for target, script in TARGETS.items():
        if target not in stages:
            found.append(f"no target {target}")
            continue
        lineage = chain(stages, target)
        user = next((v for op, v in reversed(stages[target].instructions) if op == "USER"), None)
        uid, _, gid = (user or "").partition(":")
        if uid != str(CHART_UID) or gid not in ("", str(CHART_UID)):
            found.append(f"{target}: USER {user} in its own stage, not {CHART_UID}:{CHART_UID}")
        health = last(lineage, "HEALTHCHECK") or ""
        if "CMD" not in health.split() or "/healthz" not in health:
            found.append(f"{target}: no HEALTHCHECK CMD on /healthz")
        entrypoint = last(lineage, "ENTRYPOINT")
        if entrypoint is None or yaml.safe_load(entrypoint) != [script] or script not in scripts:
            found.append(f"{target}: ENTRYPOINT {entrypoint}, not [{script!r}]")
        env = " ".join(v for s in lineage for op, v in s.instructions if op == "ENV")
        if "PYTHONDONTWRITEBYTECODE=1" not in env:
            found.append(f"{target}: no PYTHONDONTWRITEBYTECODE=1 (bytecode written at run time)")
    return found


def test_the_dockerfile_has_no_problems() -> None:
    assert problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("ARG BASE=python:3.11-slim-bookworm", "ARG PY=3.11", "no ARG BASE"),
        ("FROM ${BASE} AS runtime", "FROM debian:12 AS runtime", "not only from ${BASE}"),
        ("USER 10001:10001\nEXPOSE 8080", "EXPOSE 8080", "operator: USER None"),
        ("USER 10001:10001\nEXPOSE 7070", "USER 0\nEXPOSE 7070", "coordinator: USER 0"),
        ('HEALTHCHECK --interval=10s --timeout=3s --start-period=10s', "#", "sidecar: no HEALTH"),
        ('ENTRYPOINT ["concord-sidecar"]', 'ENTRYPOINT ["concord-operator"]', "sidecar: ENTRY"),
        ("PYTHONDONTWRITEBYTECODE=1 \\\n    PYTHONUNBUFFERED", "PYTHONUNBUFFERED", "coordinator"),
        ("FROM runtime AS sidecar", "FROM runtime AS sidecar2", "no target sidecar"),
    ],
    ids=["base-arg", "hard-coded-base", "no-user", "root", "no-healthcheck", "wrong-entrypoint",
         "bytecode", "missing-target"],
)  # fmt: skip
def test_a_broken_dockerfile_is_caught(old: str, new: str, expected: str) -> None:
    """The real Dockerfile with one thing broken: the check names it (so the check above can
    fail)."""
    text = DOCKERFILE.read_text()
    assert old in text, f"the mutation no longer applies: {old!r}"
    found = problems(text.replace(old, new, 1))
    assert any(expected in p for p in found), found


def test_the_health_checks_and_ports_match_the_chart() -> None:
    """The operator's HEALTHCHECK port is the chart's operator.httpPort; the coordinator's
    is its metrics port, where the chart's probes ask /healthz."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    operator = last(chain(stages, "operator"), "HEALTHCHECK") or ""
    assert f":{values['operator']['httpPort']}/healthz" in operator
    coordinator = last(chain(stages, "coordinator"), "HEALTHCHECK") or ""
    assert f":{values['coordinator']['ports']['metrics']}/healthz" in coordinator


def test_the_parser_refuses_what_docker_would() -> None:
    with pytest.raises(ValueError, match="only ARG"):
        parse_dockerfile("USER 0\nFROM x AS a\n")
    with pytest.raises(ValueError, match="unknown instruction"):
        parse_dockerfile("ARG BASE=x\nFROM ${BASE} AS a\nRUNN true\n")
    with pytest.raises(ValueError, match="continued line"):
        parse_dockerfile("ARG BASE=x\nFROM ${BASE} AS a\nRUN true \\\n")


def test_image_names_match_the_chart() -> None:
    """scripts/build_images.sh names images REGISTRY/concord-TARGET:appVersion; the chart's
    defaults must be those names, or `make deploy` would run other images than it built."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    script = (REPO / "scripts" / "build_images.sh").read_text()
    registry = re.search(r'registry="\$\{IMAGE_REGISTRY:-([^}]+)\}"', script)
    assert registry is not None
    for target in ("coordinator", "operator"):
        assert values[target]["image"]["repository"] == f"{registry[1]}/concord-{target}"
        assert values[target]["image"]["tag"] == ""  # the chart's appVersion, as the script
    assert chart["appVersion"]


def test_generated_code_is_not_in_the_build_context() -> None:
    """The protobuf modules in an image come from the build (hatch_build.py), never from a
    working tree: .dockerignore keeps them, caches and local state out."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignore = [line for line in lines if line and not line.startswith("#")]
    assert ignore[0] == "*", "an allowlist: everything out first"
    for pattern in ("coordinator/api/**/*_pb2.py", "coordinator/api/**/*_pb2_grpc.py"):
        assert pattern in ignore
    assert "!coordinator" in ignore and "!operator/concord_operator" in ignore


def test_kind_config_is_one_control_plane_and_three_workers() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1
    assert roles.count("worker") == 3
    assert len(roles) == 4


def test_make_targets_resolve() -> None:
    """`make -n` prints the recipes without running them: every target exists and its
    recipe names the script that does the work."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    done = subprocess.run(
        [make, "-n", "--no-print-directory", "kind-up", "deploy", "kind-down", "images",
         "images-check", "images-clean"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=30,
        # Under `make test` the parent's MAKEFLAGS would carry -w (directory lines) and more.
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "bash scripts/kind.sh up",
        "bash scripts/kind.sh deploy",
        "bash scripts/kind.sh down",
        "bash scripts/build_images.sh",
        "bash scripts/build_images.sh --check",
        "bash scripts/build_images.sh --clean",
    ]


@pytest.mark.parametrize("action", ["up", "deploy", "down"])
def test_kind_targets_fail_fast_without_docker(tmp_path: Path, action: str) -> None:
    """On a PATH with neither docker nor kind the script stops before doing anything, with
    exit 3 and a message naming what is missing."""
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, str(REPO / "scripts" / "kind.sh"), action],
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"kind: {action} needs Docker" in done.stderr
    assert done.stdout == ""
