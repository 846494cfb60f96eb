"""A tiny HTTP/1.1 server on asyncio streams for /metrics, /healthz and /readyz.

Why not prometheus_client's own server: it runs in a thread, and the metrics read the
member's live state, which belongs to the event loop's thread. Serving from the loop keeps
every read on the owning thread (see `metrics.py`) and adds no dependency.

Scope: GET and HEAD of fixed paths, one request per connection (`Connection: close`), a
bounded request head read within a deadline. That is all a scraper and a kubelet probe
need; anything else gets 404, 405 or 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("concord.http")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_HEAD_LINES_MAX = 100
_LINE_BYTES_MAX = 8192


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, (text.rstrip("\n") + "\n").encode("utf-8"))


Route = Callable[[], Response]


class HttpServer:
    """Serves `routes` (path -> handler). Handlers run on the event loop and must be quick."""

    def __init__(self, routes: Mapping[str, Route], *, read_timeout_s: float = 5.0) -> None:
        self._routes = dict(routes)
        self._read_timeout_s = read_timeout_s
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (port 0: any free port); returns the bound port."""
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=_LINE_BYTES_MAX, reuse_address=True
        )
        sock = self._server.sockets[0]
        bound: int = sock.getsockname()[1]
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path = await asyncio.wait_for(self._read_head(reader), self._read_timeout_s)
            except (
                TimeoutError,
                ValueError,
                asyncio.LimitOverrunError,
                asyncio.IncompleteReadError,
            ):
                await self._write(writer, Response.text(400, "bad request"), head_only=False)
                return
            route = self._routes.get(path)
            if route is None:
                response = Response.text(
                    404, f"no such path {path!r}; try /metrics, /healthz, /readyz"
                )
            elif method not in ("GET", "HEAD"):
                response = Response.text(405, "only GET and HEAD are supported")
            else:
                try:
                    response = route()
                except Exception:
                    log.exception("handler for %s failed", path)
                    response = Response.text(500, "internal error (see the member's log)")
            await self._write(writer, response, head_only=method == "HEAD")
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        request_line = (await reader.readuntil(b"\n")).decode("latin-1").strip()
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError(f"malformed request line {request_line[:80]!r}")
        for _ in range(_HEAD_LINES_MAX):
            if (await reader.readuntil(b"\n")).strip() == b"":
                break
        else:
            raise ValueError("request head too long")
        method, target = parts[0], parts[1]
        return method, target.split("?", 1)[0]

    async def _write(self, writer: asyncio.StreamWriter, r: Response, *, head_only: bool) -> None:
        head = (
            f"HTTP/1.1 {r.status} {_REASONS.get(r.status, 'Unknown')}\r\n"
            f"Content-Type: {r.content_type}\r\n"
            f"Content-Length: {len(r.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1"))
        if not head_only:
            writer.write(r.body)
        await writer.drain()
