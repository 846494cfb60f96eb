"""collector_paused: the cyclic collector is off inside the block and as it was after."""

from __future__ import annotations

import gc

import pytest

from coordinator.runtime.heap import collector_paused


def test_the_collector_is_paused_and_then_back_on() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_it_is_back_on_after_an_error_too() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("decode failed")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
