"""scripts/gen_protos.py on a copy of the tree: generated once, regenerated whole when another
grpcio-tools made the modules (whose code would refuse an older grpcio), quiet otherwise."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _copy_tree(dst: Path) -> Path:
    (dst / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "gen_protos.py", dst / "scripts" / "gen_protos.py")
    for proto in (REPO / "coordinator" / "api").rglob("*.proto"):
        target = dst / proto.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(proto, target)
    return dst / "scripts" / "gen_protos.py"


def _run(script: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout


def test_modules_made_by_another_grpcio_tools_are_made_again(tmp_path: Path) -> None:
    script = _copy_tree(tmp_path)
    stamp = tmp_path / "coordinator" / "api" / ".grpcio-tools-version"
    mine = importlib.metadata.version("grpcio-tools")
    grpc_module = tmp_path / "coordinator" / "api" / "v1" / "concord_pb2_grpc.py"

    first = _run(script)
    assert "generated coordinator/api/v1/concord.proto" in first
    assert stamp.read_text().strip() == mine
    assert f"GRPC_GENERATED_VERSION = '{mine}'" in grpc_module.read_text()
    assert _run(script) == ""  # nothing stale, same generator: nothing to do

    # As pip's isolated build leaves them: newer generated code than this grpcio accepts.
    stamp.write_text("99.0.0\n")
    grpc_module.write_text(grpc_module.read_text().replace(mine, "99.0.0"))
    again = _run(script)
    assert f"made by grpcio-tools 99.0.0, this is {mine}" in again
    assert stamp.read_text().strip() == mine
    assert "99.0.0" not in grpc_module.read_text()
