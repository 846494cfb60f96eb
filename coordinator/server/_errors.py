"""What a request can end in besides its response: a gRPC status code and a message.

Handlers raise `ServiceError`; the wrappers in `_rpc.py` turn it into the RPC's status (and
trailing metadata), so no handler touches grpc's untyped abort machinery. `Code` names are
exactly gRPC status names, as `ErrorCode` in `coordinator.fsm.errors` is, so a state machine
rejection maps 1:1 (`from_fsm`).

Messages are for the person reading them: what was wrong, with the values involved, and what
to do next.
"""

from __future__ import annotations

import enum

from coordinator.fsm import FsmError

LEADER_METADATA_KEY = "concord-leader"
"""Trailing metadata on a not-the-leader UNAVAILABLE: the leader's client URL if the member
directory has one, else its member id in decimal."""

LOCKED_METADATA_KEY = "concord-locked"
"""Trailing metadata on the UNAVAILABLE of a locked member: its member id. A client skips
such a member, and gives up at once when every member it knows is locked."""


QUEUED_METADATA_KEY = "concord-queued"
"""Trailing metadata on the UNAVAILABLE a blocked Lock or Campaign answers just before the
client's deadline: the lease is still queued on this member, and re-issuing the same request
(same session) here keeps its place. A client retries such a call at once, on the same member."""


class Code(enum.Enum):
    """The gRPC status codes the service answers with (names = grpc.StatusCode names)."""

    CANCELLED = "CANCELLED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class ServiceError(Exception):
    """End the RPC with `code` and `message`; `metadata` goes into the trailing metadata."""

    def __init__(
        self, code: Code, message: str, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.metadata = metadata


def from_fsm(err: FsmError) -> ServiceError:
    return ServiceError(Code[err.code.name], err.message)


def invalid(message: str) -> ServiceError:
    return ServiceError(Code.INVALID_ARGUMENT, message)


def unavailable(message: str, metadata: tuple[tuple[str, str], ...] = ()) -> ServiceError:
    return ServiceError(Code.UNAVAILABLE, message, metadata)
