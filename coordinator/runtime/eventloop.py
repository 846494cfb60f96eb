"""Which asyncio event loop a member runs on: the standard library's (the default) or uvloop
(`--event-loop uvloop`, opt-in; `pip install 'concord[uvloop]'` installs it).

uvloop is not the default and not a required dependency because it did not measure clearly
better under grpc.aio (docs/latency.md, "uvloop under every member"): the client API is
served by gRPC's C core, which does its own polling, so the asyncio loop carries only the
member's own work (Raft turns, WAL hand-offs, the peer streams' Python side). The option
exists so that the comparison can be repeated on a quieter or larger machine without a
patched build.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

EVENT_LOOPS = ("asyncio", "uvloop")
DEFAULT_EVENT_LOOP = "asyncio"

T = TypeVar("T")


def event_loop_problem(name: str) -> str | None:
    """Why the loop `name` cannot run in this interpreter, or None if it can."""
    if name not in EVENT_LOOPS:
        return f"unknown event loop {name!r}; choose from {', '.join(EVENT_LOOPS)}"
    if name == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return (
            "--event-loop uvloop needs the uvloop package, which is not installed: "
            "pip install 'concord[uvloop]' (or leave the default, asyncio)"
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
