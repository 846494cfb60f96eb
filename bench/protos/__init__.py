"""The benchmark's own .proto files and their generated modules.

`etcd_kv.proto` and `etcd_lock.proto` declare the few etcd v3 messages and services the load
generator uses, with etcd's package, service and method names and field numbers, so they are
wire-compatible with a real etcd. `pysyncobj_front.proto` is the gRPC front each PySyncObj
process serves. `ensure_generated()` runs protoc (from grpcio-tools) when a .proto is newer
than its modules; the modules (`*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py`) are written beside
the sources and ignored by git, exactly like Concord's own (`scripts/gen_protos.py`).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _outputs(proto: Path) -> list[Path]:
    stem = proto.with_suffix("")
    return [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2.pyi"), Path(f"{stem}_pb2_grpc.py")]


def _stale(proto: Path) -> bool:
    src = proto.stat().st_mtime
    return any(not out.exists() or out.stat().st_mtime < src for out in _outputs(proto))


def ensure_generated() -> list[Path]:
    """Generate what is missing or stale; returns the .proto files that were compiled."""
    todo = [p for p in sorted(HERE.glob("*.proto")) if _stale(p)]
    if not todo:
        return []
    # Only needed when something is stale.
    from grpc_tools import protoc  # type: ignore[import-untyped]  # noqa: PLC0415

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
            raise RuntimeError(f"protoc failed on {proto}")
    return todo
