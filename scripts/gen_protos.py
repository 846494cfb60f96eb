"""Generate the protobuf and gRPC modules for coordinator/api from the .proto sources.

Run by the build: `make` targets call it before anything imports the API, and the hatch
build hook (hatch_build.py) calls it when a wheel or an editable install is built. Output is
written beside each .proto (`*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py`), ignored by git, and
regenerated only when a .proto is newer than its outputs, so repeated runs are free.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "coordinator" / "api"


def outputs(proto: Path) -> list[Path]:
    stem = proto.with_suffix("")
    return [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2.pyi"), Path(f"{stem}_pb2_grpc.py")]


def stale(proto: Path) -> bool:
    src = proto.stat().st_mtime
    return any(not out.exists() or out.stat().st_mtime < src for out in outputs(proto))


def main() -> int:
    protos = sorted(API.rglob("*.proto"))
    todo = [p for p in protos if stale(p)]
    if not todo:
        return 0
    from grpc_tools import protoc  # noqa: PLC0415 (needed only when something must be generated)

    include = Path(protoc.__file__).parent / "_proto"
    for proto in todo:
        args = [
            "protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--python_out={ROOT}",
            f"--pyi_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            print(f"gen_protos: protoc failed on {proto}", file=sys.stderr)
            return 1
        print(f"gen_protos: generated {proto.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
