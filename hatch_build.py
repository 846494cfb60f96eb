"""Hatch build hook: generate the protobuf/gRPC modules before a wheel is assembled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ProtoBuildHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return  # a source checkout: `make` generates them in place (scripts/gen_protos.py)
        root = Path(self.root)
        subprocess.run([sys.executable, str(root / "scripts" / "gen_protos.py")], check=True)
        # Generated files are ignored by git, so name them for inclusion explicitly.
        for out in (root / "coordinator" / "api").rglob("*_pb2*.py*"):
            rel = out.relative_to(root).as_posix()
            build_data.setdefault("force_include", {})[str(out)] = rel
