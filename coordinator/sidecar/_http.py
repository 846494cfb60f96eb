"""The sidecar's HTTP plumbing: `HttpError`, JSON answers and the mapping of the client's
typed errors to status codes, the JSON views, parsing names, keys and parameters from a
request, and Server-Sent Events streams."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from coordinator.client import (
    AlreadyExists,
    ConcordError,
    FailedPrecondition,
    InvalidArgument,
    KeyValue,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Unauthenticated,
)

from ._hold import _Hold
from ._loopback import is_loopback_http

FENCING_HEADER = "Concord-Fencing-Token"
RETRY_AFTER_S = 1
"""What a 503 tells the app to wait before retrying: a leader election takes well under it."""
MAX_NAME_BYTES = 256
MAX_KEY_BYTES = 1024


class HttpError(Exception):
    """An answer other than success: status, message, and the offending field (or None)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def _error(status: int, message: str, field_name: str | None) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return _json(status, {"error": message, "field": field_name}, headers)


def _answer_error(err: ConcordError) -> web.Response:
    """A coordinator error as its one status (the blocking waits map their own first)."""
    if isinstance(err, NotFound):
        return _error(404, str(err), None)
    if isinstance(err, InvalidArgument):
        return _error(400, str(err), None)
    if isinstance(err, AlreadyExists | FailedPrecondition | OutOfRange):
        # The current state does not allow it (it exists; no longer yours; a sequence
        # exhausted): asking again will not help until the state changes.
        return _error(409, str(err), None)
    if isinstance(err, Unauthenticated):
        return _error(401, str(err), None)
    if isinstance(err, PermissionDenied):
        return _error(403, str(err), None)
    # Unavailable, a call's own deadline, no quorum, a member restarting: the coordinator
    # cannot answer now. The app retries; nothing it asked for half-happened that it must undo.
    return _error(503, f"the coordinator cannot answer now: {err}", None)


def _granted(h: _Hold) -> web.Response:
    return _json(201, h.view(), {FENCING_HEADER: str(h.fencing_token)})


def _leader_view(name: str, lease: int, token: int, value: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "lease": lease,
        "fencing_token": token,
        "value": value.decode("utf-8", "replace"),
    }


def _kv_view(kv: KeyValue, prefix: bytes = b"") -> dict[str, Any]:
    key, value = kv.key.removeprefix(prefix), kv.value
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "key": key.decode("utf-8", "replace"),
        "value": text,
        "value_base64": base64.b64encode(value).decode("ascii"),
        "version": kv.version,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "lease": kv.lease,
    }


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_NAME_BYTES:
        raise HttpError(400, f"name is {size} bytes; names are 1..{MAX_NAME_BYTES}", "name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise HttpError(400, "name must be valid UTF-8", "name") from None
    return name


def _key(request: web.Request) -> bytes:
    try:
        key = request.match_info["key"].encode("utf-8")
    except UnicodeEncodeError:
        raise HttpError(400, "key must be valid UTF-8", "key") from None
    if not 1 <= len(key) <= MAX_KEY_BYTES:
        raise HttpError(400, f"key is {len(key)} bytes; keys are 1..{MAX_KEY_BYTES}", "key")
    return key


def _int_param(raw: str, what: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{what} must be an integer, got {raw[:40]!r}", what) from None
    if not low <= value <= high:
        raise HttpError(400, f"{what} must be between {low} and {high}, got {value}", what)
    return value


def _callback_url(raw: object) -> str | None:
    """A loss callback must stay in the pod: http to a loopback address, nothing else."""
    if raw is None:
        return None
    assert isinstance(raw, str)  # the schema says so
    if not is_loopback_http(raw):
        raise HttpError(
            400,
            "callback_url must be http://127.0.0.1:PORT/... (or localhost, ::1): the sidecar "
            "calls only loopback addresses",
            "callback_url",
        )
    return raw


async def _first(*waits: Awaitable[object]) -> None:
    """Return once any of `waits` completes (the others are cancelled)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


Send = Callable[[str | None, object], Awaitable[None]]


class _EventStream:
    """A text/event-stream response; `send(event, data)` writes one event (None: a comment,
    the heartbeat). An app that went away ends the stream quietly (see `_sse`)."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"},
        )

    async def send(self, event: str | None, data: object) -> None:
        if event is None:
            chunk = f": {int(time.time())}\n\n"
        else:
            chunk = f"event: {event}\ndata: {json.dumps(data)}\n\n"
        await self.response.write(chunk.encode())


@contextlib.asynccontextmanager
async def _sse(stream: _EventStream) -> AsyncIterator[Send]:
    await stream.response.prepare(stream.request)
    with contextlib.suppress(ConnectionError):
        yield stream.send
        await stream.response.write_eof()
