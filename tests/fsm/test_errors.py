"""`ErrorCode` is exactly a subset of gRPC's status codes (names and numbers), so the server's
mapping is `grpc.StatusCode[code.name]`; `FsmError` compares by value and reads well."""

from __future__ import annotations

import grpc

from coordinator.fsm import ErrorCode, FsmError


def test_error_codes_are_grpc_status_codes() -> None:
    for code in ErrorCode:
        status = grpc.StatusCode[code.name]
        assert status.value[0] == code.value


def test_the_codes_the_design_asks_for_exist() -> None:
    assert {c.name for c in ErrorCode} == {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "RESOURCE_EXHAUSTED",
    }


def test_fsm_error_is_a_value() -> None:
    a = FsmError(ErrorCode.NOT_FOUND, "lease 42 not found")
    assert a == FsmError(ErrorCode.NOT_FOUND, "lease 42 not found")
    assert a != FsmError(ErrorCode.NOT_FOUND, "lease 43 not found")
    assert a != FsmError(ErrorCode.INVALID_ARGUMENT, "lease 42 not found")
    assert len({a, FsmError(ErrorCode.NOT_FOUND, "lease 42 not found")}) == 1
    assert str(a) == "NOT_FOUND: lease 42 not found"
    assert repr(a) == "FsmError(NOT_FOUND, 'lease 42 not found')"
    assert isinstance(a, Exception)
