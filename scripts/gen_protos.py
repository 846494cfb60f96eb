"""Generate the protobuf and gRPC modules for coordinator/api from the .proto sources.

Run by the build: `make` targets call it before anything imports the API, and the hatch
build hook (hatch_build.py) calls it when a wheel or an editable install is built. Output is
written beside each .proto (`*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py`), ignored by git, and
regenerated only when a .proto is newer than its outputs, so repeated runs are free.

Also regenerated, all of them, when they were made by another grpcio-tools than the one this
interpreter has (`STAMP` records which): generated gRPC code refuses to import under a grpcio
older than the grpcio-tools that wrote it, and pip builds an editable install in an isolated
environment with the newest grpcio-tools the index has, while the project's virtualenv keeps
the grpcio it already had. `make bootstrap` runs this in the virtualenv right after the
install, so the modules always match the grpcio the tests import (grpcio-tools requires a
grpcio at least as new as itself).
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "coordinator" / "api"
STAMP = API / ".grpcio-tools-version"
"""The grpcio-tools version that generated the modules now in the tree (ignored by git)."""


def outputs(proto: Path) -> list[Path]:
    stem = proto.with_suffix("")
    return [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2.pyi"), Path(f"{stem}_pb2_grpc.py")]


def stale(proto: Path) -> bool:
    src = proto.stat().st_mtime
    return any(not out.exists() or out.stat().st_mtime < src for out in outputs(proto))


def tools_version() -> str | None:
    try:
        return importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        return None  # a runtime-only environment: use what is there, if anything


def main() -> int:
    protos = sorted(API.rglob("*.proto"))
    version = tools_version()
    made_by = STAMP.read_text().strip() if STAMP.exists() else None
    if version is not None and made_by != version:
        todo = protos
        if made_by is not None:
            print(f"gen_protos: regenerating: made by grpcio-tools {made_by}, this is {version}")
    else:
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
    if version is not None:
        STAMP.write_text(version + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
