"""Print requirement lines from pyproject.toml, one a line, for pip's `-r`.

The image build installs the dependencies in a layer of their own, before the project's
wheel, so that a change to the code rebuilds only the wheel's layer. pyproject.toml stays
the one list of dependencies: this reads it instead of repeating it in the Dockerfile.

    python3 requirements.py PYPROJECT build-system   # the build backend's requirements
    python3 requirements.py PYPROJECT                # [project] dependencies
    python3 requirements.py PYPROJECT operator       # an optional-dependencies extra

Standard library only (tomllib, Python 3.11+): it runs on the bare base image.
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: dict[str, object], which: str) -> list[str]:
    project = pyproject.get("project")
    build = pyproject.get("build-system")
    if which == "build-system" and isinstance(build, dict):
        found = build.get("requires")
    elif which == "" and isinstance(project, dict):
        found = project.get("dependencies")
    elif isinstance(project, dict):
        extras = project.get("optional-dependencies")
        found = extras.get(which) if isinstance(extras, dict) else None
    else:
        found = None
    if not isinstance(found, list) or not all(isinstance(r, str) for r in found):
        raise SystemExit(f"requirements.py: no list of requirements for {which or 'project'!r}")
    return [str(r) for r in found]


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: requirements.py PYPROJECT [build-system | EXTRA]", file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        pyproject = tomllib.load(f)
    print("\n".join(requirements(pyproject, argv[2] if len(argv) == 3 else "")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
