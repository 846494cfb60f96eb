"""The errors the client library raises: one type per gRPC status, all `ConcordError`s.

Why a type per status. A program reacts to what went wrong (retry later, fix the request,
give up), and `except NotFound:` says that better than comparing status names. Every error
still carries the status name in `.code` and the member's (or the library's) message in
`.message`, and `str(err)` is "CODE: message", as before, so code that matched on
`ConcordError` and `.code` keeps working.

No grpc type crosses the public API: the client turns every `grpc.aio.AioRpcError`, every
pipelined call's error result and every transport failure into one of these (`error_for`),
with a message that fits the call (the caller's own deadline, the endpoint that failed, and
for a wrong endpoint, what to do about it).
"""

from __future__ import annotations

from typing import ClassVar


class ConcordError(Exception):
    """The service refused a request, or no member could be reached in time; `code` is the
    gRPC status name, `message` says why (and usually what to do)."""

    def __init__(self, code: str, message: str, *, locked: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.locked = locked
        """Every member asked is locked (autolock): retrying will not help until someone
        runs `concordctl unlock`."""

    @property
    def waiting(self) -> bool:
        """An UNAVAILABLE a blocking call (lock, campaign) retries: still in line, or no
        leader for now. Not when the members are locked."""
        return self.code == "UNAVAILABLE" and not self.locked


class _Coded(ConcordError):
    """A `ConcordError` whose status is fixed by its type."""

    CODE: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str, *, locked: bool = False) -> None:
        super().__init__(self.CODE, message, locked=locked)


class Cancelled(_Coded):
    """The call was cancelled (by the member shutting down, or the client closing)."""

    CODE = "CANCELLED"


class Unknown(_Coded):
    """A status the library does not know."""

    CODE = "UNKNOWN"


class InvalidArgument(_Coded, ValueError):
    """The request is malformed (a bad key, TTL, endpoint, TLS directory...): fix it, do not
    retry it. Also a `ValueError`: raised before anything is sent for a bad endpoint or TLS
    directory."""

    CODE = "INVALID_ARGUMENT"


class DeadlineExceeded(_Coded):
    """No answer within the caller's deadline; a write's outcome is unknown."""

    CODE = "DEADLINE_EXCEEDED"


class NotFound(_Coded):
    """What the request names does not exist (a lease, a sequence, a member...)."""

    CODE = "NOT_FOUND"


class AlreadyExists(_Coded):
    """What the request creates exists already."""

    CODE = "ALREADY_EXISTS"


class PermissionDenied(_Coded):
    """The client's certificate may not do this."""

    CODE = "PERMISSION_DENIED"


class ResourceExhausted(_Coded):
    """A limit was reached (message size, a quota)."""

    CODE = "RESOURCE_EXHAUSTED"


class FailedPrecondition(_Coded):
    """The cluster is not in the state the request needs (no longer the leader of an
    election, a learner still catching up...)."""

    CODE = "FAILED_PRECONDITION"


class Aborted(_Coded):
    """The operation was aborted (a conflict); it may be retried from the start."""

    CODE = "ABORTED"


class OutOfRange(_Coded):
    """A revision or value outside what the cluster keeps (a compacted revision...)."""

    CODE = "OUT_OF_RANGE"


class Unimplemented(_Coded):
    """The member does not offer this call (an older version)."""

    CODE = "UNIMPLEMENTED"


class Internal(_Coded):
    """A bug in a member: report it with the member's log."""

    CODE = "INTERNAL"


class Unavailable(_Coded):
    """No member could serve the request: none reachable, no leader, every member locked,
    or the endpoint is not a Concord client port (the message says which, and what to do)."""

    CODE = "UNAVAILABLE"


class DataLoss(_Coded):
    """Data was lost or corrupted on the way (a truncated snapshot stream)."""

    CODE = "DATA_LOSS"


class Unauthenticated(_Coded):
    """The member did not accept the client's credentials."""

    CODE = "UNAUTHENTICATED"


_BY_CODE: dict[str, type[_Coded]] = {
    cls.CODE: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_for(code: str, message: str, *, locked: bool = False) -> ConcordError:
    """The error of status `code` (a gRPC status name), of its own type."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return ConcordError(code, message, locked=locked)
    return cls(message, locked=locked)
