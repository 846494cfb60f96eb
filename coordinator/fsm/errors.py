"""Errors a command can end in, as the client will see them.

A command that the state machine rejects is still *applied*: the rejection is its result, the
same on every replica, saved in the session table like any other result so that a retry gets
the same answer. So a rejection is a value (`FsmError`, carried in `Applied.result`), not a
crash, and it must be precise enough for the server to map it to a gRPC status without
guessing: `ErrorCode` names are exactly gRPC status names and its values are gRPC's numeric
codes, so `grpc.StatusCode[err.code.name]` is the whole mapping.

Messages are written for the person who reads them: what was wrong, with the values involved,
and what to do about it ("lease 42 not found: it expired or was revoked; grant a new lease").
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """The subset of gRPC status codes the state machine produces (value = gRPC's number)."""

    INVALID_ARGUMENT = 3
    """The command itself is malformed, whatever the state: empty key, TTL out of bounds."""
    NOT_FOUND = 5
    """It names something that does not exist (any more): a lease, a lock, a sequence."""
    ALREADY_EXISTS = 6
    """It would create something that exists: a lease id in use, a sequence, a member name."""
    RESOURCE_EXHAUSTED = 8
    """A per-cluster limit is reached: too many leases, too many waiters on one lock."""
    FAILED_PRECONDITION = 9
    """The state does not allow it now: proclaim by a non-leader, a stale client sequence."""
    OUT_OF_RANGE = 11
    """Past a boundary that moves: watch history compacted, sequence exhausted."""


class FsmError(Exception):
    """A command's rejection: a gRPC-shaped code and an actionable message.

    Raised inside the state machine's modules and caught by `StateMachine.apply`, which puts
    it in `Applied.result`; read-side queries raise it to their caller directly.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FsmError):
            return NotImplemented
        return self.code is other.code and self.message == other.message

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"FsmError({self.code.name}, {self.message!r})"


def invalid(message: str) -> FsmError:
    return FsmError(ErrorCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> FsmError:
    return FsmError(ErrorCode.NOT_FOUND, message)


def already_exists(message: str) -> FsmError:
    return FsmError(ErrorCode.ALREADY_EXISTS, message)


def failed_precondition(message: str) -> FsmError:
    return FsmError(ErrorCode.FAILED_PRECONDITION, message)


def out_of_range(message: str) -> FsmError:
    return FsmError(ErrorCode.OUT_OF_RANGE, message)


def exhausted(message: str) -> FsmError:
    return FsmError(ErrorCode.RESOURCE_EXHAUSTED, message)
