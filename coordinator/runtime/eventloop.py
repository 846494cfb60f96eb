"""Which asyncio event loop a member runs on: uvloop (the default) or the standard library's
(`--event-loop asyncio`).

uvloop is the default because it measured faster at every concurrency on a quiet machine
(docs/latency.md, "uvloop under every member, on a quiet machine"): its loop, its socket
transports and its TLS are compiled, where asyncio's TLS layer (`sslproto`) is Python code
that every peer frame crosses twice; the client API is served by gRPC's C core either way.
An earlier measurement on a busy machine had shown no clear difference, so the standard
loop stays one flag away for comparing again.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

EVENT_LOOPS = ("asyncio", "uvloop")
DEFAULT_EVENT_LOOP = "uvloop"

T = TypeVar("T")


def event_loop_problem(name: str) -> str | None:
    """Why the loop `name` cannot run in this interpreter, or None if it can."""
    if name not in EVENT_LOOPS:
        return f"unknown event loop {name!r}; choose from {', '.join(EVENT_LOOPS)}"
    if name == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return (
            "--event-loop uvloop needs the uvloop package, which is not installed (it is one "
            "of concord's dependencies: reinstall concord, or run with --event-loop asyncio)"
        )
    return None


def run_on(name: str, main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `name` (check `event_loop_problem` first: this raises
    ValueError for a loop that cannot run, and closes `main` unawaited)."""
    problem = event_loop_problem(name)
    if problem is not None:
        main.close()
        raise ValueError(problem)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if name == "uvloop":
        factory = importlib.import_module("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
