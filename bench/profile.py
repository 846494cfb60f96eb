"""Where Concord's leader spends its CPU under the write benchmark: py-spy, summarised.

`py-spy record --gil` samples the leader process 100 times a second, keeping only the stack
of the thread that holds the GIL, while the runner drives an extra write run at 64 in flight
(that run is not counted in any figure: sampling pauses the process briefly). A member is one
Python process, so what holds its GIL is what bounds it: the share of samples taken (of
rate x duration) is how busy the GIL was, and the stacks say with what. Time a thread spends
outside the GIL (fsync, socket I/O in grpc's core, waiting in epoll) is not in the stacks.
The raw collapsed stacks are kept next to the results (`profile-concord-leader.txt`, the
input flamegraph.pl or speedscope take) and summarised three ways:

- self time by function (the frame on top of the stack),
- inclusive time by function (on the stack at all), and
- self time by area (the project's layers, and grpc, protobuf, asyncio, cryptography,
  the standard library), so "the top costs" read as "where to look".
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .procs import Supervisor

RATE_HZ = 100
TOP = 15
_STDLIB = re.compile(r"lib/python3\.\d+/")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

AREAS = (
    ("coordinator/raft/", "concord raft core"),
    ("coordinator/fsm/", "concord state machine"),
    ("coordinator/storage/", "concord storage (WAL, snapshots, crypto)"),
    ("coordinator/runtime/", "concord runtime (loop, transport, metrics)"),
    ("coordinator/server/", "concord client API (server)"),
    ("coordinator/api/", "concord generated API"),
    ("coordinator/", "concord (other)"),
    ("/grpc/", "grpc (python layer + cython)"),
    ("/google/protobuf/", "protobuf"),
    ("/cryptography/", "cryptography"),
    ("/prometheus_client/", "prometheus_client"),
    ("/asyncio/", "asyncio"),
)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(
    supervisor: Supervisor, pid: int, seconds: float, out: Path
) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        return None
    argv = [
        exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(RATE_HZ), "--format", "raw", "--full-filenames", "--gil",
        "--output", str(out),
    ]  # fmt: skip
    return supervisor.spawn(argv, log_path=out.with_suffix(".log"))


async def finish(proc: subprocess.Popen[bytes], out: Path, seconds: float) -> dict[str, Any]:
    try:
        status = await asyncio.wait_for(asyncio.to_thread(proc.wait), 120)
    except TimeoutError:
        Supervisor.kill(proc)
        return {"available": False, "reason": "py-spy did not finish in 120 s"}
    return await asyncio.to_thread(_result, status, out, seconds)


def _result(status: int, out: Path, seconds: float) -> dict[str, Any]:
    if status != 0 or not out.exists():
        log = out.with_suffix(".log")
        tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
        return {"available": False, "reason": f"py-spy exited with {status}: {tail}"}
    summary = summarise(out.read_text())
    possible = RATE_HZ * max(1, round(seconds))
    return {
        "available": True,
        "tool": "py-spy record --gil",
        "raw": out.name,
        "seconds": max(1, round(seconds)),
        "gil_busy": round(min(1.0, summary["samples"] / possible), 3),
        **summary,
    }


def _frame(text: str) -> tuple[str, str]:
    """(function, file) of one collapsed-stack frame, the file shortened to the project or
    the installed package."""
    m = _FRAME.match(text.strip())
    if m is None:
        return text.strip(), ""
    path = m.group("file")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/coordinator/" in path:
        path = "coordinator/" + path.split("/coordinator/", 1)[1]
    else:
        std = _STDLIB.search(path)
        if std is not None:
            path = "stdlib/" + path[std.end() :]
    return m.group("func"), path


def area_of(path: str) -> str:
    probe = "/" + path
    for needle, name in AREAS:
        if needle in probe:
            return name
    if path.startswith(("stdlib/", "<frozen")):
        return "python standard library"
    return "other"


def _generic(frame: tuple[str, str]) -> bool:
    """Frames on nearly every stack (the event loop, thread and runpy plumbing) that say
    nothing about cost."""
    return frame[1].startswith(("stdlib/", "<frozen")) or frame[0] in ("<module>", "main")


def summarise(raw: str) -> dict[str, Any]:
    self_time: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        areas[area_of(frames[-1][1])] += count
        for frame in set(frames):
            if not _generic(frame):
                inclusive[frame] += count

    def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
        return [
            {"function": f, "file": p, "share": round(n / total, 4)}
            for (f, p), n in counter.most_common(TOP)
        ]

    return {
        "samples": total,
        "rate_hz": RATE_HZ,
        "top_self": rows(self_time) if total else [],
        "top_inclusive": rows(inclusive) if total else [],
        "self_by_area": [{"area": a, "share": round(n / total, 4)} for a, n in areas.most_common()]
        if total
        else [],
    }
