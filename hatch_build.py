"""Hatch build hook: generate the protobuf/gRPC modules before a wheel is assembled, and
before an editable install too, so that `pip install -e .` (what scripts/bootstrap.sh runs)
alone leaves an importable package: in a fresh clone nothing else has generated them yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ProtoBuildHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        # Written beside the .proto files, in the source tree; gen_protos.py regenerates only
        # what is older than its .proto, so a repeated install costs nothing.
        subprocess.run([sys.executable, str(root / "scripts" / "gen_protos.py")], check=True)
        if version == "editable":
            return  # an editable install imports them from the source tree, where they now are
        # Generated files are ignored by git, so name them for inclusion explicitly.
        for out in (root / "coordinator" / "api").rglob("*_pb2*.py*"):
            rel = out.relative_to(root).as_posix()
            build_data.setdefault("force_include", {})[str(out)] = rel
