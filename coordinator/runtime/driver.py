"""The Ready ordering, now in `coordinator.core.ready` (the member core's layer); kept under
this name for the simulator and the tests that drive a bare `RawNode`."""

from coordinator.core.ready import (
    Applier,
    Transport,
    Wal,
    finish,
    handle_ready,
    persist,
    send_early,
)

__all__ = ["Applier", "Transport", "Wal", "finish", "handle_ready", "persist", "send_early"]
