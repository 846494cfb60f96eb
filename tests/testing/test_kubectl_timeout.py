"""`ControlPlane.kubectl` gives a `kubectl wait --timeout=...` its whole wait before killing it."""

from __future__ import annotations

from coordinator.testing.controlplane import KUBECTL_TIMEOUT_S, _wait_timeout_s


def test_the_wait_a_command_asks_for_is_read_in_seconds_or_minutes() -> None:
    assert _wait_timeout_s(("wait", "--for=condition=Complete", "--timeout=180s", "job/x")) == 180
    assert _wait_timeout_s(("rollout", "status", "--timeout=3m")) == 180
    assert _wait_timeout_s(("get", "pods")) == 0
    # Longer than the default process timeout: the wait must not be cut short by it.
    assert _wait_timeout_s(("wait", "--timeout=180s")) + 30 > KUBECTL_TIMEOUT_S
